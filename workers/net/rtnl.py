"""The few route-netlink reads and interface changes the net pool needs, on
the standard library alone.

Why not pyroute2: it is 300 modules and about 23 MiB of memory in every
process that imports it, for two dumps and one flag. Every worker is forked
from one zygote that imports every pool (workers/zygote.py), so what the net
pool imports, every worker maps.

Invariants:
- Each call opens its own socket and closes it: no state is shared between
  threads, and the calling thread's network namespace is the one read or
  changed.
- A dump reads until NLMSG_DONE; a netlink error is an OSError with the
  kernel's errno.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

RTM_GETADDR = 22
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

RTA_OIF = 4
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15
IFA_ADDRESS = 1

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct("=16sH")


@dataclass(frozen=True)
class Route:
    dst_len: int
    table: int
    oif: int | None
    priority: int
    prefsrc: str | None


@dataclass(frozen=True)
class Address:
    index: int
    scope: int
    address: str


def routes(family: int) -> list[Route]:
    found = []
    for body in _dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        _, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(body)
        attrs = _attributes(body[_RTMSG.size:])
        found.append(Route(
            dst_len=dst_len,
            table=_u32(attrs[RTA_TABLE]) if RTA_TABLE in attrs else table,
            oif=_u32(attrs[RTA_OIF]) if RTA_OIF in attrs else None,
            priority=_u32(attrs[RTA_PRIORITY]) if RTA_PRIORITY in attrs else 0,
            prefsrc=socket.inet_ntop(family, attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs
            else None))
    return found


def addresses(family: int) -> list[Address]:
    found = []
    for body in _dump(RTM_GETADDR, _IFADDRMSG.pack(family, 0, 0, 0, 0)):
        _, _, _, scope, index = _IFADDRMSG.unpack_from(body)
        attrs = _attributes(body[_IFADDRMSG.size:])
        if IFA_ADDRESS in attrs:
            found.append(Address(index, scope, socket.inet_ntop(family, attrs[IFA_ADDRESS])))
    return found


def link_up(name: str) -> None:
    """Set IFF_UP on the interface ``name`` of the caller's namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ_FLAGS.pack(name.encode(), 0).ljust(40, b"\0")
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
        _, flags = _IFREQ_FLAGS.unpack_from(answer)
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS,
                    _IFREQ_FLAGS.pack(name.encode(), flags | IFF_UP).ljust(40, b"\0"))


def _dump(kind: int, header: bytes) -> list[bytes]:
    """The bodies of every message a dump request of ``kind`` answers."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = 1
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(header), kind,
                                 NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + header)
        bodies: list[bytes] = []
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, msg_type, _, msg_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError("malformed netlink message")
                body = data[offset + _NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3
                if msg_seq != seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return bodies
                if msg_type == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", body)[0]
                    if error:
                        raise OSError(error, os.strerror(error))
                    continue
                bodies.append(body)


def _attributes(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        attrs.setdefault(kind & 0x3FFF, data[offset + _RTATTR.size:offset + length])
        offset += (length + 3) & ~3
    return attrs


def _u32(raw: bytes) -> int:
    return int(struct.unpack_from("=I", raw)[0])
