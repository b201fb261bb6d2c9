"""Typed op contracts: how an op is declared, and the check at each end of
the bus.

An op is declared once, in its pool's module (``proto/<pool>_ops.py``), as

    UNPACK_LAYERS = Op("storage.unpack_layers", UnpackLayers, UnpackedLayers)

with an argument and a result type, both ``Record`` subclasses: frozen
msgspec structs, so a field's type is checked when a value arrives, not
when some handler first trips over it. On the wire both are plain msgpack
maps keyed by field name inside the envelope (proto/envelope.py); ``bytes``
fields stay bytes. A CRI message that a worker needs whole travels as its
serialized protobuf in a ``bytes`` field and is parsed with the generated
stubs at the far end, never turned into a dict.

Checks, one at each end:

- the sender builds the typed value, so a wrong field is a type error in
  its own code (mypy), and ``to_wire`` refuses a value of the wrong type;
- the receiver rebuilds the typed value from the map with ``from_wire``,
  strictly (no str-to-int coercion, no unknown field): a worker answers a
  malformed request INVALID_ARGUMENT naming the field, and the supervisor
  treats a malformed result as the worker's bug (INTERNAL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from .errors import Internal, InvalidArgument


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The base of every op argument and result, and of the records they
    nest."""


class Empty(Record, frozen=True, kw_only=True):
    """The argument of an op that takes none, or the result of one that
    answers nothing but success."""


A = TypeVar("A", bound=Record)
R = TypeVar("R", bound=Record)
T = TypeVar("T", bound=Record)


@dataclass(frozen=True)
class Op(Generic[A, R]):
    """One op: its name ``<pool>.<verb>``, its argument and result types,
    and whether the bus may run it twice (design.md, "The bus"):

    - ``read_only``: it changes nothing, so it may be retried once on
      another worker when the one holding it dies;
    - ``idempotent``: a stage keyed by the object's id that finds and
      finishes its own earlier attempt (a record, a reservation, a mount
      already there, or already gone for a removal), retried the same way.
      Cleanup stacks rely on it: an undo step must not fail just because a
      worker died beside it.

    ``waits``: the op spends most of its time waiting (a stop's grace
    period), as a coroutine on the worker's loop rather than in one of its
    threads, so the bus does not count it against the worker's
    ``max_inflight``: a drain of many pods must not starve Status or probes.
    """

    name: str
    args: type[A]
    result: type[R]
    read_only: bool = False
    idempotent: bool = False
    waits: bool = False

    @property
    def pool(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def retryable(self) -> bool:
        return self.read_only or self.idempotent


def to_wire(value: Record, kind: type[Record]) -> dict[str, Any]:
    """``value`` as the msgpack map the envelope carries."""
    if type(value) is not kind:
        raise Internal(f"expected {kind.__name__}, got {type(value).__name__}")
    wire = msgspec.to_builtins(value, builtin_types=(bytes,))
    assert isinstance(wire, dict)
    return wire


def from_wire(wire: Any, kind: type[T], what: str) -> T:
    """Rebuild a ``kind`` from the map that arrived; ``InvalidArgument``
    naming the field when it does not fit (``what`` says whose it is)."""
    try:
        return msgspec.convert(wire, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def result_from_wire(wire: Any, op: Op[Any, R]) -> R:
    """A worker's result for ``op``; a result that breaks the contract is the
    worker's bug, so it is INTERNAL rather than the caller's fault."""
    try:
        return msgspec.convert(wire, type=op.result, strict=True)
    except msgspec.ValidationError as exc:
        raise Internal(f"{op.name} returned a malformed result: {exc}") from None

