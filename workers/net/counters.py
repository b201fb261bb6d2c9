"""Pod interface counters, read from inside each pod's network namespace.

The kernel shows a namespace's interfaces only to a task inside it, so the
batch runs in one throwaway thread that ``setns``'s into each pod's pinned
namespace (netns.py) in turn and reads ``/proc/thread-self/net/dev``
there. One thread per call, not one per pod: the kubelet asks for every
pod every 10-15 s, and a thread start costs more than a namespace switch.

Invariants
    - The namespace switch never touches another thread: the reading
      thread is made for one call and exits with it, so it never goes back
      to a pool while inside a pod's namespace. No fork (the worker is
      multi-threaded).
    - A pod is answered only if its file under the netns dir is a mounted
      namespace when opened. An absent file (a host-network pod, or one
      torn down) or an unmounted leftover leaves the pod out of the answer.
    - No pod lock is taken: the open descriptor keeps the namespace alive
      for the read even if a teardown unmounts it meanwhile, so reads never
      wait for a setup or teardown.
    - The loopback is left out; every other interface is reported.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterable

from ...proto.stats import InterfaceSample, NetworkSample
from .. import nsthread
from . import netns

_libc = ctypes.CDLL(None, use_errno=True)

LOOPBACK = "lo"
_NET_DEV = "/proc/thread-self/net/dev"
# /proc/net/dev columns after "<name>:": 8 receive, then 8 transmit ones.
_RX_BYTES, _RX_PACKETS, _RX_ERRS, _RX_DROP = 0, 1, 2, 3
_TX = 8
_COLUMNS = 16


class Unparsable(ValueError):
    """``/proc/net/dev`` text not in the kernel's format; names the line."""


def parse_net_dev(text: str) -> list[InterfaceSample]:
    """Every interface of a ``/proc/net/dev`` text, loopback included.

    The two header lines are skipped. A name is split off at the first
    colon: the kernel refuses ``:`` in interface names, and a counter wide
    enough leaves no space after it (``eth0:144560918``).
    """
    return [_parse_line(line) for line in text.splitlines()[2:] if line.strip()]


def _parse_line(line: str) -> InterfaceSample:
    name, colon, rest = line.partition(":")
    fields = rest.split()
    if not colon or not name.strip() or len(fields) < _COLUMNS:
        raise Unparsable(f"not a /proc/net/dev interface line: {line!r}")
    try:
        n = [int(v) for v in fields[:_COLUMNS]]
    except ValueError:
        raise Unparsable(f"non-numeric counter in /proc/net/dev line: {line!r}") from None
    return InterfaceSample(
        name=name.strip(),
        rx_bytes=n[_RX_BYTES], rx_packets=n[_RX_PACKETS],
        rx_errors=n[_RX_ERRS], rx_dropped=n[_RX_DROP],
        tx_bytes=n[_TX + _RX_BYTES], tx_packets=n[_TX + _RX_PACKETS],
        tx_errors=n[_TX + _RX_ERRS], tx_dropped=n[_TX + _RX_DROP],
    )


def read_pods(netns_dir: str, pod_ids: Iterable[str],
              check: Callable[[], None] = lambda: None) -> dict[str, NetworkSample]:
    """Each pod's interfaces but the loopback, by pod id; a pod with no
    mounted namespace in ``netns_dir`` is left out.

    ``pod_ids`` must be valid sandbox ids (podargs.py): they name files. A
    repeated id is read once.
    ``check`` is called before each pod and raises when the caller is gone.
    Raises ``netns.NamespaceError`` (an OSError naming the pod) when a
    namespace cannot be entered or read, ``Unparsable`` on a bad read.
    """
    paths = {pod_id: netns.path_for(netns_dir, pod_id) for pod_id in pod_ids}
    if not paths:
        return {}
    out: dict[str, NetworkSample] = {}
    failure: list[BaseException] = []
    thread = threading.Thread(target=_read_in_thread, args=(paths, check, out, failure),
                              name="netns-counters", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out


def _read_in_thread(paths: dict[str, str], check: Callable[[], None],
                    out: dict[str, NetworkSample], failure: list[BaseException]) -> None:
    # This thread ends inside the last pod's namespace and is thrown away.
    try:
        nsfs_dev = nsthread.nsfs_dev()
        for pod_id, path in paths.items():
            check()
            sample = _read_one(pod_id, path, nsfs_dev)
            if sample is not None:
                out[pod_id] = sample
    except BaseException as exc:
        failure.append(exc)


def _read_one(pod_id: str, path: str, nsfs_dev: int) -> NetworkSample | None:
    try:
        text = _net_dev_inside(path, nsfs_dev)
    except OSError as exc:
        raise netns.NamespaceError(exc.errno, f"network counters of pod {pod_id} "
                                              f"({path}): {exc.strerror or exc}") from exc
    if text is None:
        return None
    stamp = time.time_ns()
    interfaces = [i for i in parse_net_dev(text) if i.name != LOOPBACK]
    return NetworkSample(timestamp_ns=stamp, interfaces=interfaces)


def _net_dev_inside(path: str, nsfs_dev: int) -> str | None:
    """Move this thread into the namespace at ``path`` and read its
    ``/proc/net/dev``; None, and no move, if ``path`` is not one."""
    fd = _open_namespace(path, nsfs_dev)
    if fd is None:
        return None
    try:
        if _libc.setns(fd, nsthread.CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")
    finally:
        os.close(fd)
    with open(_NET_DEV, encoding="ascii") as f:
        return f.read()


def _open_namespace(path: str, nsfs_dev: int) -> int | None:
    """A descriptor on the pod's namespace, or None if it has none.

    The mount is checked on the open descriptor (netns.exists's test, on
    the fd): checking the path first would race a teardown, and setns on
    the plain file left behind would fail instead of leaving the pod out.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        pinned = os.fstat(fd).st_dev == nsfs_dev
    except BaseException:
        os.close(fd)
        raise
    if not pinned:
        os.close(fd)
        return None
    return fd
