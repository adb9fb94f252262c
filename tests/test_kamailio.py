"""
A real proxy publishing BLF state: Kamailio (Debian's 5.6, see
L{tests.kamailio}) with dialog + pua + pua_dialoginfo, and a call placed
through it between two sipp user agents.

First what Kamailio sends, caught by a PUBLISH sink in the test: every
document it publishes must pass our dialog-info parser, with the states
pua_dialoginfo reports for the caller (trying, early, confirmed,
terminated) and the callee (early, confirmed, terminated).
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, List, Tuple

import pytest

from presence.dialoginfo import parseDialogInfo
from presence.sip.message import Request, Response
from presence.sip.parser import parseMessage
from tests.conftest import requireTool
from tests.kamailio import Kamailio, placeCall, requireKamailio


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
