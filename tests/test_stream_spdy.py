"""SPDY/3.1 framing (workers/stream/spdy.py): wire layout, shared zlib
contexts, golden frames from an independent implementation, hostile input."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podvisor.workers.stream.spdy import (
    FLAG_FIN,
    HEADER_DICTIONARY,
    MAX_LENGTH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    Data,
    Frame,
    FrameCodec,
    FrameTooLargeError,
    GoAway,
    GoAwayStatus,
    HeaderBlockError,
    Headers,
    Ping,
    ProtocolError,
    RstStatus,
    RstStream,
    Setting,
    Settings,
    SpdyError,
    SynReply,
    SynStream,
    WindowUpdate,
)


def roundtrip(*frames: Frame) -> list[Frame]:
    sender, receiver = FrameCodec(), FrameCodec()
    return receiver.feed(b"".join(sender.encode(f) for f in frames))


def control(ctype: int, flags: int, body: bytes, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, ctype, flags << 24 | len(body)) + body


def raw_block(pairs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    out = struct.pack(">I", len(pairs) if count is None else count)
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def compress_independently(*blocks: bytes) -> list[bytes]:
    """Header blocks as any SPDY/3 peer's zlib would write them: one stream."""
    comp = zlib.compressobj(zdict=HEADER_DICTIONARY)
    return [comp.compress(b) + comp.flush(zlib.Z_SYNC_FLUSH) for b in blocks]


def syn_stream_bytes(stream_id: int, block: bytes, flags: int = 0) -> bytes:
    return control(1, flags, struct.pack(">IIBB", stream_id, 0, 0, 0) + block)


# --- the dictionary ---------------------------------------------------------


def test_dictionary_is_the_published_spdy3_one() -> None:
    # Pinned from moby/spdystream spdy/dictionary.go (byte-for-byte compared).
    assert len(HEADER_DICTIONARY) == 1423
    assert hashlib.sha256(HEADER_DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")
    # The dictionary id every SPDY/3 zlib stream carries (see the golden frames).
    assert zlib.adler32(HEADER_DICTIONARY) == 0xE3C6A7C2
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


# --- golden frames ------------------------------------------------------------
# From Chromium's spdy_framer_test.cc (CreateSynStreamCompressed,
# CreateSynReplyCompressed, CreateRstStream, CreateSettings, CreatePingFrame,
# CreateGoAway): a second, independent SPDY/3 implementation with its own zlib
# settings (window bits 11), so decoding them checks dictionary and layout.

CHROMIUM_SYN_STREAM = bytes.fromhex(
    "80030001 00000037 00000001 00000000 800038ea e3c6a7c2 02e50e50 c24b4a04"
    "e50b6680 004acbcf 07082010 95969f0f a2000228 29b10820 80000000 00ffff")
CHROMIUM_SYN_STREAM_SIMD = bytes.fromhex(
    "80030001 00000032 00000001 00000000 800038ea e3c6a7c2 02e50e50 c24b4a04"
    "e50b6680 004acbcf 07082024 0a208092 128b0002 08000000 ffff")
CHROMIUM_SYN_REPLY = bytes.fromhex(
    "80030002 00000031 00000001 38eae3c6 a7c202e5 0e50c24b 4a04e50b 6680004a"
    "cbcf0708 20109596 9f0fa200 022829b1 08208000 000000ff ff")


@pytest.mark.parametrize("wire", [CHROMIUM_SYN_STREAM, CHROMIUM_SYN_STREAM_SIMD])
def test_golden_compressed_syn_stream(wire: bytes) -> None:
    assert FrameCodec().feed(wire) == [
        SynStream(1, {"bar": ["foo"], "foo": ["bar"]}, priority=4)]


def test_golden_compressed_syn_reply() -> None:
    assert FrameCodec().feed(CHROMIUM_SYN_REPLY) == [
        SynReply(1, {"bar": ["foo"], "foo": ["bar"]})]


@pytest.mark.parametrize(("frame", "wire"), [
    (RstStream(1, RstStatus.PROTOCOL_ERROR), "80030003 00000008 00000001 00000001"),
    (RstStream(0x7FFFFFFF, RstStatus.INTERNAL_ERROR), "80030003 00000008 7fffffff 00000006"),
    (Settings((Setting(SETTINGS_INITIAL_WINDOW_SIZE, 0x0A0B0C0D, flags=1),)),
     "80030004 0000000c 00000001 01000007 0a0b0c0d"),
    (Settings((Setting(1, 5), Setting(2, 6), Setting(3, 7), Setting(4, 8))),
     "80030004 00000024 00000004 00000001 00000005 00000002 00000006"
     "00000003 00000007 00000004 00000008"),
    (Settings(), "80030004 00000004 00000000"),
    (Ping(0x12345678), "80030006 00000004 12345678"),
    (GoAway(0, GoAwayStatus.OK), "80030007 00000008 00000000 00000000"),
    (GoAway(0x7FFFFFFF, GoAwayStatus.PROTOCOL_ERROR), "80030007 00000008 7fffffff 00000001"),
])  # fmt: skip
def test_golden_uncompressed_frames(frame: Frame, wire: str) -> None:
    assert FrameCodec().encode(frame) == bytes.fromhex(wire)
    assert FrameCodec().feed(bytes.fromhex(wire)) == [frame]


# --- independent zlib ---------------------------------------------------------


def test_decodes_blocks_compressed_by_plain_zlib_with_zdict() -> None:
    blocks = compress_independently(
        raw_block([(b"streamtype", b"stdout"), (b"port", b"8080")]),
        raw_block([(b"streamtype", b"stderr")]),
        raw_block([(b"streamtype", b"error"), (b"multi", b"a\0b\0")]),
    )
    wire = b"".join(syn_stream_bytes(2 * i + 1, b) for i, b in enumerate(blocks))
    frames = FrameCodec().feed(wire)
    assert [f.headers for f in frames if isinstance(f, SynStream)] == [
        {"streamtype": ["stdout"], "port": ["8080"]},
        {"streamtype": ["stderr"]},
        {"streamtype": ["error"], "multi": ["a", "b", ""]},
    ]


def test_our_blocks_inflate_with_plain_zlib() -> None:
    codec = FrameCodec()
    inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY)
    for sid in (1, 3, 5):
        wire = codec.encode(SynStream(sid, {"StreamType": ["data"], "x": ["1", "2"]}))
        assert wire[:4] == b"\x80\x03\x00\x01"
        raw = inflater.decompress(wire[18:])
        # Lowercased names, NUL-joined values, 4-byte big-endian lengths.
        assert raw == raw_block([(b"streamtype", b"data"), (b"x", b"1\x002")])


