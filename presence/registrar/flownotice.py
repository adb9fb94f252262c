"""
The dispatcher's "flow closed" notice: how a manager learns that the
TCP, TLS or WebSocket connection a REGISTER came over, held by a
dispatcher in front of it, has closed.

A dispatcher that relays a REGISTER received over a connection puts its
own Path (RFC 3327) on top, the same signed URI as its Record-Route
(L{presence.dispatcher.route}): its C{f} parameter names the connection
as C{boot.token}, unique across dispatchers and runs.  The registrar keeps
that name as the binding's flow, as it keeps the token of a connection of
its own.  When the connection closes, the dispatcher sends every manager
it relayed a REGISTER of that connection to one request::

    FLOWCLOSED sip:127.0.0.3:5060 SIP/2.0
    Closed-Flow: 3fa2c1d0.f1a, 3fa2c1d0.f2c
    Closed-Flow-Auth: 9a0c...(24 hex digits)

and the registrar drops the bindings of those flows at once, as it does
when a connection of its own closes.  A dedicated method, not an OPTIONS
or NOTIFY with a special header: the dispatcher forwards only
SUBSCRIBE, PUBLISH, NOTIFY and REGISTER and answers any other method
itself (501), so no user agent's request reaches a manager as a notice
through it.

C{Closed-Flow-Auth} is an HMAC-SHA256 (96 bits) of the flow names with
the cluster's C{[dispatcher] secret}: a user agent that reaches a manager
directly cannot end another's registrations.  No timestamp or nonce is
needed: a connection that has closed never opens again under the same
name, so replaying a notice removes nothing that the original did not.
"""

from __future__ import annotations

import hmac
import re
from hashlib import sha256
from typing import List, Sequence

from presence.sip.headers import HeaderError, NameAddr
from presence.sip.message import Request
from presence.sip.uri import SipURI, URIError, parseURI

METHOD = "FLOWCLOSED"
FLOWS_HEADER = "Closed-Flow"
AUTH_HEADER = "Closed-Flow-Auth"

#: Flow names one notice carries at most: a mass disconnect is sent in
#: requests of this many, each well under a UDP datagram.
MAX_FLOWS = 32

_FLOW = re.compile(r"[0-9a-f]{8}\.f[0-9a-f]{1,16}\Z").match
_MAC = re.compile(r"[0-9a-f]{24}\Z").match
_STREAMS = frozenset(["tcp", "tls", "ws", "wss"])


class NoticeError(ValueError):
    """
    A notice that is malformed (400) or not signed with our secret (403).

    @ivar code: the SIP status to answer.
    """

    def __init__(self, code: int, reason: str) -> None:
        ValueError.__init__(self, reason)
        self.code = code


def isRelayedFlow(name: str) -> bool:
    """
    Whether a binding's flow names a dispatcher's connection (C{boot.token})
    rather than one of this process.
    """
    return _FLOW(name) is not None


def pathFlow(request: Request) -> str:
    """
    The dispatcher connection named by the top Path of a relayed REGISTER,
    or C{""} when it has none (UDP, or no dispatcher of ours in front).
    """
    paths = request.headerValues("path")
    if not paths:
        return ""
    try:
        uri = parseURI(NameAddr.fromString(paths[0]).uri)
    except (HeaderError, URIError):
        return ""
    if not isinstance(uri, SipURI) or (uri.params.get("t") or "").lower() not in _STREAMS:
        return ""
    flow = uri.params.get("f") or ""
    return flow if _FLOW(flow) else ""


class NoticeSigner:
    """
    Signs and checks the flow names of a notice with the cluster secret.
    """

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the notice secret must not be empty")
        self._secret = secret

    def sign(self, flows: Sequence[str]) -> str:
        # A label of its own, so that no other MAC made with this secret
        # (the Record-Route's) is ever a valid notice signature.
        message = ("flow-closed\x00" + ",".join(flows)).encode("ascii")
        return hmac.new(self._secret, message, sha256).hexdigest()[:24]

    def notice(self, uri: str, flows: Sequence[str]) -> Request:
        """
        A notice to C{uri} of C{flows} closing, without the headers the
        sender adds for its transaction (Via, From, To, Call-ID, CSeq).
        """
        request = Request(METHOD, uri)
        request.setHeader("Max-Forwards", "70")
        request.setHeader(FLOWS_HEADER, ", ".join(flows))
        request.setHeader(AUTH_HEADER, self.sign(flows))
        return request

    def read(self, request: Request) -> List[str]:
        """
        The flow names of a notice whose signature is ours.

        @raise NoticeError: malformed, or not signed with our secret.
        """
        flows = [
            flow.strip() for value in request.headerValues(FLOWS_HEADER) for flow in value.split(",")
        ]
        if not flows or len(flows) > MAX_FLOWS or not all(_FLOW(flow) for flow in flows):
            raise NoticeError(400, "Bad Closed-Flow")
        mac = (request.header(AUTH_HEADER) or "").strip().lower()
        if _MAC(mac) is None or not hmac.compare_digest(mac, self.sign(flows)):
            raise NoticeError(403, "Bad Closed-Flow-Auth")
        return flows
