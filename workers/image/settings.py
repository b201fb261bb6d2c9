"""The image pool's typed section of the worker settings.

Read once, at worker start, from the settings the supervisor wrote
(daemon.worker_settings): ``root``, ``runroot`` and the ``image`` section.
The supervisor writes every key with its effective value, and
supervisor/config.py owns every default and every check, so a key missing
here is a bug and raises KeyError; nothing is defaulted twice.

- ``image.registries_conf``: containers-registries.conf(5) path.
- ``image.signature_policy``: containers-policy.json(5) path (policy.py).
- ``image.pull_progress_timeout``: seconds without a byte of progress before
  a pull attempt is cancelled and the next source tried (0: never).
- ``image.pinned_images``: names (exact, or ending in ``*``) never to be
  garbage-collected by the kubelet; ``image.pause_image`` is always pinned.
- ``image.max_parallel_downloads``: layer downloads at once per pull.

The certs.d roots are not settings: containers-certs.d(5) fixes them, as
CRI-O and podman do (tls.DEFAULT_CERTS_DIRS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageSettings:
    root: str
    runroot: str
    registries_conf: str
    signature_policy: str
    pull_progress_timeout: float
    pinned_images: tuple[str, ...]
    pause_image: str
    max_parallel_downloads: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImageSettings:
        image = settings["image"]
        return cls(
            root=str(settings["root"]),
            runroot=str(settings["runroot"]),
            registries_conf=str(image["registries_conf"]),
            signature_policy=str(image["signature_policy"]),
            pull_progress_timeout=float(image["pull_progress_timeout"]),
            pinned_images=tuple(str(p) for p in image["pinned_images"]),
            pause_image=str(image["pause_image"]),
            max_parallel_downloads=int(image["max_parallel_downloads"]),
        )