def test_header_blocks_share_one_context_per_direction() -> None:
    sender, receiver = FrameCodec(), FrameCodec()
    headers = {"streamtype": ["stdin"], "content-type": ["text/plain"]}
    wires = [sender.encode(Headers(i, headers)) for i in (1, 3, 5)]
    # Later blocks lean on the history of earlier ones: much shorter, no zlib header.
    assert len(wires[2]) < len(wires[0])
    assert [f.headers for f in receiver.feed(b"".join(wires))] == [headers] * 3  # type: ignore[union-attr]
    with pytest.raises(HeaderBlockError):
        FrameCodec().feed(wires[1])
    # Both directions on one codec are independent contexts.
    peer = FrameCodec()
    assert peer.feed(receiver.encode(SynReply(1, headers))) == [SynReply(1, headers)]
    assert receiver.feed(sender.encode(SynReply(7, headers, fin=True))) == [
        SynReply(7, headers, fin=True)]


# --- every frame type ---------------------------------------------------------

EVERY_FRAME: list[Frame] = [
    SynStream(1, {"streamtype": ["error"]}, associated_id=0, priority=7, fin=True,
              unidirectional=True),
    SynStream(0x7FFFFFFF, {}, associated_id=5, priority=0),
    SynReply(1, {"status": ["200"]}, fin=True),
    RstStream(3, RstStatus.CANCEL),
    Settings((Setting(4, 100), Setting(7, 65536, flags=2)), clear=True),
    Ping(0xFFFFFFFF),
    GoAway(9, GoAwayStatus.INTERNAL_ERROR),
    Headers(5, {"a": ["1", "", "3"]}, fin=True),
    WindowUpdate(0, 0x7FFFFFFF),
    WindowUpdate(1, 1),
    Data(1, b"hello", fin=True),
    Data(2, b""),
]


@pytest.mark.parametrize("frame", EVERY_FRAME, ids=repr)
def test_roundtrip_every_frame(frame: Frame) -> None:
    assert roundtrip(frame) == [frame]


def test_flags_on_the_wire() -> None:
    codec = FrameCodec()
    assert codec.encode(Data(1, b"x", fin=True)) == bytes.fromhex("00000001 01000001 78")
    assert codec.encode(Data(1, b"", fin=True))[4] == FLAG_FIN
    assert codec.encode(SynStream(1, {}, fin=True, unidirectional=True))[4] == 0x03
    assert codec.encode(Headers(1, {}, fin=True))[4] == FLAG_FIN
    assert codec.encode(Settings(clear=True))[4] == 0x01
    assert codec.encode(SynStream(1, {}, priority=5))[16] == 5 << 5


@pytest.mark.parametrize("status", list(RstStatus))
def test_rst_stream_status_codes(status: RstStatus) -> None:
    wire = FrameCodec().encode(RstStream(11, status))
    assert wire[12:] == struct.pack(">I", status)
    assert FrameCodec().feed(wire) == [RstStream(11, status)]


