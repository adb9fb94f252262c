"""
Listening addresses as operators write them: C{udp:5060},
C{tcp:5060:interface=127.0.0.1}, C{tls:5061:privateKey=key.pem:certKey=cert.pem},
C{ws:8080}, C{wss:8443:privateKey=key.pem:certKey=cert.pem} (SIP over
WebSocket, RFC 7118).

Twisted has no C{udp:} endpoint string, and SIP wants UDP and TCP on one
port, so this module parses the spec itself and binds with the reactor's
C{listenUDP}, C{listenTCP} and C{listenSSL}.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

TRANSPORTS = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "ws": "WS", "wss": "WSS"}
_SECURE = {"interface", "backlog", "privateKey", "certKey", "extraCertChain"}
_OPTIONS = {
    "UDP": {"interface"},
    "TCP": {"interface", "backlog"},
    "TLS": _SECURE,
    "WS": {"interface", "backlog"},
    "WSS": _SECURE,
}

#: Transports that share the port of the UDP listener when given port 0.
SAME_PORT_AS_UDP = ("TCP", "TLS")


class ListenError(ValueError):
    """
    A listen spec that cannot be used; the message says why in one line.
    """


class ListenSpec:
    """
    One listening socket to open.

    @ivar transport: C{"UDP"}, C{"TCP"}, C{"TLS"}, C{"WS"} or C{"WSS"}.
    @ivar port: the port; 0 picks a free one (for UDP, WS and WSS) or the
        port of the UDP listener on the same interface (for TCP and TLS).
    @ivar interface: the address to bind, C{""} for all IPv4 interfaces.
    @ivar options: the other C{key=value} options.
    """

    def __init__(self, transport: str, port: int, interface: str = "", options: Optional[Dict[str, str]] = None) -> None:
        self.transport = transport
        self.port = port
        self.interface = interface
        self.options = options or {}

    @classmethod
    def fromString(cls, text: str) -> ListenSpec:
        """
        @raise ListenError: for an unknown transport, a bad port, an unknown
            option, or TLS or WSS without its key and certificate.
        """
        parts = text.strip().split(":")
        transport = TRANSPORTS.get(parts[0].lower())
        if transport is None:
            raise ListenError("unknown transport %r in %r (use udp:, tcp:, tls:, ws: or wss:)" % (parts[0], text))
        if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) > 65535:
            raise ListenError("bad port in %r" % (text,))
        options: Dict[str, str] = {}
        # IPv6 interfaces contain colons; Twisted's own endpoint syntax
        # escapes them with backslashes, and so does this one.
        rest = ":".join(parts[2:]).replace("\\:", "\x00")
        for item in rest.split(":") if rest else []:
            key, eq, value = item.partition("=")
            if not eq or key not in _OPTIONS[transport]:
                raise ListenError("unknown option %r in %r" % (item.replace("\x00", ":"), text))
            options[key] = value.replace("\x00", ":")
        if _OPTIONS[transport] is _SECURE and not ("privateKey" in options and "certKey" in options):
            raise ListenError("%s: needs privateKey= and certKey= in %r" % (parts[0].lower(), text))
        interface = options.pop("interface", "")
        return cls(transport, int(parts[1]), interface, options)

    def key(self) -> Tuple[str, str, int]:
        return (self.transport, self.interface, self.port)

    def __str__(self) -> str:
        text = "%s:%d" % (self.transport.lower(), self.port)
        if self.interface:
            text += ":interface=" + self.interface.replace(":", "\\:")
        for key, value in self.options.items():
            text += ":%s=%s" % (key, value)
        return text

    def __repr__(self) -> str:
        return "ListenSpec(%r)" % (str(self),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListenSpec) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))
