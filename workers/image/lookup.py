"""Finding a local image by what a CRI caller wrote.

Accepted, tried in this order (ImageStatus, RemoveImage, ListImages filter):

1. an image id: ``sha256:<64 hex>`` or the bare 64 hex;
2. a reference: ``name[:tag]`` or ``name@digest`` (or both: the digest
   decides), short names expanded through registries.conf aliases and
   search registries, then Docker's ``docker.io/library`` default; the
   first candidate present wins, and ambiguity never fails a local lookup;
3. a unique id prefix (hex, optionally ``sha256:``-prefixed); a prefix that
   matches several images is an error, never a guess.

Absent is ``None``, not an error: CRI ImageStatus answers an empty image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...proto.errors import InvalidArgument
from . import reference, registries_conf
from .records import ImageRecord, Records
from .registries_conf import RegistriesConf

_HEX_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")


@dataclass(frozen=True)
class Match:
    record: ImageRecord
    # The tag the caller named, when the image was found by tag.
    tag: str | None = None


def find(records: Records, conf: RegistriesConf, text: str) -> Match | None:
    if not text:
        raise InvalidArgument("no image given: image.image is empty")
    if reference.is_image_id(text):
        image_id = f"sha256:{text.removeprefix('sha256:')}"
        record = records.get(image_id)
        return Match(record) if record is not None else None
    parse_error: InvalidArgument | None = None
    try:
        ref = reference.parse(text)
    except InvalidArgument as exc:
        parse_error = exc
    else:
        for candidate in registries_conf.lookup_candidates(conf, ref):
            candidate = candidate.with_default_tag()
            tag: str | None = None
            if candidate.digest is not None:
                name = candidate.digested()
            else:
                name = candidate.tagged()
                tag = name
            found = records.image_for(name)
            record = records.get(found) if found is not None else None
            if record is not None:
                return Match(record, tag)
    prefix = _HEX_PREFIX.fullmatch(text)
    if prefix is not None:
        ids = records.ids_with_prefix(f"sha256:{prefix.group(1)}")
        if len(ids) > 1:
            raise InvalidArgument(f"image id prefix {text} is ambiguous: it matches "
                                  f"{len(ids)} images")
        if ids:
            record = records.get(ids[0])
            return Match(record) if record is not None else None
        return None
    if parse_error is not None:
        raise parse_error
    return None