def test_status_values() -> None:
    assert [int(s) for s in GoAwayStatus] == [0, 1, 2]
    assert (int(RstStatus.FRAME_TOO_LARGE), int(RstStatus.STREAM_ALREADY_CLOSED)) == (11, 9)
    assert SpdyError.status is GoAwayStatus.PROTOCOL_ERROR


def test_unknown_status_survives() -> None:
    assert roundtrip(RstStream(1, 4000), GoAway(0, 77)) == [RstStream(1, 4000), GoAway(0, 77)]


# --- incremental input --------------------------------------------------------


def test_feed_byte_by_byte() -> None:
    sender, receiver = FrameCodec(), FrameCodec()
    wire = b"".join(sender.encode(f) for f in EVERY_FRAME)
    got: list[Frame] = []
    for i in range(len(wire)):
        got += receiver.feed(wire[i : i + 1])
    assert got == EVERY_FRAME
    assert receiver.feed(b"") == []


def test_truncated_input_waits() -> None:
    wire = FrameCodec().encode(Data(1, b"payload"))
    codec = FrameCodec()
    assert codec.feed(wire[:3]) == []
    assert codec.feed(wire[3:10]) == []
    assert codec.feed(wire[10:] + wire[:9]) == [Data(1, b"payload")]
    assert codec.feed(wire[9:]) == [Data(1, b"payload")]


def test_unknown_control_types_are_skipped() -> None:
    sender = FrameCodec()
    wire = (control(10, 0, b"credential-ish")  # SPDY/3 CREDENTIAL
            + control(5, 0, b"")  # SPDY/2 NOOP
            + sender.encode(Ping(1))
            + control(0xFFFF, 0xFF, b"\x00" * 300)
            + sender.encode(Data(1, b"x")))
    assert FrameCodec().feed(wire) == [Ping(1), Data(1, b"x")]


# --- limits and hostile input -------------------------------------------------


def test_oversize_frame_refused_from_its_header() -> None:
    codec = FrameCodec(max_frame=1024)
    assert codec.feed(FrameCodec().encode(Data(1, b"x" * 1024))) == [Data(1, b"x" * 1024)]
    with pytest.raises(FrameTooLargeError, match="1025"):
        codec.feed(struct.pack(">II", 1, 1025))  # only the 8-byte header arrived
    # The connection is done: the error sticks.
    with pytest.raises(FrameTooLargeError):
        codec.feed(b"")
    with pytest.raises(FrameTooLargeError):
        FrameCodec(max_frame=1024).feed(control(10, 0, b"\x00" * 2000))


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        FrameCodec(max_frame=MAX_LENGTH + 1)
    with pytest.raises(ValueError):
        FrameCodec(max_header_block=0)


def test_zlib_bomb() -> None:
    (block,) = compress_independently(raw_block([(b"x", b"a" * (20 << 20))]))
    assert len(block) < 64 << 10  # small on the wire, 20 MiB inflated
    codec = FrameCodec(max_header_block=256 << 10)
    with pytest.raises(HeaderBlockError, match="over 262144"):
        codec.feed(syn_stream_bytes(1, block))


def test_too_many_headers() -> None:
    pairs = [(f"h{i}".encode(), b"v") for i in range(20)]
    (block,) = compress_independently(raw_block(pairs))
    with pytest.raises(HeaderBlockError, match="20 headers"):
        FrameCodec(max_headers=19).feed(syn_stream_bytes(1, block))
    assert len(FrameCodec(max_headers=20).feed(syn_stream_bytes(1, block))) == 1
    # A count the block cannot possibly hold is refused without looping.
    (block,) = compress_independently(raw_block([], count=0xFFFFFFFF))
    with pytest.raises(HeaderBlockError):
        FrameCodec().feed(syn_stream_bytes(1, block))


def test_corrupt_zlib() -> None:
    with pytest.raises(HeaderBlockError, match="inflate"):
        FrameCodec().feed(syn_stream_bytes(1, b"\x78\x9c garbage not zlib"))


@pytest.mark.parametrize(("block", "message"), [
    (raw_block([(b"Host", b"x")]), "invalid header name"),
    (raw_block([(b"", b"x")]), "invalid header name"),
    (raw_block([(b"a", b"1"), (b"a", b"2")]), "duplicate header"),
    (raw_block([(b"a", b"1")]) + b"junk", "trailing bytes"),
    (raw_block([(b"a", b"1")])[:-1], "truncated"),
    (struct.pack(">I", 1) + struct.pack(">I", 100) + b"abcd", "truncated"),
    (b"", "truncated"),
])  # fmt: skip
def test_malformed_header_blocks(block: bytes, message: str) -> None:
    (compressed,) = compress_independently(block)
    with pytest.raises(ProtocolError, match=message):
        FrameCodec().feed(syn_stream_bytes(1, compressed))


