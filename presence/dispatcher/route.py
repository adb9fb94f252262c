"""
The dispatcher's Record-Route: who owns a dialog and which flow leads to
its user agent, written into the route itself and signed.

A dispatcher that record-routes a SUBSCRIBE puts this URI in the dialog's
route set::

    <sip:192.0.2.1:5060;transport=tcp;lr;m=m2;t=tcp;f=3fa2c1d0.f1a;s=0b7e...>

C{m} names the manager that took the dialog, C{t} and C{f} the flow to the
user agent (RFC 5626 §5.2 in spirit): for UDP its source address and port
(C{f=198.51.100.7~40000}, the C{rport} address; C{:} of IPv6 written C{-}),
for TCP, TLS, WS and WSS the dispatcher's boot id and connection token.  Every
in-dialog request comes back with it: the user agent's refreshes go to
manager C{m}, the manager's NOTIFYs go down flow C{f}.  No table is kept,
so nothing is lost when the dispatcher restarts, and any number of
dispatchers can share the managers.

C{s} is an HMAC-SHA256 (truncated to 96 bits) over the other three with the
dispatcher's secret.  Without it a user agent could put a route of its own
making into its SUBSCRIBE and have the dispatcher aim NOTIFYs at a third
party's address or TCP connection.  The boot id makes the connection tokens
of an earlier run (which the next run reuses) fail as closed flows instead
of reaching whoever holds that token now.
"""

from __future__ import annotations

import hmac
import re
from hashlib import sha256
from typing import Dict, Optional

from twisted.internet.abstract import isIPAddress, isIPv6Address

from presence.sip.target import Target

_MANAGER = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z").match
_STREAM_FLOW = re.compile(r"([0-9a-f]{8})\.(f[0-9a-f]{1,16})\Z").match
_MAC = re.compile(r"[0-9a-f]{24}\Z").match
_TRANSPORTS = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "ws": "WS", "wss": "WSS"}


class RouteError(ValueError):
    """
    A route that carries our parameters but is malformed or not signed by
    our secret: forged, or from a dispatcher with another secret.
    """


class RouteInfo:
    """
    What a verified route says.

    @ivar manager: the name of the manager that owns the dialog.
    @ivar transport: C{"UDP"}, C{"TCP"}, C{"TLS"}, C{"WS"} or C{"WSS"}: the
        user agent's flow.
    @ivar host: for UDP, the user agent's address; else C{""}.
    @ivar port: for UDP, its port; else 0.
    @ivar boot: for the stream transports, the boot id of the dispatcher run that
        holds the connection; else C{""}.
    @ivar token: for the stream transports, the connection's flow token;
        else C{""}.
    """

    __slots__ = ("manager", "transport", "host", "port", "boot", "token")

    def __init__(
        self, manager: str, transport: str, host: str = "", port: int = 0, boot: str = "", token: str = ""
    ) -> None:
        self.manager = manager
        self.transport = transport
        self.host = host
        self.port = port
        self.boot = boot
        self.token = token

    def __repr__(self) -> str:
        flow = "%s:%d" % (self.host, self.port) if self.transport == "UDP" else self.boot + "." + self.token
        return "<RouteInfo m=%s %s %s>" % (self.manager, self.transport, flow)


class RouteCodec:
    """
    Writes and checks the dispatcher's route parameters.

    @ivar boot: this run's boot id, 8 hex digits.
    """

    def __init__(self, secret: bytes, boot: str) -> None:
        """
        @param secret: the HMAC key, shared by dispatchers that must accept
            each other's routes (or survive their own restarts).
        @param boot: 8 lower-case hex digits, new for every run.
        """
        if not secret:
            raise ValueError("the route secret must not be empty")
        if re.match(r"[0-9a-f]{8}\Z", boot) is None:
            raise ValueError("boot id must be 8 hex digits")
        self._secret = secret
        self.boot = boot

    def _mac(self, manager: str, transport: str, flow: str) -> str:
        message = ("%s\x00%s\x00%s" % (manager, transport, flow)).encode("utf-8")
        return hmac.new(self._secret, message, sha256).hexdigest()[:24]

    def flowOf(self, source: Target) -> str:
        """
        The C{f} value for the flow a request came in on.
        """
        if source.transport == "UDP":
            return source.host.strip("[]").replace(":", "-") + "~" + str(source.port)
        if source.flow is None:
            raise ValueError("a stream source without a flow token")
        return self.boot + "." + source.flow

    def params(self, manager: str, source: Target) -> str:
        """
        The parameters (C{;m=...;t=...;f=...;s=...}) naming C{manager} and
        the flow of C{source}.
        """
        if _MANAGER(manager) is None:
            raise ValueError("bad manager name %r" % (manager,))
        transport = source.transport.lower()
        flow = self.flowOf(source)
        return ";m=%s;t=%s;f=%s;s=%s" % (manager, transport, flow, self._mac(manager, transport, flow))

    def decode(self, params: Dict[str, Optional[str]]) -> RouteInfo:
        """
        Check and read the parameters of a route URI.

        @raise RouteError: when they are incomplete, malformed or not
            signed with our secret.
        """
        manager = params.get("m") or ""
        transport = (params.get("t") or "").lower()
        flow = params.get("f") or ""
        mac = (params.get("s") or "").lower()
        if (
            _MANAGER(manager) is None
            or transport not in _TRANSPORTS
            or not 0 < len(flow) <= 80
            or _MAC(mac) is None
        ):
            raise RouteError("Malformed route")
        if not hmac.compare_digest(mac, self._mac(manager, transport, flow)):
            raise RouteError("Bad route signature")
        kind = _TRANSPORTS[transport]
        if kind == "UDP":
            host, tilde, portText = flow.rpartition("~")
            host = host.replace("-", ":")
            if (
                not tilde
                or not (isIPAddress(host) or isIPv6Address(host))
                or not portText.isdigit()
                or not portText.isascii()
                or not 0 < int(portText) < 65536
            ):
                raise RouteError("Malformed route flow")
            return RouteInfo(manager, kind, host=host, port=int(portText))
        match = _STREAM_FLOW(flow)
        if match is None:
            raise RouteError("Malformed route flow")
        return RouteInfo(manager, kind, boot=match.group(1), token=match.group(2))
