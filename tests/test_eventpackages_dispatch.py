"""
The dialog, message-summary and presence.winfo packages end to end:
through a dispatcher in front of three real manager processes (the
cluster of L{tests.test_cluster_dispatch}), over UDP and TCP, through its
dispatcher A, whose hash policy takes every request about one resource
to one manager. (Replication of these packages' publications between
managers is in test_cluster_integration.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from presence.dialoginfo import parseDialogInfo
from presence.mwi import parseMessageSummary
from presence.winfo import parseWatcherinfo
from tests.sipclient import newRequest
from tests.test_cluster_dispatch import _agent, _notify, cluster  # noqa: F401 (the fixture)

DIALOG_INFO = "application/dialog-info+xml"
MWI = "application/simple-message-summary"
WINFO = "application/watcherinfo+xml"

CALL = (
    '<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" '
    'state="full" entity="%s"><dialog id="%s" call-id="%s" direction="recipient"><state>%s</state>'
    '<remote><identity>sip:carol@example.test</identity></remote></dialog></dialog-info>'
)


def _published(client: Any, transport: str, aor: str, event: str, contentType: str, body: bytes) -> None:
    client.send(newRequest(
        "PUBLISH", aor, client.port, transport, body=body, Event=event, Expires="120",
        Content_Type=contentType, fromURI=aor,
    ))
    response = client.receive()
    assert response.code == 200 and response.header("sip-etag"), response


def _subscribed(client: Any, transport: str, aor: str, event: str, accept: str, fromURI: str) -> Any:
    client.send(newRequest(
        "SUBSCRIBE", aor, client.port, transport, Event=event, Expires="300", Accept=accept, fromURI=fromURI,
    ))
    ok = client.receive()
    assert ok.code == 200, ok
    return _notify(client)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_dialogThroughDispatcher(cluster: Any, transport: str) -> None:  # noqa: F811
    aor = "sip:lamp-%s@example.test" % (transport.lower(),)
    watcher = _agent(cluster.dispatchers["A"], transport)
    publisher = _agent(cluster.dispatchers["A"], transport)
    try:
        first = _subscribed(watcher, transport, aor, "dialog", DIALOG_INFO, "sip:dave@example.test")
        document = parseDialogInfo(first.body, aor)
        assert (document.version, document.dialogs) == (0, ())
        for number, state in enumerate(("early", "confirmed", "terminated"), 1):
            _published(publisher, transport, aor, "dialog", DIALOG_INFO,
                       (CALL % (aor, "call1", "call1", state)).encode())
            notify = _notify(watcher)
            assert notify.header("content-type") == DIALOG_INFO
            document = parseDialogInfo(notify.body, aor)
            assert document.version == number
            assert [(d.id, d.state) for d in document.dialogs] == [("call1", state)]
    finally:
        watcher.close()
        publisher.close()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_messageSummaryThroughDispatcher(cluster: Any, transport: str) -> None:  # noqa: F811
    aor = "sip:mailbox-%s@example.test" % (transport.lower(),)
    phone = _agent(cluster.dispatchers["A"], transport)
    voicemail = _agent(cluster.dispatchers["A"], transport)
    try:
        phone.send(newRequest("SUBSCRIBE", aor, phone.port, transport, Event="message-summary",
                              Expires="300", Accept=MWI, fromURI="sip:dave@example.test"))
        assert phone.receive().code == 403
        first = _subscribed(phone, transport, aor, "message-summary", MWI, aor)
        assert parseMessageSummary(first.body).waiting is False
        _published(voicemail, transport, aor, "message-summary", MWI,
                   b"Messages-Waiting: yes\r\nVoice-Message: 3/0\r\n")
        summary = parseMessageSummary(_notify(phone).body)
        assert summary.waiting and summary.countsOf("voice-message") == (3, 0, None, None)
    finally:
        phone.close()
        voicemail.close()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_watcherInfoThroughDispatcher(cluster: Any, transport: str) -> None:  # noqa: F811
    aor = "sip:owner-%s@example.test" % (transport.lower(),)
    owner = _agent(cluster.dispatchers["A"], transport)
    watcher = _agent(cluster.dispatchers["A"], transport)
    try:
        first = parseWatcherinfo(_subscribed(owner, transport, aor, "presence.winfo", WINFO, aor).body)
        assert (first.version, first.state, first.lists[0].watchers) == (0, "full", ())
        _subscribed(watcher, transport, aor, "presence", "application/pidf+xml", "sip:dave@example.test")
        second = parseWatcherinfo(_notify(owner).body)
        assert (second.version, second.state) == (1, "partial")
        assert [(w.uri, w.status) for w in second.lists[0].watchers] == [("sip:dave@example.test", "active")]
    finally:
        owner.close()
        watcher.close()
