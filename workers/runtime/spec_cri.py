"""Reading CRI messages that arrive as dicts.

Every CRI message reaches the runtime pool as
``json_format.MessageToDict(msg, preserving_proto_field_name=True)``. The
spec builder reads them only through these helpers, which know the
encoding's rules so no caller has to:

- a proto3 field at its default value is absent: a missing key means
  0, "", false, an empty list or map, or the enum's first value;
- 64-bit integers are JSON strings ("1000"), 32-bit ones are ints;
- enums are names, and a number the schema does not know stays an int;
- ``bytes`` fields are base64 text (``KeyValue.value`` is ``bytes`` in
  cri-api, so every environment value is);
- a wrapper such as ``Int64Value`` whose value is 0 arrives as ``{}``:
  its presence is what says "set".

Malformed input (a number that is not one, a list that is a string) is the
caller's mistake, so it raises ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from ...proto.errors import InvalidArgument


def message(container: Mapping[str, Any], *path: str) -> dict[str, Any]:
    """The nested message at ``path``, or ``{}`` when any step is absent."""
    current: Any = container
    for key in path:
        current = current.get(key) if isinstance(current, Mapping) else None
        if current is None:
            return {}
    if not isinstance(current, Mapping):
        raise InvalidArgument(f"{'.'.join(path)}: expected a message, got {type(current).__name__}")
    return dict(current)


def integer(value: object, field: str, default: int = 0) -> int:
    """An int32/int64 field: an int, or the decimal string proto3 JSON uses."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise InvalidArgument(f"{field}: expected an integer, got {value!r}")


def wrapped_int(msg: Mapping[str, Any], key: str) -> int | None:
    """An ``Int64Value`` field: ``None`` when unset, else its value (0 when ``{}``)."""
    wrapper = msg.get(key)
    if wrapper is None:
        return None
    if not isinstance(wrapper, Mapping):
        raise InvalidArgument(f"{key}: expected an Int64Value message")
    return integer(wrapper.get("value"), f"{key}.value")


def flag(msg: Mapping[str, Any], key: str) -> bool:
    value = msg.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key}: expected a boolean, got {value!r}")
    return value


def text(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: expected a string, got {value!r}")
    return value


def strings(msg: Mapping[str, Any], key: str) -> list[str]:
    """A ``repeated string`` field; absent means empty."""
    value = msg.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{key}: expected a list of strings")
    return list(value)


def integers(msg: Mapping[str, Any], key: str) -> list[int]:
    """A ``repeated int64`` field (strings on the wire)."""
    value = msg.get(key, [])
    if not isinstance(value, list):
        raise InvalidArgument(f"{key}: expected a list of integers")
    return [integer(v, key) for v in value]


def messages(msg: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """A ``repeated`` message field."""
    value = msg.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise InvalidArgument(f"{key}: expected a list of messages")
    return [dict(v) for v in value]


def text_map(msg: Mapping[str, Any], key: str) -> dict[str, str]:
    """A ``map<string, string>`` field."""
    value = msg.get(key, {})
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgument(f"{key}: expected a map of strings")
    return dict(value)


def enum(msg: Mapping[str, Any], key: str, names: Sequence[str]) -> str:
    """An enum field as its name; ``names`` lists the values in number order.

    An absent field is the first name (proto3's zero value); a number is
    mapped through ``names``, and one outside it is refused.
    """
    value = msg.get(key, names[0])
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    raise InvalidArgument(f"{key}: unknown value {value!r} (expected one of {', '.join(names)})")


def bytes_text(value: object, field: str) -> str:
    """A ``bytes`` field decoded to text.

    JSON carries it as base64. Invalid UTF-8 becomes U+FFFD, which is what
    Go's encoding/json does to the same bytes when CRI-O writes config.json,
    since a JSON document can hold no other kind of string.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"{field}: not base64 ({exc})") from None
    else:
        raise InvalidArgument(f"{field}: expected bytes, got {value!r}")
    return raw.decode("utf-8", errors="replace")
