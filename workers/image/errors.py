"""Image-pool errors that proto/errors.py has no class for.

They are ``BusError``s like any other and travel by code, so the supervisor
needs no knowledge of them::

    BusError
    ├── Unauthenticated    UNAUTHENTICATED   no or wrong registry credentials
    ├── PermissionDenied   PERMISSION_DENIED credentials fine, access refused
    ├── DataLoss           DATA_LOSS         content does not match its digest
    └── SignatureRejected  UNKNOWN           the signature policy refused the image

``SignatureRejected`` is UNKNOWN on purpose, with a message that starts with
``SignatureValidationFailed:``. That is the CRI's convention (cri-api
``pkg/errors``: ``ErrSignatureValidationFailed``): CRI-O wraps a policy
rejection as ``SignatureValidationFailed: <reason>`` and returns it as a
plain error, which gRPC sends as UNKNOWN; the kubelet's CRI client strips
the status only from UNKNOWN errors, and the kubelet then recognises the
prefix and reports the pod's reason as ``SignatureValidationFailed``. With
FAILED_PRECONDITION or PERMISSION_DENIED the kubelet would show a generic
``ErrImagePull`` instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ...proto.codes import Code
from ...proto.errors import BusError


class Unauthenticated(BusError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(BusError):
    code = Code.PERMISSION_DENIED


class DataLoss(BusError):
    code = Code.DATA_LOSS


class SignatureRejected(BusError):
    """An image the signature policy does not accept (see module docstring)."""

    code = Code.UNKNOWN
    PREFIX: ClassVar[str] = "SignatureValidationFailed"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 code: Code | None = None) -> None:
        # Every message carries the prefix exactly once, also when an error
        # is rebuilt from another's message (pull.py's source summaries).
        if not message.startswith(f"{self.PREFIX}:"):
            message = f"{self.PREFIX}: {message}"
        super().__init__(message, details=details, code=code)
