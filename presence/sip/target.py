"""
Where a message came from or goes to: a transport, an address and, for
connection-oriented transports, the flow (connection) it travels on.
"""

from __future__ import annotations

from typing import Optional


class TransportError(Exception):
    """
    A message could not be handed to the network: an unknown or closed flow,
    an unsupported transport, a socket error.  A client transaction treats it
    as a 503 (RFC 3261 §8.1.3.1); a relay answers 430 Flow Failed.
    """


class Target:
    """
    A transport endpoint.

    @ivar transport: C{"UDP"}, C{"TCP"}, C{"TLS"}, C{"WS"} or C{"WSS"}.
    @ivar host: an IP address (or host name for outgoing requests).
    @ivar port: the port.
    @ivar flow: for the connection transports, the token of the connection a message came
        in on or must go out on; L{None} for UDP, or to open a new
        connection.
    """

    __slots__ = ("transport", "host", "port", "flow")

    def __init__(self, transport: str, host: str, port: int, flow: Optional[str] = None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.flow = flow

    @property
    def reliable(self) -> bool:
        """
        Whether the transport delivers reliably (no retransmissions needed).
        """
        return self.transport != "UDP"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return (self.transport, self.host, self.port, self.flow) == (
            other.transport,
            other.host,
            other.port,
            other.flow,
        )

    def __hash__(self) -> int:
        return hash((self.transport, self.host, self.port, self.flow))

    def __repr__(self) -> str:
        flow = "" if self.flow is None else " flow=%s" % (self.flow,)
        return "<Target %s %s:%d%s>" % (self.transport, self.host, self.port, flow)
