"""
STUN Binding on the SIP UDP port: the keep-alive of SIP Outbound over UDP
(RFC 5626 §4.4.2, §8; STUN per RFC 5389).

A user agent behind NAT that registers with C{reg-id} keeps its UDP flow
open by sending STUN Binding requests to the SIP port it registered with,
and watches the mapped address in the answer to notice a changed NAT
binding.  STUN and SIP share the port: a STUN message starts with two zero
bits and carries the magic cookie, which no SIP message (starting with a
method name or C{SIP/2.0}) can (RFC 7983 §7 demultiplexes the same way).

Sans-IO: bytes and an address in, bytes out.  Only Binding requests
without attributes we must understand are answered; anything else is
dropped, as RFC 5389 allows a server to do with what it does not serve.
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Optional

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_HEADER = 20
# Longest request answered: keep-alives carry a few small attributes.
MAX_REQUEST = 548


def isStun(data: bytes) -> bool:
    """
    Whether C{data} looks like a STUN message (RFC 5389 §6): the two top
    bits zero, the magic cookie, a length that is a multiple of 4 and
    matches the datagram.
    """
    if len(data) < _HEADER or data[0] & 0xC0 or data[4:8] != _COOKIE_BYTES:
        return False
    length = struct.unpack("!H", data[2:4])[0]
    return length % 4 == 0 and _HEADER + length == len(data)


def _comprehensionRequired(data: bytes) -> bool:
    """
    Whether the request carries a comprehension-required attribute
    (type below 0x8000) other than those a keep-alive may carry and we can
    ignore: a request we do not understand gets no answer.
    """
    offset = _HEADER
    end = len(data)
    while offset + 4 <= end:
        kind, length = struct.unpack("!HH", data[offset : offset + 4])
        # SOFTWARE (0x8022) and FINGERPRINT are optional; USERNAME (0x0006)
        # and MESSAGE-INTEGRITY (0x0008) are not used on keep-alives and
        # we do not check them.
        if kind < 0x8000 and kind not in (0x0006, 0x0008):
            return True
        offset += 4 + length + (-length % 4)
    return offset != end


def bindingResponse(data: bytes, host: str, port: int) -> Optional[bytes]:
    """
    The Binding success response to the request C{data} received from
    C{host}:C{port}, or L{None} when C{data} is no Binding request this
    server answers.

    The response carries XOR-MAPPED-ADDRESS (the address the request came
    from, which is what the client compares to detect a NAT rebinding) and
    a FINGERPRINT, which RFC 5626 §8 asks keep-alives to use.
    """
    if len(data) > MAX_REQUEST or not isStun(data):
        return None
    kind = struct.unpack("!H", data[:2])[0]
    if kind != BINDING_REQUEST or _comprehensionRequired(data):
        return None
    transaction = data[8:20]
    try:
        if ":" in host:
            family = 0x02
            raw = socket.inet_pton(socket.AF_INET6, host.strip("[]"))
            mask = _COOKIE_BYTES + transaction
        else:
            family = 0x01
            raw = socket.inet_pton(socket.AF_INET, host)
            mask = _COOKIE_BYTES
    except OSError:
        return None
    address = bytes(a ^ b for a, b in zip(raw, mask))
    value = struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + address
    attributes = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    # The length in the header covers the FINGERPRINT that follows.
    header = struct.pack("!HHI", BINDING_SUCCESS, len(attributes) + 8, MAGIC_COOKIE) + transaction
    message = header + attributes
    crc = (zlib.crc32(message) & 0xFFFFFFFF) ^ _FINGERPRINT_XOR
    return message + struct.pack("!HHI", FINGERPRINT, 4, crc)


def bindingRequest(transaction: bytes) -> bytes:
    """
    A bare Binding request with the 12-byte C{transaction} id: what a
    keep-alive sends (for tests and tools).
    """
    if len(transaction) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    return struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction


def mappedAddress(response: bytes) -> Optional[tuple]:
    """
    The C{(host, port)} of the XOR-MAPPED-ADDRESS in a Binding success
    response, or L{None} (for tests and tools).
    """
    if not isStun(response) or struct.unpack("!H", response[:2])[0] != BINDING_SUCCESS:
        return None
    transaction = response[8:20]
    offset = _HEADER
    while offset + 4 <= len(response):
        kind, length = struct.unpack("!HH", response[offset : offset + 4])
        value = response[offset + 4 : offset + 4 + length]
        if kind == XOR_MAPPED_ADDRESS and len(value) >= 8:
            family = value[1]
            port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC_COOKIE >> 16)
            if family == 0x01:
                raw = bytes(a ^ b for a, b in zip(value[4:8], _COOKIE_BYTES))
                return socket.inet_ntop(socket.AF_INET, raw), port
            raw = bytes(a ^ b for a, b in zip(value[4:20], _COOKIE_BYTES + transaction))
            return socket.inet_ntop(socket.AF_INET6, raw), port
        offset += 4 + length + (-length % 4)
    return None
