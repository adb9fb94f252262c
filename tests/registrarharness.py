"""
A registrar beside the subscription manager of L{tests.harness.Harness}:
the same SIP core, store, clock and authentication gate, wired as
L{presence.manager.service.ManagerService} wires them.  Also user agents on
TCP connections (a real L{SIPStreamProtocol} over a C{StringTransport}),
so that connections can close under the registrar.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from presence.registrar import Registrar
from presence.sip.message import Message, Request, Response
from presence.sip.parser import DEFAULT_LIMITS, PING, StreamFramer, parseMessage
from presence.sip.target import Target
from presence.sip.transport import SIPStreamProtocol
from tests.harness import PUBLISHER, Harness

BOB = "sip:bob@example.test"
ALICE = "sip:alice@example.test"
BOB_CONTACT = "sip:bob@192.0.2.20:5060"


class RegistrarHarness(Harness):
    """
    A manager and a registrar under test.
    """

    def __init__(self, store: Optional[Any] = None, noticeSecret: bytes = b"", **settings: Any) -> None:
        """
        @param noticeSecret: the cluster secret that signs the
            dispatchers' notices of closed connections.
        """
        self.noticeSecret = noticeSecret
        Harness.__init__(self, store, **settings)
        self.registrar = self._newRegistrar()
        self.registrar.install()

    def _newRegistrar(self) -> Registrar:
        registrar = Registrar(
            self.core, self.store, self.config, self.clock, self.manager.gate, noticeSecret=self.noticeSecret
        )
        self.manager.followRegistrations(registrar)
        return registrar

    def restart(self) -> Any:
        """
        A new core, manager and registrar on the same store, loaded in the
        order the manager service uses: bindings first.
        """
        from presence.sip.core import SIPCore

        self.registrar.stop()
        self.manager.stop()
        self.core.transactions.stop()
        self.core = SIPCore(self.clock, advertisedHost="192.0.2.1")
        self.core.ports = {"UDP": 5060, "TCP": 5060}
        self.core.udp = self.network  # type: ignore[assignment]
        self.manager = self._newManager()
        self.registrar = self._newRegistrar()
        self.registrar.load()
        self.manager.load()
        self.manager.install()
        self.registrar.install()
        return self.manager

    def stop(self) -> None:
        self.registrar.stop()
        Harness.stop(self)

    def registered(self, request: Request, source: Target = PUBLISHER) -> Any:
        """
        Send a REGISTER and expect its one response, a 200.

        @return: the 200 and the NOTIFYs sent meanwhile (unanswered).
        """
        self.receive(request, source)
        responses, notifies = self.split()
        assert [r.code for r in responses] == [200], responses
        return responses[0], notifies

    def answerAll(self, notifies: Sequence[Request], source: Target) -> None:
        for notify in notifies:
            self.answer(notify, source=source)


def register(
    aor: str = BOB,
    contacts: Sequence[str] = ("<%s>" % (BOB_CONTACT,),),
    source: Target = PUBLISHER,
    callId: Optional[str] = None,
    cseq: int = 1,
    fromTag: Optional[str] = None,
    uri: str = "sip:example.test",
    **headers: str,
) -> Request:
    """
    A REGISTER of C{contacts} (Contact values, as written) for C{aor}, from
    C{source}; further headers by keyword, underscores for dashes.
    """
    r = Request("REGISTER", uri)
    r.addHeader(
        "Via",
        "SIP/2.0/%s %s:%d;branch=z9hG4bK%s;rport" % (source.transport, source.host, source.port, os.urandom(6).hex()),
    )
    r.addHeader("Max-Forwards", "70")
    r.addHeader("From", "<%s>;tag=%s" % (aor, fromTag or os.urandom(4).hex()))
    r.addHeader("To", "<%s>" % (aor,))
    r.addHeader("Call-ID", callId or "reg-" + aor[4:].split("@")[0])
    r.addHeader("CSeq", "%d REGISTER" % (cseq,))
    for value in contacts:
        r.addHeader("Contact", value)
    for name, value in headers.items():
        r.setHeader(name.replace("_", "-"), value)
    return r


class StreamPeer:
    """
    A user agent on one TCP (or TLS) connection to the core: what it sends
    goes through the core's real stream protocol, and what the core writes
    back is parsed from the transport.
    """

    def __init__(self, core: Any, host: str = "192.0.2.30", port: int = 40000, transport: str = "TCP") -> None:
        self.protocol = SIPStreamProtocol(core, transport, DEFAULT_LIMITS)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.protocol.makeConnection(self.transport)
        self.framer = StreamFramer()
        self.host = host
        self.port = port
        self.name = transport

    @property
    def source(self) -> Target:
        return self.protocol.source()

    @property
    def token(self) -> Optional[str]:
        return self.protocol.token

    def send(self, message: Message) -> None:
        self.protocol.dataReceived(message.toBytes())

    def take(self) -> List[Message]:
        data = self.transport.value()
        self.transport.clear()
        return [parseMessage(item, stream=True) for item in self.framer.dataReceived(data) if item is not PING]  # type: ignore[arg-type]

    def split(self) -> Any:
        sent = self.take()
        return (
            [m for m in sent if isinstance(m, Response)],
            [m for m in sent if isinstance(m, Request)],
        )

    def close(self) -> None:
        """
        The connection closes (the peer went away).
        """
        self.protocol.connectionLost(None)
