"""
Registration-derived presence behind a dispatcher, with real processes
(the cluster of L{tests.test_cluster_integration}: a dispatcher in front of
managers sharing PostgreSQL): a user agent that registers over its own
TCP or WebSocket connection to the dispatcher and then closes it is shown
offline to its watcher within two seconds, not when its binding expires.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Optional

import pytest

from presence.sip.message import Response
from presence.sip.parser import StreamFramer, parseMessage
from tests.sipclient import WSClient, newRequest
from tests.test_cluster_integration import DISPATCHER, Agents, _startCluster, database  # noqa: F401

NOTICE_WITHIN = 2.0


@pytest.fixture
def hashCluster(tmp_path, database):
    """
    A cluster whose dispatcher (also on WS) sends an AOR's REGISTERs and
    its watchers' SUBSCRIBEs to the same manager, which derives presence
    from the registration.
    """
    yield from _startCluster(tmp_path, database, listen=["ws:0:interface=" + DISPATCHER], policy="hash")


class TCPUser:
    """
    A user agent on a TCP connection of its own to the dispatcher.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((DISPATCHER, port), timeout=10, source_address=("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()

    def register(self, aor: str) -> Response:
        request = newRequest("REGISTER", "sip:example.test", self.port, "TCP", fromURI=aor, Expires="600")
        request.setHeader("To", "<%s>" % (aor,))
        self.sock.sendall(request.toBytes())
        while True:
            data = self.sock.recv(65536)
            assert data, "the dispatcher closed the connection"
            for item in self.framer.dataReceived(data):
                if isinstance(item, bytes):
                    message = parseMessage(item, stream=True)
                    if isinstance(message, Response) and message.code >= 200:
                        return message

    def close(self) -> None:
        self.sock.close()


class WSUser:
    """
    A user agent on a WebSocket connection of its own to the dispatcher.
    """

    def __init__(self, port: int) -> None:
        self.client = WSClient(port, timeout=10, host=DISPATCHER)

    def register(self, aor: str) -> Response:
        request = newRequest("REGISTER", "sip:example.test", self.client.port, "WS", fromURI=aor, Expires="600")
        request.setHeader("To", "<%s>" % (aor,))
        self.client.send(request)
        while True:
            response = self.client.receive()
            if response.code >= 200:
                return response

    def close(self) -> None:
        self.client.close()


def _basic(agents: Agents, dialog) -> Optional[str]:
    latest = agents.latest(dialog)
    if latest is None:
        return None
    found = re.findall(rb"<basic>(\w+)</basic>", latest.body or b"")
    return found[0].decode() if found else None


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_closedConnectionShowsTheUserOfflineAtOnce(hashCluster, transport):
    """
    A watcher subscribes to bob; bob registers over TCP (or WS) through
    the dispatcher and is shown open; he closes the connection, with ten
    minutes left on his binding: his watcher is notified closed within
    two seconds.
    """
    cluster = hashCluster
    agents = Agents(cluster.dispatcher.ports["UDP"])
    presentity = "sip:bob-%s@example.test" % (transport,)
    user = None
    try:
        callId = agents.subscribe(presentity, "sip:watcher@example.test")
        agents.waitUntil(lambda: callId in agents.ok, 10, "the SUBSCRIBE's 200")
        dialog = agents.dialogOf(callId)
        agents.waitUntil(lambda: _basic(agents, dialog) == "closed", 10, "the first NOTIFY, closed")

        user = TCPUser(cluster.dispatcher.ports["TCP"]) if transport == "tcp" else WSUser(cluster.dispatcher.ports["WS"])
        ok = user.register(presentity)
        assert ok.code == 200, ok
        assert "expires=600" in (ok.header("contact") or "")
        agents.waitUntil(lambda: _basic(agents, dialog) == "open", 10, "the NOTIFY of the registration, open")

        user.close()
        closedAt = time.monotonic()
        agents.waitUntil(lambda: _basic(agents, dialog) == "closed", NOTICE_WITHIN, "the NOTIFY of the closed connection")
        elapsed = time.monotonic() - closedAt
        assert elapsed < NOTICE_WITHIN
        user = None
    finally:
        if user is not None:
            user.close()
        agents.close()
