"""Status answers kept in memory, so that PodSandboxStatus, ContainerStatus,
ImageStatus and ListImages cost no bus round trip when nothing changed
(issue 15, part 4).

What is kept: the last answer the owning pool built for an object, as the
serialized CRI response, in one LRU of at most ``size`` entries. Keys are
``(pool, "<what> <id or name>")``; pods and containers are kept only under
their full id, so a read by a unique prefix (crictl) always asks the pool.
A pod's or container's verbose answer (critest reads those) is kept under a
key of its own and dropped with the plain one: its info (pids, paths, the
pod's namespaces) changes only by the ops and exits that drop both. An
image's verbose answer is never kept: its info is built fresh.

Kept true by dropping, never by patching:

- every op that may change what a pool answers (any op of the runtime or
  image pool not marked ``read_only``) drops what it names before it is
  sent and again when it returns, failed or not (``CacheGuard``), whatever
  sent it: an RPC, a cleanup stack, the pause image's pull;
- the runtime pool's change feed (container_events.py) drops the container
  and the pod of every exit and removal it reports: exits come only from
  there. Its creations and starts are made by ops, which drop (and seed)
  already: dropping again when the feed reports them, a moment after the
  op's answer, would lose the seed the next read wants (critest reads each
  object right after its start). But a container's creation drops its
  pod's answer, which the create op does not name;
- a feed poll that fails, and a runtime or image worker becoming READY,
  flush that pool's entries.

Races: an answer fetched on a miss is kept only if no drop that concerns it
happened while it was fetched. Each drop is logged with a sequence number;
a fill carries the number current when it was sent, and ``_fresh`` reads
the drops logged since (an older fill than the log remembers is refused).

Seeds: the answers of ``runtime.sandbox_start`` and
``runtime.container_start`` carry the object's status and verbose info as
the pool built them right after the start; both answers are kept unless a drop by another (the feed,
another op) concerned it meanwhile, so the first read after a start hits (critest reads each fresh
object once). PullImage seeds the pulled name's ImageStatus (rpc/image.py).

The windows: an exit is seen when the feed reports it (its 0.1 s poll
plus a bus round trip), as CRI-O learns of exits from inotify. A container
whose monitor and process were both killed leaves no exit file: answers
holding a created or running container are kept ``LIVE_TTL`` at most, so
the pool's liveness check (workers/runtime/containers.py ``current``) is
read again within that.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple

from ..proto import api_pb2 as api
from ..proto import runtime_ops
from ..proto.contract import Op
from .opclient import Sender

log = logging.getLogger(__name__)

RUNTIME = "runtime"
IMAGE = "image"
POOLS = (RUNTIME, IMAGE)
# Drops remembered for fills in flight; a fill older than these is refused.
LOG_SIZE = 1024
FULL_ID_LEN = 64
# Ops that change every container of a pod; the cache does not know which
# containers those are, so they drop all the runtime pool's entries.
POD_WIDE = frozenset({runtime_ops.SANDBOX_STOP_CONTAINERS.name, runtime_ops.SANDBOX_UPDATE.name})

# How long an answer holding a created or running container is kept at
# most. The feed reports every exit conmon records; but a container whose
# monitor was killed and whose process is gone too has no exit file, and
# the runtime pool reports it exited (code 255) only when it reads the
# status again: this bounds how late that is seen. Two kubelet relists.
LIVE_TTL = 2.0

Key = tuple[str, str]


class Answer(NamedTuple):
    """A serialized CRI response, the ids it depends on (None: not to be
    kept, e.g. one read by prefix) and whether it holds a created or running
    container (kept ``LIVE_TTL`` at most)."""

    value: bytes
    ids: frozenset[str] | None
    live: bool = False


def container_key(container_id: str, verbose: bool = False) -> Key:
    return (RUNTIME, f"container{'+info' if verbose else ''} {container_id}")


def pod_key(sandbox_id: str, verbose: bool = False) -> Key:
    return (RUNTIME, f"pod{'+info' if verbose else ''} {sandbox_id}")


def image_key(name: str) -> Key:
    return (IMAGE, f"image {name}")


def images_key(filter_name: str) -> Key:
    return (IMAGE, f"list {filter_name}")


class StatusCache:
    """The entries, the drop log and the fill check (module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # key -> (answer, the ids it depends on, when it expires or None)
        self._entries: OrderedDict[Key, tuple[bytes, frozenset[str], float | None]] = \
            OrderedDict()
        # Which keys depend on each id (full ids: a drop by prefix scans).
        self._by_id: dict[str, set[Key]] = {}
        self._sequence = 0
        # (sequence, pool, ids dropped or None for all of the pool)
        self._log: deque[tuple[int, str, frozenset[str] | None]] = deque(maxlen=LOG_SIZE)
        # Reads answered from memory, reads that asked the pool, and answers
        # not kept because something they depend on changed meanwhile (metrics.py).
        self.stats = {"hit": 0, "miss": 0, "stale": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def token(self) -> int:
        """The drop sequence now: what a fill sent now compares against."""
        return self._sequence

    def get(self, key: Key) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[2] is not None and time.monotonic() >= entry[2]:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Key, answer: Answer, token: int, own: int = 0) -> bool:
        """Keep ``answer`` unless something it depends on was dropped since
        ``token`` (but by the drop numbered ``own``: a seed's own op's);
        true if kept."""
        ids = answer.ids
        if self.size <= 0 or ids is None or not self._fresh(key[0], ids, token, own):
            return False
        self._remove(key)
        expires = time.monotonic() + LIVE_TTL if answer.live else None
        self._entries[key] = (answer.value, ids, expires)
        for object_id in ids:
            self._by_id.setdefault(object_id, set()).add(key)
        while len(self._entries) > self.size:
            self._remove(next(iter(self._entries)))
        return True

    def drop(self, pool: str, ids: Iterable[str] | None) -> int:
        """Forget what depends on ``ids`` (ids or unique prefixes), or every
        entry of ``pool`` when None; returns the new sequence."""
        dropped = None if ids is None else frozenset(i for i in ids if i)
        self._sequence += 1
        self._log.append((self._sequence, pool, dropped))
        if dropped is None:
            log.debug("Flushing the status cache's %s answers", pool)
            for key in [k for k in self._entries if k[0] == pool]:
                self._remove(key)
        else:
            for object_id in dropped:
                for key in self._keys_of(object_id):
                    if key[0] == pool:
                        self._remove(key)
        return self._sequence

    def flush(self, pool: str) -> None:
        self.drop(pool, None)

    def _fresh(self, pool: str, ids: frozenset[str] | None, token: int, own: int = 0) -> bool:
        """No drop of ``pool`` after ``token`` (``own`` aside) concerns
        ``ids`` (None: any drop of the pool does)."""
        if token == self._sequence:
            return True
        if not self._log or self._log[0][0] > token + 1:
            return False  # drops after the token are forgotten: assume the worst
        for sequence, dropped_pool, dropped in reversed(self._log):
            if sequence <= token:
                break
            if dropped_pool != pool or sequence == own:
                continue
            if ids is None or dropped is None or any(
                    object_id.startswith(name) for name in dropped for object_id in ids):
                return False
        return True

    def _keys_of(self, name: str) -> list[Key]:
        if len(name) >= FULL_ID_LEN or name in self._by_id:
            return list(self._by_id.get(name, ()))
        return [key for object_id, keys in self._by_id.items() if object_id.startswith(name)
                for key in keys]

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for object_id in entry[1]:
            keys = self._by_id.get(object_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_id[object_id]

    async def read(self, key: Key, fetch: Callable[[], Awaitable[Answer]]) -> bytes:
        """The kept answer for ``key``, or ``fetch``'s, kept if still fresh."""
        value = self.get(key)
        if value is not None:
            self.stats["hit"] += 1
            return value
        self.stats["miss"] += 1
        token = self._sequence
        answer = await fetch()
        if answer.ids is not None and self.size > 0 and not self.put(key, answer, token):
            self.stats["stale"] += 1
        return answer.value

    # ---- what the runtime pool's change feed reports ----

    def feed_changed(self, changes: runtime_ops.Changes,
                     events: list[api.ContainerEventResponse]) -> None:
        """Drop the containers and pods of the exits and removals the feed's
        answer names (module docstring). A change that made no event (an
        infra container's exit, an exit read after the removal) names
        nothing: everything of the pool goes."""
        if not changes.keys:
            return
        if len(events) < len(changes.keys):
            self.flush(RUNTIME)
            return
        ids: set[str] = set()
        for event in events:
            pod_id = event.pod_sandbox_status.id
            if event.container_event_type not in _MADE_BY_OPS:
                ids.update((event.container_id, pod_id))
            elif (event.container_event_type == api.CONTAINER_CREATED_EVENT
                  and event.container_id != pod_id):
                # A pod's answer leaves out containers still being created,
                # so it does not depend on the new one's id, and the create
                # op names only the container: the pod's answer goes here.
                ids.add(pod_id)
        if ids:
            self.drop(RUNTIME, ids)


# Changes only an op makes (runtime.container_create, container_start,
# sandbox_start), and CacheGuard drops around every op.
_MADE_BY_OPS = frozenset({api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT})


# ---- the answers, built the same way on a miss and from a seed ----


_LIVE = frozenset({api.CONTAINER_CREATED, api.CONTAINER_RUNNING})


def container_answer(status: bytes, asked: str, info: Mapping[str, str] | None = None
                     ) -> Answer:
    """A ContainerStatusResponse from the pool's serialized ContainerStatus
    (and verbose info); kept only if ``asked`` is the full id."""
    parsed = api.ContainerStatus.FromString(status)
    return Answer(api.ContainerStatusResponse(status=parsed, info=info).SerializeToString(),
                  frozenset([parsed.id]) if parsed.id == asked else None,
                  parsed.state in _LIVE)


def pod_answer(status: bytes, containers: list[bytes], asked: str,
               info: Mapping[str, str] | None = None) -> Answer:
    """A PodSandboxStatusResponse without timestamp (set per answer),
    depending on the pod's id and its containers'; kept only if ``asked``
    is the pod's full id."""
    response = api.PodSandboxStatusResponse(
        status=api.PodSandboxStatus.FromString(status),
        containers_statuses=[api.ContainerStatus.FromString(c) for c in containers], info=info)
    ids = frozenset([response.status.id, *(c.id for c in response.containers_statuses)])
    return Answer(response.SerializeToString(), ids if response.status.id == asked else None,
                  any(c.state in _LIVE for c in response.containers_statuses))


def _seed(cache: StatusCache, op: str, result: Any, token: int, own: int) -> None:
    """Keep the status a start op answered (module docstring, "Seeds")."""
    if not isinstance(result, dict):
        return
    status, info = result.get("status"), result.get("info")
    if not status:
        return
    if op == runtime_ops.CONTAINER_START.name:
        cid = result["id"]
        cache.put(container_key(cid), container_answer(status, cid), token, own)
        if info:
            cache.put(container_key(cid, True), container_answer(status, cid, info), token, own)
    elif op == runtime_ops.SANDBOX_START.name:
        sandbox_id = api.PodSandboxStatus.FromString(status).id
        containers = list(result.get("containers") or [])
        cache.put(pod_key(sandbox_id), pod_answer(status, containers, sandbox_id), token, own)
        if info:
            cache.put(pod_key(sandbox_id, True),
                      pod_answer(status, containers, sandbox_id, info), token, own)


class CacheGuard:
    """The bus as the RPC handlers reach it: each op that may change what
    the cache holds drops it around the call (module docstring)."""

    def __init__(self, bus: Sender, cache: StatusCache, catalogue: dict[str, Op[Any, Any]]
                 ) -> None:
        self._bus = bus
        self._cache = cache
        self._catalogue = catalogue

    async def call(self, op: str, args: dict[str, Any], *, deadline: float) -> Any:
        entry = self._catalogue.get(op)
        if entry is None or entry.read_only or entry.pool not in POOLS:
            return await self._bus.call(op, args, deadline=deadline)
        pool, cache = entry.pool, self._cache
        ids = _ids(op, args)
        # Before: a reader must not be answered from before a change it
        # may see the effects of once the op has run.
        token = cache.drop(pool, ids)
        try:
            result = await self._bus.call(op, args, deadline=deadline)
        except BaseException:
            # After, failed too: drops the fills of reads that ran during
            # the op (they may have seen it half done).
            cache.drop(pool, ids)
            raise
        after = cache.drop(pool, ids)
        # The op's answer is the newest state there is of what it names,
        # unless a drop by another (the feed, another op) concerned it
        # meanwhile. No await since the drop above.
        _seed(cache, op, result, token, after)
        return result


def _ids(op: str, args: dict[str, Any]) -> list[str] | None:
    """What an op may change, by id: None for everything of its pool (any
    image op: a pull or removal changes the list and names' answers)."""
    if op.startswith(f"{IMAGE}.") or op in POD_WIDE:
        return None
    ids = [args[field] for field in ("id", "sandbox_id") if isinstance(args.get(field), str)]
    return ids or None

