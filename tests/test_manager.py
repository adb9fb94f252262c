"""
Unit tests of the subscription manager: SUBSCRIBE, PUBLISH and NOTIFY with
a Clock, a fake network and the in-memory store.
"""

from __future__ import annotations

from presence.sip.message import Request, Response
from tests.harness import PUBLISHER, Harness, pidf, publish, subscribe


def test_subscribeThenNotify():
    h = Harness()
    h.receive(subscribe(Expires="600"))
    sent = h.take()
    assert [type(m) for m in sent] == [Response, Request]
    ok, notify = sent
    assert ok.code == 200
    assert ok.toAddr().tag
    assert ok.header("expires") == "600"
    assert ok.hasHeader("contact")
    assert notify.method == "NOTIFY"
    assert notify.header("subscription-state") == "active;expires=600"
    assert b"<basic>closed</basic>" in notify.body
    assert notify.fromAddr().tag == ok.toAddr().tag
    h.stop()


def test_publicationReachesWatcher():
    h = Harness()
    h.receive(subscribe())
    _, notify = h.take()
    h.answer(notify)
    h.receive(publish(), PUBLISHER)
    sent = h.take()
    ok = [m for m in sent if isinstance(m, Response)][0]
    assert ok.code == 200 and ok.header("sip-etag")
    notifies = [m for m in sent if isinstance(m, Request)]
    assert len(notifies) == 1
    assert b"<basic>open</basic>" in notifies[0].body
    assert notifies[0].cseq().number == notify.cseq().number + 1
    h.stop()
