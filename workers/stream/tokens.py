"""Single-use URL tokens, as the kubelet's streaming request cache.

A token is 128 random bits (URL-safe base64), so it cannot be guessed; it
is consumed by its first use, whatever that use makes of it, and is gone
after ``ttl`` seconds either way. At most ``limit`` are outstanding: a
node asked for more than that is being flooded, and the RPC is refused
with RESOURCE_EXHAUSTED rather than memory growing without bound. The
tokens live in the stream worker's memory only: a restart of the worker
voids them, and the kubelet asks again.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from ...proto.errors import ResourceExhausted
from ...proto.stream_ops import Session


class Tokens:
    def __init__(self, ttl: float, limit: int) -> None:
        self._ttl = ttl
        self._limit = limit
        # Insertion order is expiry order: every token lives the same ttl.
        self._live: OrderedDict[str, tuple[float, Session]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._live)

    def issue(self, session: Session) -> str:
        self._expire()
        if len(self._live) >= self._limit:
            raise ResourceExhausted(f"{self._limit} streaming URLs are outstanding; "
                                    "retry once some are used or expire")
        token = secrets.token_urlsafe(16)
        self._live[token] = (time.monotonic() + self._ttl, session)
        return token

    def consume(self, kind: str, token: str) -> Session | None:
        """The session behind ``token`` if it is live and of ``kind``."""
        self._expire()
        entry = self._live.pop(token, None)
        if entry is None or entry[1].kind != kind:
            return None
        return entry[1]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._live:
            token, (expires, _) = next(iter(self._live.items()))
            if expires > now:
                return
            del self._live[token]
