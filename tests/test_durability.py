"""
C{kill -9} of a loaded server loses nothing it answered 200 for, on SQLite
and on PostgreSQL; after a restart, subscriptions made before the crash are
refreshed in their dialogs.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import sqlalchemy as sa

from presence.sip.message import Request, Response
from presence.sip.parser import parseMessage
from tests.conftest import postgresSchema
from tests.serverprocess import ServerProcess
from tests.sipclient import newRequest

READY = "Subscription manager"
PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="t"><status><basic>open</basic></status></tuple></presence>'
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield "sqlite:///%s" % (tmp_path / "presence.sqlite",)
        return
    with postgresSchema("kill") as url:
        yield url


def _start(workdir: str, database: str, port: int = 0) -> ServerProcess:
    # This load client does not authenticate: example.test is trusted.
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        f.write("[billing]\nno_auth_domains = example.test\n")
    return ServerProcess(
        workdir,
        [
            "--config", config,
            "--listen", "udp:%d:interface=127.0.0.1" % (port,),
            "--listen", "tcp:%d:interface=127.0.0.1" % (port,),
            "--domain", "example.test",
            "--database", database,
        ],
    ).start(READY)


class LoadClient:
    """
    Sends SUBSCRIBEs and PUBLISHes over UDP without waiting for each
    answer, and remembers which were answered 200.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.server = ("127.0.0.1", port)
        self.port = self.sock.getsockname()[1]
        self.pending: Dict[str, Request] = {}
        self.subscribed: Dict[str, Tuple[Request, Response]] = {}
        self.etags: Set[str] = set()

    def sendBatch(self, count: int) -> None:
        for i in range(count):
            aor = "sip:user%d@example.test" % (len(self.pending) + i,)
            if i % 2:
                request = newRequest(
                    "PUBLISH", aor, self.port, body=(PIDF % (aor,)).encode(), Event="presence",
                    Content_Type="application/pidf+xml", fromURI=aor,
                )
            else:
                request = newRequest("SUBSCRIBE", aor, self.port, Event="presence", Expires="3600")
            self.pending[request.callId] = request  # type: ignore[index]
            self.sock.sendto(request.toBytes(), self.server)

    def drain(self, timeout: float) -> int:
        """
        Read answers until none arrives for C{timeout} seconds.
        """
        count = 0
        while select.select([self.sock], [], [], timeout)[0]:
            message = parseMessage(self.sock.recv(65535))
            if not isinstance(message, Response) or message.code != 200:
                continue
            request = self.pending.get(message.callId)  # type: ignore[arg-type]
            if request is None:
                continue
            count += 1
            if request.method == "SUBSCRIBE":
                self.subscribed[request.callId] = (request, message)  # type: ignore[index]
            else:
                self.etags.add(message.header("sip-etag"))  # type: ignore[arg-type]
        return count

    def close(self) -> None:
        self.sock.close()


def _stored(database: str) -> Tuple[Set[str], Set[str]]:
    engine = sa.create_engine(database)
    try:
        with engine.connect() as conn:
            calls = {row[0] for row in conn.execute(sa.text("SELECT call_id FROM subscriptions"))}
            etags = {row[0] for row in conn.execute(sa.text("SELECT etag FROM publications"))}
    finally:
        engine.dispose()
    return calls, etags


def test_kill9LosesNothingAcknowledged(tmp_path, database):
    workdir = str(tmp_path)
    server = _start(workdir, database)
    port = server.ports["UDP"]
    client = LoadClient(port)
    try:
        deadline = time.monotonic() + 60
        while len(client.subscribed) + len(client.etags) < 600 and time.monotonic() < deadline:
            client.sendBatch(100)
            client.drain(0.05)
        # The last batch is in flight when the process dies: large enough
        # that a fast server is still working through it.
        client.sendBatch(1000)
        server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        server.process.wait(10)  # type: ignore[union-attr]
        client.drain(0.2)
        server.stop()
        assert len(client.subscribed) >= 300, server.log()
        assert len(client.etags) >= 300, server.log()
        # It died under load: some requests were never answered.
        assert len(client.pending) > len(client.subscribed) + len(client.etags)

        calls, etags = _stored(database)
        assert set(client.subscribed) <= calls
        assert client.etags <= etags

        # Restarted on the same port, it serves the same dialogs.
        restarted = _start(workdir, database, port)
        try:
            request, ok = next(iter(client.subscribed.values()))
            refresh = newRequest("SUBSCRIBE", request.uri, client.port, Event="presence", Expires="600")
            refresh.setHeader("Call-ID", request.callId)  # type: ignore[arg-type]
            refresh.setHeader("From", request.header("from"))  # type: ignore[arg-type]
            refresh.setHeader("To", ok.header("to"))  # type: ignore[arg-type]
            refresh.setHeader("CSeq", "2 SUBSCRIBE")
            client.pending.clear()
            client.sock.sendto(refresh.toBytes(), client.server)
            answers: List[int] = []
            while select.select([client.sock], [], [], 5)[0]:
                message = parseMessage(client.sock.recv(65535))
                if isinstance(message, Response) and message.callId == request.callId:
                    answers.append(message.code)
                    break
            assert answers == [200], restarted.log()
        finally:
            restarted.stopCleanly()
    finally:
        client.close()
        server.stop()


def test_sigtermDrainsAndKeepsSubscriptions(tmp_path):
    """
    SIGTERM under load: the process exits within a few seconds, answers
    what it took, stores what it answered, and terminates no subscription.
    """
    database = "sqlite:///%s" % (tmp_path / "presence.sqlite",)
    server = _start(str(tmp_path), database)
    client = LoadClient(server.ports["UDP"])
    notifies: List[str] = []
    try:
        client.sendBatch(300)
        client.drain(0.2)
        client.sendBatch(200)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while select.select([client.sock], [], [], 1.0)[0]:
            message = parseMessage(client.sock.recv(65535))
            if isinstance(message, Request):
                notifies.append(message.header("subscription-state") or "")
            elif message.code == 200:  # type: ignore[union-attr]
                request = client.pending.get(message.callId)  # type: ignore[arg-type]
                if request is not None and request.method == "SUBSCRIBE":
                    client.subscribed[request.callId] = (request, message)  # type: ignore[index,assignment]
                elif request is not None:
                    client.etags.add(message.header("sip-etag"))  # type: ignore[arg-type]
        server.process.wait(10)  # type: ignore[union-attr]
        assert time.monotonic() - started < 5
        server.stopCleanly()
        calls, etags = _stored(database)
        assert set(client.subscribed) <= calls
        assert client.etags <= etags
        assert len(calls) >= len(client.subscribed) >= 150
        assert not [state for state in notifies if state.startswith("terminated")]
    finally:
        client.close()
        server.stop()
