"""SPDY/3.1 framing, sans-IO, as spoken by moby/spdystream (client-go, crictl).

API::

    codec = FrameCodec(max_frame=MAX_LENGTH, max_header_block=256 * 1024, max_headers=256)
    frames = codec.feed(received_bytes)   # -> list[Frame]; raises SpdyError
    wire = codec.encode(frame)            # -> bytes; ValueError for unencodable fields

Frames are frozen dataclasses: SynStream, SynReply, RstStream, Settings (of
Setting), Ping, GoAway, Headers, WindowUpdate, Data; ``Frame`` is their union.
Status codes are RstStatus / GoAwayStatus IntEnums (plain ints on frames, so
unknown codes survive).  Header maps are ``dict[str, list[str]]``: names are
lowercase (the encoder lowercases, the decoder rejects anything else), a value
list travels NUL-joined as one SPDY value, and bytes map to str as UTF-8 with
surrogateescape so any octets round-trip.  Errors: SpdyError, subclassed by
ProtocolError, FrameTooLargeError and HeaderBlockError.

Invariants:

* One FrameCodec per TCP connection.  It owns both zlib contexts, which live as
  long as the connection: the compressor for everything ``encode`` emits, the
  decompressor for everything ``feed`` receives.  Every header block is ended
  with Z_SYNC_FLUSH, never Z_FINISH, and both sides prime zlib with
  HEADER_DICTIONARY (the SPDY/3 draft dictionary).  Because the contexts are
  shared, frames must be encoded in the order they are written to the socket.
* ``feed`` accepts any split of the byte stream; a partial frame is kept until
  the rest arrives and is never an error.
* Limits guard against hostile peers: a frame longer than ``max_frame`` is
  refused from its 8-byte header, before the payload is buffered; a header
  block is inflated to at most ``max_header_block`` bytes (zlib bombs) and may
  hold at most ``max_headers`` names.
* Every SpdyError is fatal to the connection: a failed header block leaves
  the shared decompressor out of step with the peer, so after one error the
  codec re-raises it on each ``feed``.  The caller answers with
  GOAWAY(err.status) and closes.  Frames parsed earlier in the same ``feed``
  call are discarded with it.
* Control frames carry version 3.  Unknown control types (including SPDY/3
  CREDENTIAL and the SPDY/2 NOOP) are dropped whole, as the spec requires.
  WINDOW_UPDATE on stream 0 is the SPDY/3.1 session window.

Not implemented: server push (associated_id is carried, never acted on),
priorities (carried, not scheduled), CREDENTIAL frames, flow-control
accounting and stream state machines (those belong to the session layer).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import KW_ONLY, dataclass, field
from enum import IntEnum

VERSION = 3
MAX_LENGTH = 0xFFFFFF  # the 24-bit length field of every frame
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7
_U31 = 0x7FFFFFFF


class ControlType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# SPDY/3 draft section 2.6.10.1: length-prefixed words, then a raw tail.
_DICT_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range",
    "referer", "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade",
    "user-agent", "vary", "via", "warning", "www-authenticate", "method", "get", "status",
    "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)
_DICT_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    b"502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    b"400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct"
    b" Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    b"image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    b"publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
HEADER_DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in _DICT_WORDS) + _DICT_TAIL
)

HeaderMap = dict[str, list[str]]


class SpdyError(Exception):
    """The peer broke the protocol; end the session with GOAWAY(status)."""

    status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR


class ProtocolError(SpdyError):
    """A malformed frame or header block."""


class FrameTooLargeError(SpdyError):
    """A frame longer than the codec's max_frame."""


class HeaderBlockError(SpdyError):
    """A header block zlib cannot inflate, or one over the size/count limits."""


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: HeaderMap = field(default_factory=dict, hash=False)
    _: KW_ONLY
    associated_id: int = 0
    priority: int = 0  # 0 (highest) .. 7
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: HeaderMap = field(default_factory=dict, hash=False)
    _: KW_ONLY
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int  # an RstStatus, kept as int so unknown codes survive


@dataclass(frozen=True, slots=True)
class Setting:
    id: int  # e.g. SETTINGS_INITIAL_WINDOW_SIZE
    value: int
    flags: int = 0  # 1: please persist, 2: persisted value


@dataclass(frozen=True, slots=True)
class Settings:
    entries: tuple[Setting, ...] = ()
    _: KW_ONLY
    clear: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class Headers:
    stream_id: int
    headers: HeaderMap = field(default_factory=dict, hash=False)
    _: KW_ONLY
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int  # 0 is the session window (SPDY/3.1)
    delta: int


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    data: bytes = b""
    _: KW_ONLY
    fin: bool = False


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | Headers | WindowUpdate | Data

_KNOWN_TYPES = frozenset(ControlType)
_STREAM_TYPES = {ControlType.SYN_STREAM, ControlType.SYN_REPLY, ControlType.HEADERS,
                 ControlType.RST_STREAM}
_FIXED_LENGTH = {ControlType.RST_STREAM: 8, ControlType.PING: 4,
                 ControlType.GOAWAY: 8, ControlType.WINDOW_UPDATE: 8}
