"""Image records as CRI v1 messages, and the CRI requests the ops take.

The image pool builds the CRI responses itself (proto/image_ops.py); the
supervisor only parses them. In an ``Image``, ``uid`` is left unset, not
zero, when the image's User is a name or empty (CRI: uid and username are
exclusive, both empty means root by default).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument
from . import reference
from .records import ImageRecord

M = TypeVar("M", bound=Message)


def parse(kind: type[M], data: bytes) -> M:
    """A CRI request that arrived serialized; INVALID_ARGUMENT if it does
    not parse."""
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"the request is not a serialized {kind.__name__}: {exc}") \
            from None


def user_fields(user: str) -> tuple[int | None, str]:
    """(uid, username) from an image config's ``User`` ("uid", "name", "x:group")."""
    if not user:
        return None, ""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name), ""
    return None, name


def pinned_patterns(pinned_images: Iterable[str], pause_image: str) -> tuple[str, ...]:
    """Normalise pinned names: qualified references, or globs kept as written."""
    patterns = []
    for raw in (*pinned_images, pause_image):
        if not raw:
            continue
        if "*" in raw:
            patterns.append(raw)
            continue
        try:
            patterns.append(str(reference.parse_qualified(raw).with_default_tag()))
        except InvalidArgument:
            patterns.append(raw)
    return tuple(patterns)


def is_pinned(record: ImageRecord, patterns: Iterable[str]) -> bool:
    names = (*record.repo_tags, *record.repo_digests)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def ordered_digests(record: ImageRecord) -> list[str]:
    """Repo digests, the one of what was pulled (index when any) first."""
    top = record.index_digest or record.manifest_digest
    return sorted(record.repo_digests, key=lambda name: (not name.endswith(f"@{top}"), name))


def image_message(record: ImageRecord, patterns: Iterable[str]) -> api.Image:
    uid, username = user_fields(record.user)
    message = api.Image(id=record.id, repo_tags=record.repo_tags,
                        repo_digests=ordered_digests(record), size=record.size,
                        username=username, spec=api.ImageSpec(image=record.id),
                        pinned=is_pinned(record, patterns))
    if uid is not None:
        message.uid.CopyFrom(api.Int64Value(value=uid))
    return message


def verbose_info(record: ImageRecord, config: Mapping[str, Any] | None) -> dict[str, str]:
    """ImageStatus ``info`` for verbose requests: one JSON document under "info"."""
    info = {
        "id": record.id,
        "manifestDigest": record.manifest_digest,
        "manifestMediaType": record.manifest_media_type,
        "indexDigest": record.index_digest,
        "layers": [{"digest": b.digest, "mediaType": b.media_type, "size": b.size,
                    "diffID": b.diff_id} for b in record.layers],
        "imageSpec": config,
    }
    return {"info": json.dumps(info, sort_keys=True)}