@pytest.mark.parametrize(("wire", "message"), [
    (struct.pack(">II", 0, 1) + b"x", "DATA frame on stream 0"),
    (control(3, 0, struct.pack(">II", 0, 1)), "RST_STREAM frame on stream 0"),
    (control(3, 0, struct.pack(">II", 1, 1), version=2), "unsupported SPDY version 2"),
    (control(6, 0, b"\x00\x00\x00\x01\x00"), "PING frame of bad length 5"),
    (control(7, 0, b"\x00" * 4), "GOAWAY frame of bad length 4"),
    (control(9, 0, b"\x00" * 12), "WINDOW_UPDATE frame of bad length 12"),
    (control(1, 0, b"\x00" * 9), "SYN_STREAM frame of bad length 9"),
    (control(4, 0, struct.pack(">I", 2) + b"\x00" * 8), "SETTINGS frame of 12 bytes"),
])  # fmt: skip
def test_malformed_frames(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameCodec().feed(wire)


def test_syn_stream_on_stream_zero() -> None:
    (block,) = compress_independently(raw_block([]))
    with pytest.raises(ProtocolError, match="stream 0"):
        FrameCodec().feed(syn_stream_bytes(0, block))


# --- encoder input checks -----------------------------------------------------


@pytest.mark.parametrize("frame", [
    Data(0, b"x"),
    Data(1 << 31, b"x"),
    SynStream(1, {}, priority=8),
    SynStream(1, {}, associated_id=-1),
    RstStream(1, 1 << 32),
    Ping(1 << 32),
    WindowUpdate(0, 0),
    Settings((Setting(1 << 24, 1),)),
    Headers(1, {"a": ["x\0y"]}),
    Headers(1, {"": ["x"]}),
])  # fmt: skip
def test_encode_rejects_bad_fields(frame: Frame) -> None:
    with pytest.raises(ValueError):
        FrameCodec().encode(frame)


def test_rejected_header_block_leaves_compressor_in_step() -> None:
    sender, receiver = FrameCodec(), FrameCodec()
    with pytest.raises(ValueError, match="duplicate"):
        sender.encode(SynStream(1, {"Accept": ["a"], "accept": ["b"]}))
    with pytest.raises(ValueError, match="over"):
        FrameCodec(max_header_block=64).encode(SynStream(1, {"x": ["y" * 100]}))
    frame = SynStream(1, {"accept": ["a"]})
    assert receiver.feed(sender.encode(frame)) == [frame]


def test_encode_rejects_non_frames() -> None:
    with pytest.raises(TypeError):
        FrameCodec().encode("nope")  # type: ignore[arg-type]


def test_frames_are_frozen_and_hashable() -> None:
    frame = SynStream(1, {"a": ["b"]})
    with pytest.raises(AttributeError):
        frame.stream_id = 2  # type: ignore[misc]
    assert hash(frame) == hash(SynStream(1, {"c": ["d"]}))
    assert frame != SynStream(1, {"c": ["d"]})


# --- property -----------------------------------------------------------------

sid = st.integers(1, 0x7FFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-:", min_size=1, max_size=12)
values = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                          max_size=20), min_size=1, max_size=3)
header_maps = st.dictionaries(names, values, max_size=6)
frames = st.one_of(
    st.builds(SynStream, sid, header_maps, associated_id=st.integers(0, 0x7FFFFFFF),
              priority=st.integers(0, 7), fin=st.booleans(), unidirectional=st.booleans()),
    st.builds(SynReply, sid, header_maps, fin=st.booleans()),
    st.builds(Headers, sid, header_maps, fin=st.booleans()),
    st.builds(RstStream, sid, u32),
    st.builds(Settings, st.lists(st.builds(Setting, st.integers(0, MAX_LENGTH), u32,
                                           st.integers(0, 255))).map(tuple),
              clear=st.booleans()),
    st.builds(Ping, u32),
    st.builds(GoAway, st.integers(0, 0x7FFFFFFF), u32),
    st.builds(WindowUpdate, st.integers(0, 0x7FFFFFFF), st.integers(1, 0x7FFFFFFF)),
    st.builds(Data, sid, st.binary(max_size=64), fin=st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(frames, max_size=12), st.lists(st.integers(1, 50), min_size=1))
def test_roundtrip_property(sent: list[Frame], chunks: list[int]) -> None:
    sender, receiver = FrameCodec(), FrameCodec()
    wire = b"".join(sender.encode(f) for f in sent)
    got: list[Frame] = []
    pos, i = 0, 0
    while pos < len(wire):
        size = chunks[i % len(chunks)]
        got += receiver.feed(wire[pos : pos + size])
        pos, i = pos + size, i + 1
    assert got == sent
