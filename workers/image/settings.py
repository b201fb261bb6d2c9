"""The image pool's view of the daemon settings.

Read from ``ctx.settings`` (the daemon's effective configuration as a
dict): ``root``, ``runroot`` and the ``image`` section. Keys this pool
reads beyond the documented ones have defaults here, so an older
supervisor config still works:

- ``image.registries_conf``: containers-registries.conf(5) path.
- ``image.signature_policy``: containers-policy.json(5) path (policy.py).
- ``image.pull_progress_timeout``: seconds without a byte of progress before
  a pull attempt is cancelled and the next source tried (0: never).
- ``image.pinned_images``: names (exact, or ending in ``*``) never to be
  garbage-collected by the kubelet; ``image.pause_image`` is always pinned.
- ``image.certs_dirs``: certs.d roots (tls.py).
- ``image.max_parallel_downloads``: layer downloads at once per pull.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .policy import DEFAULT_POLICY
from .tls import DEFAULT_CERTS_DIRS

DEFAULT_REGISTRIES_CONF = "/etc/containers/registries.conf"
DEFAULT_PULL_PROGRESS_TIMEOUT = 300.0
DEFAULT_PARALLEL_DOWNLOADS = 3


@dataclass(frozen=True)
class ImageSettings:
    root: str
    runroot: str
    registries_conf: str
    signature_policy: str
    pull_progress_timeout: float
    pinned_images: tuple[str, ...]
    pause_image: str
    certs_dirs: tuple[str, ...]
    max_parallel_downloads: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImageSettings:
        image = settings.get("image") or {}
        return cls(
            root=str(settings.get("root", "/var/lib/podvisor")),
            runroot=str(settings.get("runroot", "/run/podvisor")),
            registries_conf=str(image.get("registries_conf") or DEFAULT_REGISTRIES_CONF),
            signature_policy=str(image.get("signature_policy") or DEFAULT_POLICY),
            pull_progress_timeout=float(image.get("pull_progress_timeout",
                                                  DEFAULT_PULL_PROGRESS_TIMEOUT)),
            pinned_images=tuple(str(p) for p in image.get("pinned_images") or ()),
            pause_image=str(image.get("pause_image") or ""),
            certs_dirs=tuple(str(d) for d in image.get("certs_dirs") or DEFAULT_CERTS_DIRS),
            max_parallel_downloads=max(1, int(image.get("max_parallel_downloads",
                                                        DEFAULT_PARALLEL_DOWNLOADS))),
        )
