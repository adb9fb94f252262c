"""
The managers a dispatcher knows, as the configuration names them:
C{managers = m1=udp:127.0.0.3:5060 m2=tcp:127.0.0.4:5060 m3=udp:[::1]:5062}.

Addresses are IP literals: the dispatcher sends UDP with C{listenUDP}'s
C{write}, which takes no host names, and a health check that waits on DNS
would not take a dead manager out within two seconds.
"""

from __future__ import annotations

import re
from typing import Tuple

from twisted.internet.abstract import isIPAddress, isIPv6Address

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z").match

TRANSPORTS = {"udp": "UDP", "tcp": "TCP"}


class ManagerSpec:
    """
    One manager: its name (what the Record-Route carries) and where the
    dispatcher reaches it.

    @ivar name: the manager's name, letters, digits and C{_.-}, at most 32.
    @ivar transport: C{"UDP"} or C{"TCP"}.
    @ivar host: an IPv4 or IPv6 address, without brackets.
    @ivar port: the port.
    """

    def __init__(self, name: str, transport: str, host: str, port: int) -> None:
        self.name = name
        self.transport = transport
        self.host = host
        self.port = port

    @classmethod
    def fromString(cls, text: str) -> ManagerSpec:
        """
        Parse C{name=transport:host:port}; an IPv6 host is bracketed.

        @raise ValueError: with a one-line reason.
        """
        name, eq, address = text.partition("=")
        if not eq or _NAME(name) is None:
            raise ValueError(
                "%r: expected NAME=udp:HOST:PORT (NAME of letters, digits, '_.-')" % (text,)
            )
        transport, colon, hostport = address.partition(":")
        if transport.lower() not in TRANSPORTS or not colon:
            raise ValueError("%r: transport must be udp or tcp" % (text,))
        if hostport.startswith("["):
            host, bracket, rest = hostport[1:].partition("]")
            if not bracket or not rest.startswith(":") or not isIPv6Address(host):
                raise ValueError("%r: bad IPv6 address" % (text,))
            portText = rest[1:]
        else:
            host, _, portText = hostport.rpartition(":")
            if not isIPAddress(host):
                raise ValueError("%r: the host must be an IP address" % (text,))
        if not portText.isdigit() or not portText.isascii() or not 0 < int(portText) < 65536:
            raise ValueError("%r: bad port" % (text,))
        return cls(name, TRANSPORTS[transport.lower()], host, int(portText))

    def address(self) -> Tuple[str, str, int]:
        return (self.transport, self.host, self.port)

    def __str__(self) -> str:
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s=%s:%s:%d" % (self.name, self.transport.lower(), host, self.port)

    def __repr__(self) -> str:
        return "ManagerSpec(%r)" % (str(self),)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ManagerSpec):
            return NotImplemented
        return (self.name, self.transport, self.host, self.port) == (
            other.name,
            other.transport,
            other.host,
            other.port,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.transport, self.host, self.port))


def parseManagers(text: str) -> Tuple[ManagerSpec, ...]:
    """
    Parse a white-space (or comma) separated list of manager specs.

    @raise ValueError: for a bad spec, or a name or address given twice.
    """
    specs = tuple(ManagerSpec.fromString(item) for item in text.replace(",", " ").split())
    names = set()
    addresses = set()
    for spec in specs:
        if spec.name in names:
            raise ValueError("manager %r is named twice" % (spec.name,))
        if spec.address() in addresses:
            raise ValueError("two managers at %s" % (str(spec).partition("=")[2],))
        names.add(spec.name)
        addresses.add(spec.address())
    return specs
