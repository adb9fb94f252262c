"""
A real proxy publishing BLF state: Kamailio (Debian's 5.6, see
L{tests.kamailio}) with dialog + pua + pua_dialoginfo, and a call placed
through it between two sipp user agents.

First what Kamailio sends, caught by a PUBLISH sink in the test: every
document it publishes must pass our dialog-info parser, with the states
pua_dialoginfo reports for the caller (trying, early, confirmed,
terminated) and the callee (early, confirmed, terminated). Then Kamailio
publishing to a real server, and a busy lamp subscribed to the callee.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable, List, Tuple

import pytest

from presence.dialoginfo import DialogInfoDocument, parseDialogInfo
from presence.sip.message import Request, Response
from presence.sip.parser import parseMessage
from tests.conftest import requireTool
from tests.kamailio import Kamailio, placeCall, requireKamailio
from tests.serverprocess import ServerProcess
from tests.sipclient import UDPClient, answer, newRequest

BOB = "sip:bob@example.test"


class PublishSink:
    """
    A UDP socket that answers every PUBLISH 200 with an entity tag and
    keeps (request URI, event, body) of each.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.published: List[Tuple[str, str, bytes]] = []
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        count = 0
        while not self._stopped.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            request = parseMessage(data)
            if not isinstance(request, Request) or request.method != "PUBLISH":
                continue
            count += 1
            with self._changed:
                self.published.append((request.uri, request.header("Event") or "", request.body))
                self._changed.notify_all()
            response = Response.forRequest(
                request, 200, toTag="sink", headers=[("SIP-ETag", "e%d" % count), ("Expires", "120")]
            )
            self.sock.sendto(response.toBytes(), source)

    def waitUntil(self, predicate: Callable[[List[Tuple[str, str, bytes]]], bool], timeout: float = 20.0) -> None:
        """
        Wait until what was published satisfies C{predicate}.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.published), timeout):
                raise AssertionError("never published as expected: %r" % (self.published,))

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def tools() -> Tuple[str, str]:
    return requireKamailio(), requireTool("sipp")


def test_kamailioPublicationsParse(tmp_path: Any, tools: Tuple[str, str]) -> None:
    kamailioPath, sipp = tools
    sink = PublishSink()
    kamailio = Kamailio(kamailioPath, str(tmp_path), sink.port)
    try:
        kamailio.start()
        placeCall(sipp, str(tmp_path), kamailio)
        # The terminated PUBLISHes go out when the BYE's 200 passes.
        sink.waitUntil(lambda published: sum(b"terminated" in p[2] for p in published) >= 2)
    finally:
        kamailio.stop()
        sink.close()
    states = {"sip:alice@example.test": [], "sip:bob@example.test": []}  # type: dict
    callIds = set()
    for uri, event, body in sink.published:
        assert event == "dialog"
        document = parseDialogInfo(body, uri)
        assert document.state == "full"
        (dialog,) = document.dialogs
        callIds.add(dialog.callId)
        assert b"<local>" in body and b"<remote>" in body
        states[uri].append((dialog.direction, dialog.state))
    assert len(callIds) == 1, callIds
    assert states["sip:alice@example.test"] == [
        ("initiator", "trying"),
        ("initiator", "early"),
        ("initiator", "confirmed"),
        ("initiator", "terminated"),
    ], kamailio.log()
    assert states["sip:bob@example.test"] == [
        ("recipient", "early"),
        ("recipient", "confirmed"),
        ("recipient", "terminated"),
    ]


def test_watcherSeesKamailioCall(tmp_path: Any, tools: Tuple[str, str]) -> None:
    """
    Kamailio publishes to our server; a lamp watching bob sees his phone
    ring (early), the call answered (confirmed) and hung up (terminated),
    each NOTIFY one version more than the last, the callee's dialog with
    Kamailio's call-id and targets for pickup.
    """
    kamailioPath, sipp = tools
    workdir = str(tmp_path)
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        # Kamailio's pua answers no challenge: its users' domain is
        # trusted (the network between the proxy and us). It publishes a
        # terminated dialog for 11 s.
        f.write(
            "[manager]\nnotify_min_interval = 0\npublish_min_expires = 10\n"
            "[billing]\nno_auth_domains = example.test\n"
        )
    server = ServerProcess(
        workdir,
        ["--config", config, "--listen", "udp:0:interface=127.0.0.1", "--domain", "example.test",
         "--database", "sqlite:///" + os.path.join(workdir, "presence.sqlite")],
    ).start("Subscription manager")
    kamailio = Kamailio(kamailioPath, workdir, server.ports["UDP"])
    watcher = UDPClient(server.ports["UDP"], timeout=20.0)
    try:
        kamailio.start()
        watcher.send(newRequest(
            "SUBSCRIBE", BOB, watcher.port, "UDP", Event="dialog", Expires="300",
            Accept="application/dialog-info+xml", fromURI="sip:carol@example.test",
        ))
        assert watcher.receive().code == 200
        _, first = _dialogNotify(watcher)
        assert (first.version, first.dialogs) == (0, ())
        errors: List[BaseException] = []

        def call() -> None:
            try:
                placeCall(sipp, workdir, kamailio)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        seen = []
        versions = [first.version]
        while not seen or seen[-1][1] != "terminated":
            notify, document = _dialogNotify(watcher)
            versions.append(document.version)
            for dialog in document.dialogs:
                if not seen or seen[-1] != (dialog.callId, dialog.state):
                    seen.append((dialog.callId, dialog.state))
                    assert dialog.direction == "recipient" and dialog.callId
                    # The caller's target, for pickup.
                    assert b'<target uri="sip:alice@127.0.0.1:' in notify.body
        caller.join(60)
        assert not errors, errors
        assert [state for _, state in seen] == ["early", "confirmed", "terminated"], seen
        assert len({callId for callId, _ in seen}) == 1
        assert versions == list(range(len(versions))), versions
    finally:
        watcher.close()
        kamailio.stop()
        server.stopCleanly()


def _dialogNotify(client: UDPClient) -> Tuple[Request, DialogInfoDocument]:
    """
    The next NOTIFY, answered, and its dialog-info document.
    """
    while True:
        message = client.receiveMessage()
        if isinstance(message, Request) and message.method == "NOTIFY":
            client.send(answer(message))
            assert message.header("content-type") == "application/dialog-info+xml"
            return message, parseDialogInfo(message.body, BOB)
