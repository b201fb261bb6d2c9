"""TLS settings per registry host, from certs.d directories.

containers-certs.d(5) / Docker convention: for a registry ``host[:port]``,
``<certs_dir>/<host[:port]>/`` may hold

- ``*.crt``: extra CA certificates trusted for that host (on top of the
  system store);
- ``<name>.cert`` + ``<name>.key``: a client certificate for mutual TLS.

The roots are ``/etc/containers/certs.d`` and ``/etc/docker/certs.d``, fixed
as containers-certs.d(5) fixes them for CRI-O and podman (tests hand
``TlsPolicy`` others); every matching directory is used.

Invariants: verification is on (hostname and chain) unless the registry is
configured ``insecure`` in registries.conf, and then only for that host.
Contexts are cached per (host, insecure, what the host's certs.d files look
like): a CA dropped into certs.d is used by the next connection, without a
restart, and an unchanged directory costs a few ``stat`` calls. An
SSLContext is thread-safe for wrapping sockets.
"""

from __future__ import annotations

import contextlib
import glob
import os
import ssl
import threading

from ...proto.errors import FailedPrecondition

DEFAULT_CERTS_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")

Signature = tuple[tuple[str, int, int], ...]


class TlsPolicy:
    """Builds and caches the SSLContext for each registry host."""

    def __init__(self, certs_dirs: tuple[str, ...] = DEFAULT_CERTS_DIRS) -> None:
        self.certs_dirs = certs_dirs
        self._contexts: dict[tuple[str, bool], tuple[Signature, ssl.SSLContext]] = {}
        self._lock = threading.Lock()

    def context(self, host: str, insecure: bool) -> ssl.SSLContext:
        key = (host, insecure)
        signature = self._signature(host)
        with self._lock:
            cached = self._contexts.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
        ctx = self._build(host, insecure)
        with self._lock:
            self._contexts[key] = (signature, ctx)
        return ctx

    def _signature(self, host: str) -> Signature:
        entries = []
        for root in self.certs_dirs:
            directory = os.path.join(root, host)
            for path in sorted(glob.glob(os.path.join(directory, "*"))):
                with contextlib.suppress(OSError):
                    stat = os.stat(path)
                    entries.append((path, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def _build(self, host: str, insecure: bool) -> ssl.SSLContext:
        if insecure:
            # Nothing is verified, so the system's CA store is not loaded:
            # parsed, it holds about 0.9 MiB of the worker's memory per context.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context()
        for root in self.certs_dirs:
            directory = os.path.join(root, host)
            if not os.path.isdir(directory):
                continue
            for ca in sorted(glob.glob(os.path.join(directory, "*.crt"))):
                try:
                    ctx.load_verify_locations(cafile=ca)
                except (OSError, ssl.SSLError) as exc:
                    raise FailedPrecondition(f"cannot load CA certificate {ca}: {exc}") from None
            for cert in sorted(glob.glob(os.path.join(directory, "*.cert"))):
                key = cert[: -len(".cert")] + ".key"
                if not os.path.exists(key):
                    raise FailedPrecondition(
                        f"client certificate {cert} has no matching key {key}")
                try:
                    ctx.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    raise FailedPrecondition(
                        f"cannot load client certificate {cert}: {exc}") from None
        return ctx
