"""The signature policy applied to one pull (policy.py holds the file's rules).

Stages
    Two, so an image the policy refuses costs no download:

    1. ``TrustCheck(policy, ref)``, before any network: the scope of the
       logical reference (never a mirror's) is looked up. A ``reject``
       requirement refuses here; an unsupported one fails with
       FAILED_PRECONDITION; every sigstore key is read and parsed, so a
       missing or bad key file is reported as the node's configuration
       error (FAILED_PRECONDITION naming the policy file and the key).
    2. ``verify``, once the manifest (and the index above it) are fetched
       and checked against their digests, before any config or layer blob:
       each ``sigstoreSigned`` requirement needs at least one signature that
       verifies with one of its keys, whose payload names the digest of the
       document it is attached to, and whose claimed identity the
       requirement's ``signedIdentity`` accepts (identity.py).

Which digest is signed
    cosign signs the digest the reference resolves to, so for a multi-arch
    image the index (``cosign sign --recursive`` signs every platform's
    manifest as well). containers/image (CRI-O, podman) checks the platform
    manifest it chose, at ``sha256-<manifest>.sig``, and so refuses images
    signed by plain ``cosign sign`` (containers/image#1953). podvisor
    accepts either: a signature over the index covers the chosen manifest,
    whose digest the index lists and which was verified against it. The
    index's signatures are tried first, the manifest's only when none of
    those satisfies the requirement.

Where signatures come from
    The registry the image is pulled from, mirror or primary, in the same
    repository, with the same credentials and watchdog: what containers/image
    does with ``use-sigstore-attachments``. podvisor reads no registries.d:
    a policy that requires sigstoreSigned is taken to mean "look for
    attachments", and nothing else would use that file (signedBy, whose
    lookaside stores it configures, is unsupported).

Errors
    A refusal is ``SignatureRejected`` (errors.py says why it is UNKNOWN),
    naming the image, the policy file, the scope and the requirement, with
    each signature's reason. Registry failures while fetching signatures
    propagate unchanged, so the pull moves on to its next source; an
    unusable attachment or payload only disqualifies that signature.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ...proto.errors import FailedPrecondition, NotFound
from . import identity, sigstore
from .errors import SignatureRejected
from .policy import Policy, Reject, SigstoreSigned, Unsupported
from .reference import Reference
from .registry import Fetched

if TYPE_CHECKING:
    from .sigstore import VerifyingKey

log = logging.getLogger(__name__)

# A PEM public key is well under a kilobyte; anything bigger is a wrong path.
MAX_KEY_BYTES = 64 * 1024


class SignatureSource(Protocol):
    """The registry calls signature lookup needs (RegistryClient has them)."""

    @property
    def host(self) -> str: ...

    def get_manifest(self, repository: str, reference: str, accept: str,
                     limit: int) -> Fetched: ...

    def get_blob(self, repository: str, digest: str, limit: int) -> bytes: ...


@dataclass(frozen=True)
class Document:
    """A manifest or index of the image, verified against ``digest``."""

    digest: str
    body: bytes


@dataclass(frozen=True)
class _Candidate:
    """One signature found in the registry, or why it cannot be used."""

    label: str
    payload: bytes = b""
    signature: bytes = b""
    problem: str = ""


@dataclass(frozen=True)
class _Keyed:
    requirement: SigstoreSigned
    keys: tuple[tuple[str, VerifyingKey], ...]


class TrustCheck:
    """Stage 1 runs in the constructor; ``verify`` is stage 2."""

    def __init__(self, policy: Policy, ref: Reference) -> None:
        self.ref = ref
        self.scope = policy.scope_for(ref)
        self._image = identity.image_identity(ref)
        requirements = self.scope.requirements
        # Any reject decides, wherever it stands: all requirements must hold.
        for requirement in requirements:
            if isinstance(requirement, Reject):
                raise self._rejected(f"{self.scope.name} says \"reject\"")
        for requirement in requirements:
            if isinstance(requirement, Unsupported):
                raise FailedPrecondition(
                    f"cannot pull {ref}: signature policy {policy.path} ({self.scope.name}) "
                    f"requires {requirement.type}: {requirement.reason}")
        self._sigstore = [_Keyed(r, self._load_keys(r)) for r in requirements
                          if isinstance(r, SigstoreSigned)]

    @property
    def needs_signatures(self) -> bool:
        """True when ``verify`` has work to do (and so needs the registry)."""
        return bool(self._sigstore)

    def verify(self, source: SignatureSource, repository: str,
               documents: Sequence[Document]) -> None:
        """Stage 2: ``documents`` are the index (if any) then the chosen manifest."""
        found: dict[str, list[_Candidate]] = {}
        for keyed in self._sigstore:
            self._satisfy(keyed, source, repository, documents, found)

    # ---- stage 1 ------------------------------------------------------------

    def _load_keys(self, requirement: SigstoreSigned) -> tuple[tuple[str, VerifyingKey], ...]:
        keys = []
        for key in requirement.keys:
            where = (f"signature policy {self.scope.policy_path} ({self.scope.name}): "
                     f"key {key.label}")
            pem = key.pem or b""
            if key.path is not None:
                try:
                    # Checked before opening: opening a FIFO would block.
                    if not stat.S_ISREG(os.stat(key.path).st_mode):
                        raise FailedPrecondition(f"{where} is not a regular file")
                    with open(key.path, "rb") as f:
                        pem = f.read(MAX_KEY_BYTES + 1)
                except OSError as exc:
                    raise FailedPrecondition(f"{where} cannot be read: "
                                             f"{exc.strerror or exc}") from None
                if len(pem) > MAX_KEY_BYTES:
                    raise FailedPrecondition(f"{where} is larger than a public key can be")
            try:
                keys.append((key.label, sigstore.load_key(pem)))
            except ValueError as exc:
                raise FailedPrecondition(f"{where}: {exc}") from None
        return tuple(keys)

    # ---- stage 2 ------------------------------------------------------------

    def _satisfy(self, keyed: _Keyed, source: SignatureSource, repository: str,
                 documents: Sequence[Document], found: dict[str, list[_Candidate]]) -> None:
        reasons = []
        for document in documents:
            tag = sigstore.attachment_tag(document.digest)
            if document.digest not in found:
                found[document.digest] = self._fetch(source, repository, tag)
            candidates = found[document.digest]
            if not candidates:
                reasons.append(f"{document.digest} has no signature (no tag {tag} in "
                               f"{source.host}/{repository})")
                continue
            problems = []
            for candidate in candidates:
                problem, key = self._judge(keyed, candidate, document)
                if not problem:
                    log.info("Image %s: signature %s of %s verified with key %s (%s of %s)",
                             self.ref, candidate.label, tag, key, self.scope.name,
                             self.scope.policy_path)
                    return
                problems.append(f"{candidate.label}: {problem}")
            reasons.append(f"signatures of {document.digest} ({tag}): {'; '.join(problems)}")
        raise self._rejected(f"no valid sigstore signature for "
                             f"{keyed.requirement.describe_keys()} ({self.scope.name}): "
                             + "; ".join(reasons))

    def _judge(self, keyed: _Keyed, candidate: _Candidate,
               document: Document) -> tuple[str, str]:
        """('', key label) when ``candidate`` satisfies ``keyed``, else (why, '')."""
        if candidate.problem:
            return candidate.problem, ""
        key = next((label for label, k in keyed.keys
                    if sigstore.verify(k, candidate.payload, candidate.signature)), None)
        if key is None:
            return f"not made by {keyed.requirement.describe_keys()}", ""
        # Only now, with the signature verified, is the payload read at all.
        try:
            payload = sigstore.parse_payload(candidate.payload)
        except ValueError as exc:
            return str(exc), ""
        if not sigstore.digest_matches(document.body, payload.manifest_digest):
            return f"it signs {payload.manifest_digest}, not {document.digest}", ""
        rule = keyed.requirement.identity
        if not identity.matches(rule, self._image, payload.docker_reference):
            return (f"it is for {payload.docker_reference!r}, which signedIdentity {rule} "
                    f"does not accept for {self._image}"), ""
        return "", key

    @staticmethod
    def _fetch(source: SignatureSource, repository: str, tag: str) -> list[_Candidate]:
        try:
            fetched = source.get_manifest(repository, tag, sigstore.OCI_MANIFEST,
                                          sigstore.MAX_ATTACHMENT_MANIFEST_BYTES)
        except NotFound:
            return []
        try:
            signatures, others = sigstore.parse_attachments(fetched.body, fetched.media_type)
        except ValueError as exc:
            return [_Candidate("manifest", problem=f"unusable: {exc}")]
        if not signatures and others:
            return [_Candidate("manifest", problem=f"{others} attachments, no signature")]
        candidates = []
        for number, signature in enumerate(signatures, 1):
            label = f"#{number}"
            try:
                raw = sigstore.decode_signature(signature.signature)
                if signature.size > sigstore.MAX_SIGNATURE_BYTES:
                    raise ValueError(f"its payload is {signature.size} bytes, more than "
                                     f"{sigstore.MAX_SIGNATURE_BYTES}")
                payload = source.get_blob(repository, signature.digest,
                                          sigstore.MAX_SIGNATURE_BYTES)
                sigstore.check_blob(payload, signature)
            except ValueError as exc:
                candidates.append(_Candidate(label, problem=str(exc)))
                continue
            except NotFound:
                candidates.append(_Candidate(label, problem="its payload blob is missing"))
                continue
            candidates.append(_Candidate(label, payload, raw))
        return candidates

    def _rejected(self, reason: str) -> SignatureRejected:
        return SignatureRejected(f"image {self.ref} rejected by {self.scope.policy_path}: "
                                 f"{reason}")