_MIN_LENGTH = {ControlType.SYN_STREAM: 10, ControlType.SYN_REPLY: 4,
               ControlType.HEADERS: 4, ControlType.SETTINGS: 4}


def _stream_id(value: int, *, zero_ok: bool = False) -> int:
    if not (0 if zero_ok else 1) <= value <= _U31:
        raise ValueError(f"stream id {value} out of range")
    return value


class FrameCodec:
    """Both directions of one SPDY/3.1 connection; see the module docstring."""

    def __init__(self, *, max_frame: int = MAX_LENGTH, max_header_block: int = 256 * 1024,
                 max_headers: int = 256) -> None:
        # A header block must fit one frame after compression (deflate adds little).
        if not (0 < max_frame <= MAX_LENGTH and 0 < max_header_block <= MAX_LENGTH // 2):
            raise ValueError("max_frame or max_header_block out of range")
        self._max_frame = max_frame
        self._max_block = max_header_block
        self._max_headers = max_headers
        self._inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._deflater = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=HEADER_DICTIONARY)
        self._buf = bytearray()
        self._failed: SpdyError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while len(self._buf) - pos >= 8:
                word0, word1 = struct.unpack_from(">II", self._buf, pos)
                length = word1 & MAX_LENGTH
                if length > self._max_frame:
                    raise FrameTooLargeError(f"frame of {length} bytes over {self._max_frame}")
                if len(self._buf) - pos - 8 < length:
                    break
                payload = bytes(self._buf[pos + 8 : pos + 8 + length])
                pos += 8 + length
                frame = self._parse(word0, word1 >> 24, payload)
                if frame is not None:
                    frames.append(frame)
        except SpdyError as err:
            self._failed = err
            raise
        finally:
            del self._buf[:pos]
        return frames

    def _parse(self, word0: int, flags: int, p: bytes) -> Frame | None:
        if not word0 & 0x80000000:
            if word0 == 0:
                raise ProtocolError("DATA frame on stream 0")
            return Data(word0, p, fin=bool(flags & FLAG_FIN))
        version, kind = (word0 >> 16) & 0x7FFF, word0 & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        if kind not in _KNOWN_TYPES:
            return None
        ctype = ControlType(kind)
        fixed, least = _FIXED_LENGTH.get(ctype), _MIN_LENGTH.get(ctype, 0)
        if (fixed is not None and len(p) != fixed) or len(p) < least:
            raise ProtocolError(f"{ctype.name} frame of bad length {len(p)}")
        first = struct.unpack_from(">I", p)[0] & _U31
        if first == 0 and ctype in _STREAM_TYPES:
            raise ProtocolError(f"{ctype.name} frame on stream 0")
        fin = bool(flags & FLAG_FIN)
        if ctype is ControlType.SYN_STREAM:
            assoc = struct.unpack_from(">I", p, 4)[0] & _U31
            return SynStream(first, self._inflate(p[10:]), associated_id=assoc,
                             priority=p[8] >> 5, fin=fin,
                             unidirectional=bool(flags & FLAG_UNIDIRECTIONAL))
        if ctype is ControlType.SYN_REPLY:
            return SynReply(first, self._inflate(p[4:]), fin=fin)
        if ctype is ControlType.HEADERS:
            return Headers(first, self._inflate(p[4:]), fin=fin)
        second = struct.unpack_from(">I", p, 4)[0] if len(p) >= 8 else 0
        if ctype is ControlType.RST_STREAM:
            return RstStream(first, second)
        if ctype is ControlType.GOAWAY:
            return GoAway(first, second)
        if ctype is ControlType.WINDOW_UPDATE:
            return WindowUpdate(first, second & _U31)
        if ctype is ControlType.PING:
            return Ping(struct.unpack_from(">I", p)[0])
        count = struct.unpack_from(">I", p)[0]
        if len(p) != 4 + 8 * count:
            raise ProtocolError(f"SETTINGS frame of {len(p)} bytes for {count} entries")
        entries = tuple(Setting(fid & MAX_LENGTH, value, fid >> 24)
                        for fid, value in struct.iter_unpack(">II", p[4:]))
        return Settings(entries, clear=bool(flags & FLAG_CLEAR_SETTINGS))

    def _inflate(self, block: bytes) -> HeaderMap:
        try:
            # max_length bounds memory however well the block compresses.
            raw = self._inflater.decompress(block, self._max_block + 1)
        except zlib.error as err:
            raise HeaderBlockError(f"header block does not inflate: {err}") from None
        if len(raw) > self._max_block or self._inflater.unconsumed_tail:
            raise HeaderBlockError(f"header block over {self._max_block} bytes")
        if len(raw) < 4:
            raise ProtocolError("truncated header block")
        count = struct.unpack_from(">I", raw)[0]
        # Every pair needs 8 bytes of lengths: refuse counts the block cannot hold.
        if count > self._max_headers or 4 + 8 * count > len(raw):
            raise HeaderBlockError(f"header block claims {count} headers")
        headers: HeaderMap = {}
        pos = 4
        for _ in range(count):
            name, pos = _take(raw, pos)
            value, pos = _take(raw, pos)
            if not name or name != name.lower():
                raise ProtocolError(f"invalid header name {name!r}")
            if name in headers:
                raise ProtocolError(f"duplicate header {name!r}")
            headers[name] = value.split("\0")
        if pos != len(raw):
            raise ProtocolError("trailing bytes in header block")
        return headers

    def encode(self, frame: Frame) -> bytes:
        try:
            return self._encode(frame)
        except struct.error as err:  # a field outside its wire width
            raise ValueError(f"{type(frame).__name__}: {err}") from None

    def _encode(self, frame: Frame) -> bytes:
        flags = FLAG_FIN if getattr(frame, "fin", False) else 0
        ctype: ControlType
        match frame:
            case Data(stream_id=sid, data=data):
                if len(data) > MAX_LENGTH:
                    raise ValueError(f"DATA payload of {len(data)} bytes over {MAX_LENGTH}")
                return struct.pack(">II", _stream_id(sid), flags << 24 | len(data)) + data
            case SynStream(stream_id=sid, associated_id=assoc, priority=prio):
                if not 0 <= prio <= 7:
                    raise ValueError(f"priority {prio} not in 0..7")
                flags |= FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
                ctype = ControlType.SYN_STREAM
                body = struct.pack(">IIBB", _stream_id(sid), _stream_id(assoc, zero_ok=True),
                                   prio << 5, 0)
            case SynReply(stream_id=sid) | Headers(stream_id=sid):
                ctype = ControlType.HEADERS if isinstance(frame, Headers) else ControlType.SYN_REPLY
                body = struct.pack(">I", _stream_id(sid))
            case RstStream(stream_id=sid, status=status):
                ctype, body = ControlType.RST_STREAM, struct.pack(">II", _stream_id(sid), status)
            case GoAway(last_good_stream_id=sid, status=status):
                ctype = ControlType.GOAWAY
                body = struct.pack(">II", _stream_id(sid, zero_ok=True), status)
            case WindowUpdate(stream_id=sid, delta=delta):
                if not 1 <= delta <= _U31:
                    raise ValueError(f"window delta {delta} out of range")
                ctype = ControlType.WINDOW_UPDATE
                body = struct.pack(">II", _stream_id(sid, zero_ok=True), delta)
            case Ping(ping_id=ping_id):
                ctype, body = ControlType.PING, struct.pack(">I", ping_id)
            case Settings(entries=entries, clear=clear):
                if any(not 0 <= e.id <= MAX_LENGTH for e in entries):
                    raise ValueError("setting id over 24 bits")
                flags, ctype = (FLAG_CLEAR_SETTINGS if clear else 0), ControlType.SETTINGS
                body = struct.pack(">I", len(entries)) + b"".join(
                    struct.pack(">II", e.flags << 24 | e.id, e.value) for e in entries)
            case _:
                raise TypeError(f"not a SPDY frame: {frame!r}")
        # Compress last: nothing may fail once the shared compressor has moved on.
        if isinstance(frame, SynStream | SynReply | Headers):
            body += self._deflate(frame.headers)
        return _control(ctype, flags, body)

    def _deflate(self, headers: HeaderMap) -> bytes:
        # Validate fully before touching the compressor: a half-written block
        # would desynchronise the peer's decompressor for the whole connection.
        if len(headers) > self._max_headers:
            raise ValueError(f"{len(headers)} headers over {self._max_headers}")
        parts = [struct.pack(">I", len(headers))]
        seen: set[str] = set()
        for name, values in headers.items():
            lname = name.lower()
            if not lname or lname in seen:
                raise ValueError(f"empty or duplicate header name {name!r}")
            if any("\0" in v for v in values):
                raise ValueError(f"NUL inside a value of header {name!r}")
            seen.add(lname)
            for text in (lname, "\0".join(values)):
                raw = text.encode("utf-8", "surrogateescape")
                parts += [struct.pack(">I", len(raw)), raw]
        block = b"".join(parts)
        if len(block) > self._max_block:
            raise ValueError(f"header block of {len(block)} bytes over {self._max_block}")
        return self._deflater.compress(block) + self._deflater.flush(zlib.Z_SYNC_FLUSH)


def _take(raw: bytes, pos: int) -> tuple[str, int]:
    if pos + 4 > len(raw):
        raise ProtocolError("truncated header block")
    end = pos + 4 + struct.unpack_from(">I", raw, pos)[0]
    if end > len(raw):
        raise ProtocolError("truncated header block")
    # surrogateescape: any bytes survive a decode/encode round trip.
    return raw[pos + 4 : end].decode("utf-8", "surrogateescape"), end


def _control(ctype: ControlType, flags: int, body: bytes) -> bytes:
    if len(body) > MAX_LENGTH:
        raise ValueError(f"{ctype.name} frame of {len(body)} bytes over {MAX_LENGTH}")
    return struct.pack(">HHI", 0x8000 | VERSION, ctype, flags << 24 | len(body)) + body
