"""Bounded file names for keys that come from CRI input.

A kubelet-style name (``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>``)
may be 450 bytes or more: pod names allow 253 characters, namespaces and
container names 63, uids 36, attempts ten digits. Linux allows 255 bytes per
path component, so such a key can never be used as a file name directly.

``component`` keeps a key as it is when it is short and plain, so the state
dirs stay readable, and otherwise gives a readable prefix joined by ``#`` to
the key's SHA-256. A plain key never contains ``#``, so a hashed name never
equals a plain one, and two keys that differ anywhere, even past the prefix,
get different hashes.
"""

from __future__ import annotations

import hashlib
import re

# Room is left for a suffix (".lock", ".tmp") and for temp-file decoration.
PLAIN_MAX = 200
PREFIX_MAX = 64
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=,-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def component(key: str, suffix: str = "") -> str:
    """One path component naming ``key``, at most 255 bytes with ``suffix``."""
    if len(key) + len(suffix) <= PLAIN_MAX and _PLAIN.fullmatch(key):
        return key + suffix
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = _UNSAFE.sub("_", key[:PREFIX_MAX]).lstrip(".")
    return f"{prefix}#{digest}{suffix}"
