"""
Unit tests of the subscription manager: SUBSCRIBE, PUBLISH and NOTIFY with
a Clock, a fake network and the in-memory store (RFC 6665, RFC 3856,
RFC 3903, RFC 6446).

Every test drives time with the harness's L{Clock}; a L{HeldStore} shows
what happens before a store write commits and when it fails.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from presence.billing import db
from presence.config import Config, ConfigError
from presence.manager.state import CSEQ_BLOCK
from presence.pidf import composePidf, parsePidf
from presence.sip.message import Request, Response
from presence.sip.target import Target
from tests.harness import (
    PUBLISHER,
    WATCHER,
    Harness,
    HeldStore,
    pidf,
    publish,
    refresh,
    request,
    subscribe,
)

BOB = "sip:bob@example.test"
PIDF_TYPE = "application/pidf+xml"


# Helpers.


def presenceDoc(
    tuples: Tuple[Tuple[str, str], ...] = (("t1", "open"),),
    note: Optional[str] = None,
    entity: str = BOB,
) -> bytes:
    """
    A PIDF body with the given (tuple id, basic) pairs and an optional
    top-level note.
    """
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">' % (entity,)
    ]
    for tupleId, basic in tuples:
        parts.append('<tuple id="%s"><status><basic>%s</basic></status></tuple>' % (tupleId, basic))
    if note is not None:
        parts.append("<note>%s</note>" % (note,))
    parts.append("</presence>")
    return "".join(parts).encode("utf-8")


def basics(message: Request) -> List[str]:
    return [b.decode() for b in re.findall(rb"<basic>(\w+)</basic>", message.body)]


def tupleIds(message: Request) -> List[str]:
    return [b.decode() for b in re.findall(rb'<tuple id="([^"]+)"', message.body)]


def cseqOf(message: Request) -> int:
    return message.cseq().number


def branchOf(message: Request) -> str:
    return message.topVia().branch or ""


def assertNoState(h: Harness) -> None:
    """
    Nothing stored and nothing held in the manager's memory.
    """
    assert h.store.subscriptions == {}
    assert h.store.publications == {}
    m = h.manager
    assert m.subscriptions == {}
    assert len(m.dialogs) == 0
    assert m.publications == {}
    assert m.presentities == {}


def onlySubscription(h: Harness) -> Any:
    assert len(h.manager.subscriptions) == 1
    assert len(h.store.subscriptions) == 1
    return list(h.manager.subscriptions.values())[0]


def modify(h: Harness, etag: str, body: bytes, **kw: Any) -> Tuple[str, List[Request]]:
    return h.published(body=body, SIP_If_Match=etag, **kw)


@pytest.fixture
def make():
    """
    A factory of harnesses; each is stopped afterwards and must leave no
    delayed call behind (no leaked timer).
    """
    made: List[Harness] = []

    def factory(**kw: Any) -> Harness:
        h = Harness(**kw)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.stop()
        assert h.clock.getDelayedCalls() == []


# SUBSCRIBE: creating the dialog.


def test_subscribeThenNotify(make):
    h = make()
    sub = subscribe(Expires="600")
    h.receive(sub)
    sent = h.take()
    assert [type(m) for m in sent] == [Response, Request]
    ok, notify = sent
    assert ok.code == 200
    assert ok.toAddr().tag
    assert ok.header("expires") == "600"
    assert ok.hasHeader("contact")
    assert notify.method == "NOTIFY"
    assert notify.header("subscription-state") == "active;expires=600"
    assert notify.header("event") == "presence"
    assert notify.header("content-type") == PIDF_TYPE
    assert basics(notify) == ["closed"]
    assert b'entity="sip:bob@example.test"' in notify.body
    # The dialog: our tag, their tag, their Call-ID, their Contact.
    assert notify.fromAddr().tag == ok.toAddr().tag
    assert notify.toAddr().tag == sub.fromAddr().tag
    assert notify.callId == sub.callId
    assert notify.uri == "sip:alice@192.0.2.10:5060"
    record = list(h.store.subscriptions.values())[0]
    assert record.localTag == ok.toAddr().tag
    assert record.remoteTag == sub.fromAddr().tag
    assert record.expiresAt == h.clock.seconds() + 600
    assert record.watcher == "sip:alice@example.test"
    assert record.presentity == BOB


def test_publicationReachesWatcher(make):
    h = make()
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


@pytest.mark.parametrize(
    "asked, granted",
    [(None, 3600), ("600", 600), ("60", 60), ("7200", 7200), ("7201", 7200), ("9999999999", 7200)],
)
def test_expiresGranted(make, asked, granted):
    """
    Absent: the default; above the maximum: the maximum; else as asked.
    """
    h = make(minExpires=60, defaultExpires=3600, maxExpires=7200)
    sub = subscribe() if asked is None else subscribe(Expires=asked)
    if asked is None:
        sub.removeHeader("expires")
    h.receive(sub)
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert ok.header("expires") == str(granted)
    assert notify.header("subscription-state") == "active;expires=%d" % (granted,)
    assert onlySubscription(h).expiresAt == h.clock.seconds() + granted
    assert list(h.store.subscriptions.values())[0].expiresAt == h.clock.seconds() + granted


@pytest.mark.parametrize("asked", ["1", "59"])
def test_expiresTooShort(make, asked):
    h = make(minExpires=60)
    h.receive(subscribe(Expires=asked))
    (response,), notifies = h.split()
    assert response.code == 423
    assert response.header("min-expires") == "60"
    assert notifies == []
    assertNoState(h)


@pytest.mark.parametrize("event", [None, "conference", "presence.winfo.winfo", "", "presence;a b=c", "presence;=x"])
def test_subscribeBadEvent(make, event):
    h = make()
    sub = subscribe()
    if event is None:
        sub.removeHeader("event")
    else:
        sub.setHeader("Event", event)
    h.receive(sub)
    (response,), notifies = h.split()
    assert response.code == 489
    assert response.headerValues("allow-events") == ["presence", "dialog", "message-summary", "presence.winfo"]
    assert notifies == []
    assertNoState(h)


@pytest.mark.parametrize(
    "accept, code",
    [
        (None, 200),
        ("application/pidf+xml", 200),
        ("application/*", 200),
        ("*/*", 200),
        ("text/plain, application/pidf+xml;q=0.5", 200),
        ("Application/PIDF+XML", 200),
        ("text/plain", 406),
        ("application/xpidf+xml", 406),
    ],
)
def test_subscribeAccept(make, accept, code):
    h = make()
    sub = subscribe()
    if accept is None:
        sub.removeHeader("accept")
    else:
        sub.setHeader("Accept", accept)
    h.receive(sub)
    responses, notifies = h.split()
    assert [r.code for r in responses] == [code]
    if code == 406:
        assert responses[0].header("accept") == PIDF_TYPE
        assert notifies == []
        assertNoState(h)
    else:
        assert len(notifies) == 1


@pytest.mark.parametrize("method", ["SUBSCRIBE", "PUBLISH"])
def test_domainNotServed(make, method):
    h = make()
    if method == "SUBSCRIBE":
        h.receive(subscribe("sip:bob@elsewhere.test"))
    else:
        h.receive(publish("sip:bob@elsewhere.test", pidf("sip:bob@elsewhere.test")), PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 404
    assert notifies == []
    assertNoState(h)


# SUBSCRIBE: refresh, un-SUBSCRIBE, expiry.


def test_refresh(make):
    h = make()
    sub, ok, _ = h.subscribed(Expires="600")
    start = h.clock.seconds()
    h.clock.advance(500)
    h.receive(refresh(sub, ok, 2, Expires="600"))
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200
    assert ok2.header("expires") == "600"
    assert ok2.toAddr().tag == ok.toAddr().tag
    assert notify.header("subscription-state") == "active;expires=600"
    assert basics(notify) == ["closed"]
    record = list(h.store.subscriptions.values())[0]
    assert record.expiresAt == start + 1100
    assert record.remoteCSeq == 2
    assert sum(len(keys) for keys in h.manager.expiry._buckets.values()) == 1
    h.answer(notify)
    # Past the first expiry: still alive.
    h.clock.advance(200)
    assert h.take() == []
    assert len(h.store.subscriptions) == 1
    # Past the refreshed one: ended.
    h.clock.advance(401)
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=timeout"


def test_unsubscribe(make):
    h = make()
    h.published(body=presenceDoc())
    sub, ok, first = h.subscribed()
    h.receive(refresh(sub, ok, 2, Expires="0"))
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200
    assert ok2.header("expires") == "0"
    assert notify.header("subscription-state") == "terminated;reason=timeout"
    assert basics(notify) == ["open"]
    assert cseqOf(notify) > cseqOf(first)
    assert h.store.subscriptions == {}
    m = h.manager
    assert m.subscriptions == {} and len(m.dialogs) == 0
    assert m.presentities[BOB].watchers == ()
    h.answer(notify)
    assert h.take() == []
    # The dialog is gone.
    h.receive(refresh(sub, ok, 3, Expires="600"))
    assert [r.code for r in h.responses()] == [481]


def test_expiry(make):
    h = make()
    etag, _ = h.published(body=presenceDoc(), Expires="3600")
    sub, ok, _ = h.subscribed(Expires="600")
    h.clock.advance(599)
    assert h.take() == []
    h.clock.advance(1)
    (notify,) = h.take()
    assert notify.header("subscription-state") == "terminated;reason=timeout"
    assert basics(notify) == ["open"]
    assert h.store.subscriptions == {}
    assert h.manager.subscriptions == {} and len(h.manager.dialogs) == 0
    # The presentity stays for its publication, without watchers.
    assert h.manager.presentities[BOB].watchers == ()
    h.answer(notify)
    h.receive(refresh(sub, ok, 2, Expires="600"))
    assert [r.code for r in h.responses()] == [481]


def test_unknownDialog(make):
    h = make()
    sub, ok, _ = h.subscribed()
    other = refresh(sub, ok, 2)
    other.setHeader("To", "<%s>;tag=nosuchtag" % (BOB,))
    h.receive(other)
    assert [r.code for r in h.responses()] == [481]
    # Same tags, other Call-ID; and another event id: other dialogs.
    other = refresh(sub, ok, 2)
    other.setHeader("Call-ID", "another-call-id")
    h.receive(other)
    other = refresh(sub, ok, 2, Event="presence;id=7")
    h.receive(other)
    assert [r.code for r in h.responses()] == [481, 481]
    assert onlySubscription(h).remoteCSeq == 1


def test_retransmittedSubscribe(make):
    h = make()
    sub = subscribe()
    h.receive(sub)
    (ok,), (notify,) = h.split()
    h.receive(sub)
    sent = h.take()
    assert [type(m) for m in sent] == [Response]
    assert sent[0].code == 200
    assert sent[0].toAddr().tag == ok.toAddr().tag
    assert len(h.store.subscriptions) == 1
    assert len(h.manager.subscriptions) == 1


def test_retransmissionWhileStoreWrites(make):
    """
    A retransmission that comes while the write is pending is absorbed: one
    record, one 200, one NOTIFY.
    """
    store = HeldStore()
    h = make(store=store)
    sub = subscribe()
    h.receive(sub)
    h.receive(sub)
    assert store.methods() == ["addSubscription"]
    assert h.take() == []
    store.commit()
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert len(store.subscriptions) == 1


def test_fetch(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    h.published(body=presenceDoc())
    store.holding = True
    h.receive(subscribe(Expires="0"))
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert ok.header("expires") == "0"
    assert notify.header("subscription-state") == "terminated;reason=timeout"
    assert notify.header("content-type") == PIDF_TYPE
    assert basics(notify) == ["open"]
    assert store.held == []
    assert store.subscriptions == {}
    assert h.manager.subscriptions == {} and len(h.manager.dialogs) == 0
    assert h.manager.presentities[BOB].watchers == ()
    h.answer(notify)
    assert h.take() == []


def test_fetchWithoutPublication(make):
    h = make()
    h.receive(subscribe(Expires="0"))
    (ok,), (notify,) = h.split()
    assert basics(notify) == ["closed"]
    h.answer(notify)
    assertNoState(h)


# NOTIFY: CSeq, route set, failures.


@pytest.mark.parametrize("count", [3, 60, 2 * CSEQ_BLOCK + 10])
def test_notifyCSeqAcrossRestart(make, count):
    """
    CSeqs only grow, within a manager's life and across a restart, however
    many NOTIFYs were sent before it: the store keeps a ceiling above
    every CSeq sent.
    """
    h = make()
    sub, ok, first = h.subscribed()
    seen = [cseqOf(first)]
    etag, (notify,) = h.published(body=presenceDoc((("t1", "open"),)))
    seen.append(cseqOf(notify))
    h.answer(notify)
    for i in range(count):
        etag, (notify,) = modify(h, etag, presenceDoc((("t1", "open"),), note="n%d" % (i,)))
        seen.append(cseqOf(notify))
        h.answer(notify)
        stored = list(h.store.subscriptions.values())[0].localCSeq
        assert stored > max(seen)
    assert seen == sorted(set(seen))
    h.restart()
    # The restart sends the current state (notify_on_start), above the
    # ceiling; the next change follows it.
    (onStart,) = h.take()
    assert cseqOf(onStart) > max(seen)
    assert onStart.callId == sub.callId
    assert onStart.fromAddr().tag == ok.toAddr().tag
    assert basics(onStart) == ["open"]
    h.answer(onStart)
    etag, (notify,) = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert cseqOf(notify) == cseqOf(onStart) + 1
    assert basics(notify) == ["closed"]
    h.answer(notify)
    etag, (again,) = modify(h, etag, presenceDoc((("t1", "open"),)))
    assert cseqOf(again) == cseqOf(notify) + 1


def test_notifyCSeqAcrossTwoRestarts(make):
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    seen = [cseqOf(notify)]
    for basic in ("closed", "open", "closed"):
        h.restart()
        (onStart,) = h.take()
        assert cseqOf(onStart) > max(seen)
        h.answer(onStart)
        etag, (notify,) = modify(h, etag, presenceDoc((("t1", basic),)))
        assert cseqOf(notify) == cseqOf(onStart) + 1
        seen.extend((cseqOf(onStart), cseqOf(notify)))
        h.answer(notify)


def test_routeSet(make):
    h = make()
    routes = ["<sip:p1.example.test;lr>", "<sip:p2.example.test:5070;lr;transport=udp>"]
    sub, ok, notify = h.subscribed(Record_Route=", ".join(routes))
    assert ok.headerValues("record-route") == routes
    assert notify.headerValues("route") == routes
    assert notify.uri == "sip:alice@192.0.2.10:5060"
    # In-dialog NOTIFYs and NOTIFYs after a restart keep it.
    etag, (second,) = h.published(body=presenceDoc())
    assert second.headerValues("route") == routes
    h.answer(second)
    h.restart()
    (onStart,) = h.take()
    assert onStart.headerValues("route") == routes
    h.answer(onStart)
    etag, (third,) = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert third.headerValues("route") == routes
    h.answer(third)
    h.receive(refresh(sub, ok, 2))
    (ok2,), (fourth,) = h.split()
    assert ok2.headerValues("record-route") == []
    assert fourth.headerValues("route") == routes


def test_noRouteSet(make):
    h = make()
    _, _, notify = h.subscribed()
    assert not notify.hasHeader("route")


@pytest.mark.parametrize("code", [481, 408, 500, 404, 603])
def test_notifyErrorEndsSubscription(make, code):
    """
    481, 408 and any other error response end the subscription
    (RFC 6665 §4.2.2), in memory and in the store, without a final NOTIFY.
    """
    h = make()
    sub, ok, _ = h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify, code)
    assert h.take() == []
    assert h.manager.subscriptions == {} and len(h.manager.dialogs) == 0
    assert h.store.subscriptions == {}
    modify(h, etag, presenceDoc((("t1", "closed"),)))
    h.receive(refresh(sub, ok, 2))
    assert [r.code for r in h.responses()] == [481]


def test_notifyTimeoutEndsSubscription(make):
    """
    Unanswered, the NOTIFY is retransmitted over UDP; after 64*T1 (32 s)
    the transaction times out and the subscription ends.
    """
    h = make()
    h.receive(subscribe())
    (ok,), (notify,) = h.split()
    retransmissions = []
    for _ in range(63):
        h.clock.advance(0.5)
        retransmissions.extend(h.take())
        assert len(h.manager.subscriptions) == 1
    assert len(retransmissions) >= 5
    for again in retransmissions:
        assert branchOf(again) == branchOf(notify)
        assert cseqOf(again) == cseqOf(notify)
    h.clock.advance(0.5)
    assert h.take() == []
    assert h.manager.subscriptions == {}
    assert h.store.subscriptions == {}
    h.receive(publish(), PUBLISHER)
    assert [type(m) for m in h.take()] == [Response]


def test_keepOnTimeoutKeepsAfterOne(make):
    """
    With keepOnTimeout, one timeout keeps the subscription (and the state
    the watcher missed is sent again); a second in a row ends it.
    """
    h = make(keepOnTimeout=True)
    h.receive(subscribe())
    (ok,), (first,) = h.split()
    h.clock.advance(32)
    (resent,) = [m for m in h.take() if branchOf(m) != branchOf(first)]
    assert len(h.store.subscriptions) == 1
    assert cseqOf(resent) > cseqOf(first)
    assert basics(resent) == ["closed"]
    h.clock.advance(32)
    assert [m for m in h.take() if branchOf(m) != branchOf(resent)] == []
    assert h.manager.subscriptions == {}
    assert h.store.subscriptions == {}


def test_keepOnTimeoutCountsInARow(make):
    h = make(keepOnTimeout=True)
    h.receive(subscribe())
    (ok,), (first,) = h.split()
    h.clock.advance(32)
    (resent,) = [m for m in h.take() if branchOf(m) != branchOf(first)]
    h.answer(resent)
    # The success resets the count: one more timeout is kept again.
    etag, (notify,) = h.published(body=presenceDoc())
    h.clock.advance(32)
    (resent,) = [m for m in h.take() if branchOf(m) != branchOf(notify)]
    assert basics(resent) == ["open"]
    assert len(h.manager.subscriptions) == 1
    h.answer(resent)
    assert len(h.store.subscriptions) == 1


def test_withoutKeepOnTimeoutOneTimeoutEnds(make):
    h = make(keepOnTimeout=False)
    h.receive(subscribe())
    h.take()
    h.clock.advance(32)
    h.take()
    assert h.manager.subscriptions == {}
    assert h.store.subscriptions == {}


# Rate control and the NOTIFY in flight.


def test_rateControlCoalesces(make):
    """
    Changes inside notifyMinInterval give one NOTIFY, at the end of the
    interval, with the latest state.
    """
    h = make(notifyMinInterval=10.0)
    _, _, first = h.subscribed()
    sentAt = h.clock.seconds()
    h.clock.advance(1)
    etag, notifies = h.published(body=presenceDoc((("t1", "open"),), note="one"))
    assert notifies == []
    h.clock.advance(1)
    etag, notifies = modify(h, etag, presenceDoc((("t1", "closed"),), note="two"))
    assert notifies == []
    etag, notifies = modify(h, etag, presenceDoc((("t1", "open"),), note="three"))
    assert notifies == []
    h.clock.advance(sentAt + 10 - h.clock.seconds() - 0.01)
    assert h.take() == []
    h.clock.advance(0.01)
    (notify,) = h.take()
    assert basics(notify) == ["open"]
    assert b"three" in notify.body and b"two" not in notify.body
    assert cseqOf(notify) == cseqOf(first) + 1
    h.answer(notify)
    h.clock.advance(100)
    assert h.take() == []


def test_rateControlLetsAChangeThroughAfterTheInterval(make):
    h = make(notifyMinInterval=10.0)
    h.subscribed()
    h.clock.advance(10)
    etag, (notify,) = h.published(body=presenceDoc())
    assert basics(notify) == ["open"]


def test_changeWhileInFlightWaitsForTheAnswer(make):
    """
    Never two NOTIFYs in flight: changes while one is in flight go out,
    coalesced, with the latest state, once its final response arrives.
    """
    h = make()
    h.receive(subscribe())
    (ok,), (first,) = h.split()
    etag, notifies = h.published(body=presenceDoc((("t1", "open"),)))
    assert notifies == []
    etag, notifies = modify(h, etag, presenceDoc((("t1", "open"),), note="later"))
    assert notifies == []
    h.clock.advance(5)
    assert all(branchOf(m) == branchOf(first) for m in h.take())  # only retransmissions
    h.answer(first)
    (notify,) = h.take()
    assert basics(notify) == ["open"] and b"later" in notify.body
    assert cseqOf(notify) == cseqOf(first) + 1


def test_inFlightAndRateControl(make):
    h = make(notifyMinInterval=5.0)
    h.receive(subscribe())
    (ok,), (first,) = h.split()
    h.published(body=presenceDoc())
    h.clock.advance(2)
    h.take()
    h.answer(first)
    assert h.take() == []  # inside the interval: held back
    h.clock.advance(3)
    (notify,) = h.take()
    assert basics(notify) == ["open"]


def test_refreshNotifyIsNotRateLimited(make):
    """
    The NOTIFY that answers a refresh goes at once (RFC 6665 §4.2).
    """
    h = make(notifyMinInterval=60.0)
    sub, ok, first = h.subscribed()
    h.clock.advance(1)
    h.receive(refresh(sub, ok, 2))
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200
    assert notify.header("subscription-state") == "active;expires=3600"


def test_heldNotifyDroppedWhenSubscriptionEnds(make):
    """
    A NOTIFY held back by rate control never goes out after the
    subscription ended, even while the store removal is pending.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store, notifyMinInterval=30.0)
    sub, ok, _ = h.subscribed(Expires="60")
    h.clock.advance(35)
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    h.clock.advance(5)
    etag, notifies = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert notifies == []  # held back until 65 s
    store.holding = True
    h.clock.advance(20)
    assert store.methods() == ["removeSubscription"]
    h.clock.advance(10)
    assert h.take() == []
    store.commit()
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=timeout"
    h.answer(final)
    h.clock.advance(60)
    assert h.take() == []


# PUBLISH (RFC 3903).


def test_publishInitial(make):
    h = make()
    h.receive(publish(body=presenceDoc(), Expires="120"), PUBLISHER)
    (ok,), notifies = h.split()
    assert ok.code == 200
    etag = ok.header("sip-etag")
    assert etag
    assert ok.header("expires") == "120"
    record = h.store.publications[etag]
    assert record.body == presenceDoc()
    assert record.presentity == BOB
    assert record.expiresAt == h.clock.seconds() + 120


@pytest.mark.parametrize("asked, granted", [(None, 3600), ("7200", 7200), ("999999", 86400)])
def test_publishExpiresGranted(make, asked, granted):
    h = make()
    r = publish(body=presenceDoc())
    if asked is not None:
        r.setHeader("Expires", asked)
    h.receive(r, PUBLISHER)
    (ok,) = h.responses()
    assert ok.header("expires") == str(granted)


def test_publishRequiresBody(make):
    h = make()
    h.receive(publish(body=b""), PUBLISHER)
    (response,) = h.responses()
    assert response.code == 400
    assertNoState(h)


def test_publishRefresh(make):
    """
    SIP-If-Match without a body: a new entity-tag, the old one is dead,
    the state is unchanged and no watcher hears of it.
    """
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc(), Expires="600")
    h.answer(notify)
    before = h.store.publications[etag]
    h.clock.advance(300)
    h.receive(publish(body=b"", SIP_If_Match=etag, Expires="600"), PUBLISHER)
    (ok,), notifies = h.split()
    assert ok.code == 200
    newTag = ok.header("sip-etag")
    assert newTag and newTag != etag
    assert ok.header("expires") == "600"
    assert notifies == []
    assert list(h.store.publications) == [newTag]
    # The old entity-tag's deadline is out of the expiry wheel.
    assert [list(keys) for keys in h.manager.publicationExpiry._buckets.values()] == [[newTag]]
    after = h.store.publications[newTag]
    assert after.body == before.body
    assert after.modifiedAt == before.modifiedAt
    assert after.expiresAt == h.clock.seconds() + 600
    # The old entity-tag no longer matches.
    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in h.responses()] == [412]
    # The refreshed publication outlives the first expiry.
    h.clock.advance(301)
    assert h.take() == []
    assert list(h.manager.publications) == [newTag]


def test_publishModify(make):
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    newTag, (notify,) = modify(h, etag, presenceDoc((("t1", "closed"),), note="gone"))
    assert newTag != etag
    assert basics(notify) == ["closed"] and b"gone" in notify.body
    assert list(h.store.publications) == [newTag]
    h.receive(publish(body=presenceDoc(), SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in h.responses()] == [412]


def test_publishRemove(make):
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    h.receive(publish(body=b"", SIP_If_Match=etag, Expires="0"), PUBLISHER)
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert ok.header("expires") == "0"
    assert basics(notify) == ["closed"]
    assert h.store.publications == {}
    assert h.manager.publications == {}
    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in h.responses()] == [412]


def test_plainClosedDocumentNotKept(make):
    """
    A watched presentity with nothing published keeps no composed
    document (it is the closed one, composed when needed); one with a
    publication keeps it; and the watcher hears each real change once.
    """
    h = make()
    sub, ok, first = h.subscribed()
    assert basics(first) == ["closed"]
    pres = h.manager.presentities[BOB]
    assert pres.document is None
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    assert basics(notify) == ["open"] and pres.document is not None
    h.receive(publish(body=b"", SIP_If_Match=etag, Expires="0"), PUBLISHER)
    (removed,), (notify,) = h.split()
    h.answer(notify)
    assert basics(notify) == ["closed"] and pres.document is None
    h.receive(refresh(sub, ok, 2, Expires="600"))
    (refreshed,), (notify,) = h.split()
    assert refreshed.code == 200 and basics(notify) == ["closed"]


@pytest.mark.parametrize("expires, body", [("600", b""), ("600", None), ("0", b"")])
def test_publishUnknownETag(make, expires, body):
    h = make()
    h.published(body=presenceDoc())
    before = dict(h.store.publications)
    h.receive(publish(body=body, SIP_If_Match="nosuchetag", Expires=expires), PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 412
    assert h.store.publications == before


def test_publishETagOfAnotherPresentity(make):
    h = make()
    etag, _ = h.published(body=presenceDoc())
    carol = "sip:carol@example.test"
    h.receive(publish(carol, body=b"", SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in h.responses()] == [412]
    assert list(h.store.publications) == [etag]


@pytest.mark.parametrize("contentType", ["application/xpidf+xml", "text/plain", None])
def test_publishUnsupportedType(make, contentType):
    h = make()
    r = publish(body=presenceDoc())
    if contentType is None:
        r.removeHeader("content-type")
    else:
        r.setHeader("Content-Type", contentType)
    h.receive(r, PUBLISHER)
    (response,) = h.responses()
    assert response.code == 415
    assert response.header("accept") == PIDF_TYPE
    assertNoState(h)


@pytest.mark.parametrize("event", [None, "conference", "presence;a b", ""])
def test_publishBadEvent(make, event):
    h = make()
    r = publish(body=presenceDoc())
    if event is None:
        r.removeHeader("event")
    else:
        r.setHeader("Event", event)
    h.receive(r, PUBLISHER)
    (response,) = h.responses()
    assert response.code == 489
    assert response.headerValues("allow-events") == ["presence", "dialog", "message-summary", "presence.winfo"]
    assertNoState(h)


def test_publishTooShort(make):
    h = make(publishMinExpires=60)
    h.receive(publish(body=presenceDoc(), Expires="59"), PUBLISHER)
    (response,) = h.responses()
    assert response.code == 423
    assert response.header("min-expires") == "60"
    assertNoState(h)


def test_publicationExpiry(make):
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc(), Expires="120")
    h.answer(notify)
    h.clock.advance(119)
    assert h.take() == []
    h.clock.advance(1)
    (notify,) = h.take()
    assert basics(notify) == ["closed"]
    assert h.store.publications == {}
    assert h.manager.publications == {}
    assert h.manager.presentities[BOB].publications == {}


HOSTILE = {
    "not well-formed": b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"><tuple id="t1">',
    "not xml": b"hello",
    "wrong root": b'<?xml version="1.0"?><presents xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>',
    "wrong namespace": b'<?xml version="1.0"?><presence xmlns="urn:example" entity="sip:bob@example.test"/>',
    "other entity": presenceDoc(entity="sip:carol@example.test"),
    "other domain": presenceDoc(entity="sip:bob@elsewhere.test"),
    "no entity": b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf"/>',
    "bad basic": presenceDoc((("t1", "maybe"),)),
    "entity expansion": (
        b'<?xml version="1.0"?><!DOCTYPE presence [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
        b"<note>&c;</note></presence>"
    ),
    "external entity": (
        b'<?xml version="1.0"?><!DOCTYPE presence [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
        b"<note>&x;</note></presence>"
    ),
    "external DTD": (
        b'<?xml version="1.0"?><!DOCTYPE presence SYSTEM "http://example.test/p.dtd">'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>'
    ),
    "bare DTD": (
        b'<?xml version="1.0"?><!DOCTYPE presence>'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>'
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_publishRefusedBody(make, name):
    """
    A body that is not an acceptable PIDF for this presentity: 400, no
    store write, no NOTIFY, nothing in memory.
    """
    store = HeldStore()
    h = make(store=store)
    h.receive(publish(body=HOSTILE[name]), PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 400
    assert notifies == []
    assert store.held == []
    assertNoState(h)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_modifyRefusedBody(make, name):
    """
    A modify with a refused body changes nothing: the entity-tag still
    works, the state and the store are as they were.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    before = dict(store.publications)
    store.holding = True
    h.receive(publish(body=HOSTILE[name], SIP_If_Match=etag), PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 400
    assert notifies == []
    assert store.held == []
    assert store.publications == before
    store.holding = False
    newTag, (notify,) = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert basics(notify) == ["closed"]


def test_publishEntityForms(make):
    """
    The entity may name the presentity as pres: or with other case in the
    host (RFC 3863, RFC 3859).
    """
    h = make()
    h.published(body=presenceDoc(entity="pres:bob@example.test"))
    h.published(body=presenceDoc(entity="sip:bob@EXAMPLE.test"))


# Composition.


def test_compositionOfTwoDevices(make):
    h = make()
    h.subscribed()
    phone, (notify,) = h.published(body=presenceDoc((("phone", "open"),)))
    h.answer(notify)
    assert tupleIds(notify) == ["phone"]
    desk, (notify,) = h.published(body=presenceDoc((("desk", "closed"),)))
    h.answer(notify)
    assert sorted(tupleIds(notify)) == ["desk", "phone"]
    assert dict(zip(tupleIds(notify), basics(notify))) == {"phone": "open", "desk": "closed"}
    # Publishing the identical document again (a modify): no NOTIFY.
    desk, notifies = modify(h, desk, presenceDoc((("desk", "closed"),)))
    assert notifies == []
    # A real change is notified, with both tuples.
    desk, (notify,) = modify(h, desk, presenceDoc((("desk", "open"),)))
    assert dict(zip(tupleIds(notify), basics(notify))) == {"phone": "open", "desk": "open"}
    h.answer(notify)
    # Removing one device leaves the other.
    h.receive(publish(body=b"", SIP_If_Match=phone, Expires="0"), PUBLISHER)
    _, (notify,) = h.split()
    assert tupleIds(notify) == ["desk"]


def test_compositionSameTupleNewestWins(make):
    h = make()
    h.subscribed()
    first, (notify,) = h.published(body=presenceDoc((("t1", "open"),)))
    h.answer(notify)
    h.clock.advance(1)
    second, (notify,) = h.published(body=presenceDoc((("t1", "closed"),)))
    h.answer(notify)
    assert basics(notify) == ["closed"]
    h.clock.advance(1)
    # Re-asserting the first publication makes it the newest again.
    first, (notify,) = modify(h, first, presenceDoc((("t1", "open"),)))
    assert basics(notify) == ["open"]
    assert h.manager.presentities[BOB].document == composed(h, BOB)


def test_identicalPublishNoNotify(make):
    h = make()
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    for _ in range(3):
        h.clock.advance(5)
        etag, notifies = modify(h, etag, presenceDoc())
        assert notifies == []


def test_sameInstantPublicationsAreStable(make):
    """
    Two publications made at the same instant: refreshing either, or
    re-publishing the newest unchanged, never reorders the composed
    document (ties do not depend on the random entity-tags).
    """
    h = make()
    h.subscribed()
    a, (notify,) = h.published(body=presenceDoc((("a", "open"),)))
    h.answer(notify)
    b, (notify,) = h.published(body=presenceDoc((("b", "closed"),)))
    h.answer(notify)
    document = h.manager.presentities[BOB].document
    for _ in range(20):
        a, notifies = h.published(body=b"", SIP_If_Match=a)
        assert notifies == []
        b, notifies = h.published(body=b"", SIP_If_Match=b)
        assert notifies == []
        b, notifies = modify(h, b, presenceDoc((("b", "closed"),)))
        assert notifies == []
    assert h.manager.presentities[BOB].document == document == composed(h, BOB)


def composed(h: Harness, aor: str) -> bytes:
    """
    What the composed document of C{aor} must be: its stored publications
    composed afresh, newest first.
    """
    records = sorted(
        (r for r in h.store.publications.values() if r.presentity == aor),
        key=lambda r: (-r.modifiedAt, -r.version, r.etag),
    )
    return composePidf(aor, [parsePidf(r.body, aor) for r in records])


# The store: a 200 only once committed; a failed write changes nothing.


def test_subscribeAnsweredAfterCommit(make):
    store = HeldStore()
    h = make(store=store)
    h.receive(subscribe())
    assert h.take() == []
    assert store.methods() == ["addSubscription"]
    assert h.manager.subscriptions == {}
    store.commit()
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert len(store.subscriptions) == 1


def test_subscribeWriteFails(make):
    store = HeldStore()
    h = make(store=store)
    sub = subscribe()
    h.receive(sub)
    store.fail()
    (response,), notifies = h.split()
    assert response.code == 500
    assert response.header("retry-after")
    assert notifies == []
    assertNoState(h)
    assert h.manager.counters["storeErrors"] == 1
    # The retransmission gets the same 500, no new attempt.
    h.receive(sub)
    assert [r.code for r in h.responses()] == [500]
    assert store.held == []


def test_refreshAnsweredAfterCommit(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    sub, ok, _ = h.subscribed(Expires="600")
    store.holding = True
    h.clock.advance(100)
    h.receive(refresh(sub, ok, 2, Expires="1200"))
    assert h.take() == []
    assert store.methods() == ["updateSubscription"]
    store.commit()
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200 and ok2.header("expires") == "1200"
    assert notify.header("subscription-state") == "active;expires=1200"


def test_refreshWriteFails(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    sub, ok, _ = h.subscribed(Expires="600")
    record = list(store.subscriptions.values())[0]
    store.holding = True
    h.clock.advance(100)
    other = Target("UDP", "192.0.2.99", 5062)
    r = refresh(sub, ok, 2, Expires="1200", source=other)
    h.receive(r, other)
    store.fail()
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    assert list(store.subscriptions.values())[0] == record
    s = onlySubscription(h)
    assert s.expiresAt == record.expiresAt
    assert s.target == WATCHER
    assert s.remoteTarget == record.remoteTarget
    # It still ends at the first expiry, NOTIFY to the first address.
    store.holding = False
    h.clock.advance(500)
    (final,) = h.network.sent
    assert final[0].header("subscription-state") == "terminated;reason=timeout"
    assert final[1:] == (WATCHER.host, WATCHER.port)


def test_unsubscribeAnsweredAfterCommit(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    sub, ok, _ = h.subscribed()
    store.holding = True
    h.receive(refresh(sub, ok, 2, Expires="0"))
    assert h.take() == []
    assert store.methods() == ["removeSubscription"]
    store.commit()
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200
    assert notify.header("subscription-state") == "terminated;reason=timeout"


def test_unsubscribeWriteFails(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    sub, ok, _ = h.subscribed()
    store.holding = True
    h.receive(refresh(sub, ok, 2, Expires="0"))
    store.fail()
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    onlySubscription(h)
    # Still subscribed: a change is notified, and a retry works.
    store.holding = False
    etag, (notify,) = h.published(body=presenceDoc())
    assert notify.header("subscription-state").startswith("active")
    h.answer(notify)
    h.receive(refresh(sub, ok, 3, Expires="0"))
    (ok2,), (final,) = h.split()
    assert ok2.code == 200
    assert h.store.subscriptions == {}


def test_unsubscribeRacingExpiry(make):
    """
    The subscription expires while its un-SUBSCRIBE is being written: one
    final NOTIFY, and the un-SUBSCRIBE finds no subscription left.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    sub, ok, _ = h.subscribed(Expires="60")
    store.holding = True
    h.clock.advance(59)
    h.receive(refresh(sub, ok, 2, Expires="0"))
    h.clock.advance(1)
    assert store.methods() == ["removeSubscription", "removeSubscription"]
    store.commitAll()
    responses, notifies = h.split()
    assert [r.code for r in responses] == [481]
    (final,) = notifies
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert store.subscriptions == {}
    assert h.manager.subscriptions == {} and len(h.manager.dialogs) == 0


def test_publishAnsweredAfterCommit(make):
    store = HeldStore()
    h = make(store=store)
    h.receive(publish(body=presenceDoc()), PUBLISHER)
    assert h.take() == []
    assert store.methods() == ["putPublication"]
    assert h.manager.publications == {}
    store.commit()
    (ok,) = h.responses()
    etag = ok.header("sip-etag")
    # Modify: one write replacing the old entity-tag.
    h.receive(publish(body=presenceDoc((("t1", "closed"),)), SIP_If_Match=etag), PUBLISHER)
    assert store.methods() == ["replacePublication"]
    assert h.take() == []
    store.commit()
    (ok,) = h.responses()
    assert ok.code == 200
    newTag = ok.header("sip-etag")
    assert list(store.publications) == [newTag]
    # Remove.
    h.receive(publish(body=b"", SIP_If_Match=newTag, Expires="0"), PUBLISHER)
    assert h.take() == []
    store.commit()
    (ok,) = h.responses()
    assert ok.code == 200
    assertNoState(h)


def test_initialPublishWriteFails(make):
    store = HeldStore()
    h = make(store=store)
    h.receive(publish(body=presenceDoc()), PUBLISHER)
    store.fail()
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    assertNoState(h)


def test_modifyWriteFails(make):
    """
    When the write of a modify fails, the answer is 500, the store is as
    it was, the old entity-tag still works and no watcher hears of
    anything.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    before = dict(store.publications)
    store.holding = True
    h.receive(publish(body=presenceDoc((("t1", "closed"),)), SIP_If_Match=etag), PUBLISHER)
    assert store.methods() == ["replacePublication"]
    store.fail(0)
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    assert store.held == []
    assert store.publications == before
    assert list(h.manager.publications) == [etag]
    store.holding = False
    newTag, (notify,) = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert basics(notify) == ["closed"]


def test_refreshLosingTheRaceForItsEntityTagGets412(make):
    """
    Another manager refreshed the entity-tag first (the store no longer
    has it): this refresh gets 412, as a stale entity-tag does, the tag
    is no longer accepted here, and watchers hear nothing from it.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    h.subscribed()
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    store.inner.publications.pop(etag)  # replaced elsewhere
    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 412
    assert notifies == []
    assert etag not in h.manager.publications
    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    (response,) = h.responses()
    assert response.code == 412


def test_removeWriteFails(make):
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    h.subscribed(Expires="7200")
    etag, (notify,) = h.published(body=presenceDoc())
    h.answer(notify)
    store.holding = True
    h.receive(publish(body=b"", SIP_If_Match=etag, Expires="0"), PUBLISHER)
    store.fail()
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    assert list(store.publications) == [etag]
    assert list(h.manager.publications) == [etag]
    # The publication still expires in time.
    store.holding = False
    h.clock.advance(3600)
    (notify,) = h.take()
    assert basics(notify) == ["closed"]
    assert store.publications == {}


def test_publicationClaimedWhileWriting(make):
    """
    While a modify is being written its entity-tag is taken: a racing
    PUBLISH naming it gets 412.
    """
    store = HeldStore()
    store.holding = False
    h = make(store=store)
    etag, _ = h.published(body=presenceDoc())
    store.holding = True
    h.receive(publish(body=presenceDoc((("t1", "closed"),)), SIP_If_Match=etag), PUBLISHER)
    h.receive(publish(body=b"", SIP_If_Match=etag), PUBLISHER)
    assert [r.code for r in h.responses()] == [412]
    store.commitAll()
    assert [r.code for r in h.responses()] == [200]


# Restart.


def test_restartReloads(make):
    h = make()
    sub, ok, _ = h.subscribed(Expires="600")
    etag, (notify,) = h.published(body=presenceDoc(), Expires="600")
    h.answer(notify)
    h.clock.advance(100)
    m = h.restart()
    assert len(m.subscriptions) == 1 and len(m.dialogs) == 1
    assert list(m.publications) == [etag]
    # The watcher is told the reloaded state once (notify_on_start).
    (onStart,) = h.take()
    assert onStart.callId == sub.callId and basics(onStart) == ["open"]
    assert onStart.header("subscription-state") == "active;expires=500"
    h.answer(onStart)
    # A refresh of the subscription made before the restart.
    h.receive(refresh(sub, ok, 2, Expires="600"))
    (ok2,), (notify,) = h.split()
    assert ok2.code == 200
    assert basics(notify) == ["open"]
    h.answer(notify)
    # A new watcher sees the reloaded publication; the entity-tag works.
    _, _, first = h.subscribed(fromURI="sip:carol@example.test")
    assert basics(first) == ["open"]
    etag, notifies = modify(h, etag, presenceDoc((("t1", "closed"),)))
    assert len(notifies) == 2


def test_restartExpiredWhileDown(make):
    h = make()
    sub, ok, first = h.subscribed(Expires="600")
    etag, (notify,) = h.published(body=presenceDoc(), Expires="300")
    h.answer(notify)
    h.crash()
    h.clock.advance(700)
    assert h.take() == []
    m = h.restart()
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert final.callId == sub.callId and final.fromAddr().tag == ok.toAddr().tag
    assert cseqOf(final) > cseqOf(notify)
    assert basics(final) == ["closed"]  # the publication expired too
    assert h.store.subscriptions == {} and h.store.publications == {}
    assert m.subscriptions == {} and len(m.dialogs) == 0 and m.publications == {}
    h.answer(final)
    h.receive(refresh(sub, ok, 2))
    assert [r.code for r in h.responses()] == [481]


def test_restartKeepsLiveAndDropsExpired(make):
    h = make()
    h.subscribed(Expires="3600")
    h.subscribed(Expires="600", fromURI="sip:carol@example.test")
    h.crash()
    h.clock.advance(1000)
    m = h.restart()
    # carol's expired: a final NOTIFY; alice's lives: the current state.
    onStart, final = sorted(h.take(), key=lambda n: n.header("subscription-state"))
    assert final.toAddr().uri == "sip:carol@example.test"
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert onStart.toAddr().uri == "sip:alice@example.test"
    assert onStart.header("subscription-state") == "active;expires=2600"
    assert len(m.subscriptions) == 1
    assert len(h.store.subscriptions) == 1


def test_restartLoadsInPages(make, monkeypatch):
    """
    Subscriptions are reloaded a page at a time (the store is asked for
    pages in id order, never for everything at once), expired ones ended
    on every page.
    """
    from presence.manager.manager import SubscriptionManager

    monkeypatch.setattr(SubscriptionManager, "loadPageSize", 2)
    h = make()
    for i in range(5):
        h.subscribed(Expires="3600", fromURI="sip:w%d@example.test" % (i,))
    h.subscribed(Expires="600", fromURI="sip:late@example.test")
    asked = []
    load = h.store.loadSubscriptions

    def paged(owner=None, after=None, limit=None):
        asked.append((after is not None, limit))
        return load(owner, after, limit)

    h.store.loadSubscriptions = paged
    h.crash()
    h.clock.advance(1000)
    m = h.restart()
    notifies = h.take()
    (final,) = [n for n in notifies if n.header("subscription-state").startswith("terminated")]
    assert final.toAddr().uri == "sip:late@example.test"
    assert len(m.subscriptions) == 5
    # Each live one is told the current state once.
    assert len(notifies) == 6
    # Six stored, pages of two: three full pages, then an empty one.
    assert asked == [(False, 2), (True, 2), (True, 2), (True, 2)]


def test_restartNotifiesAPublicationThatExpiredMeanwhile(make):
    """
    bob was open when the manager went down and his publication expired
    meanwhile: at start his watcher gets one NOTIFY saying closed, with a
    CSeq above every earlier one, and nothing more.
    """
    h = make()
    sub, ok, first = h.subscribed(Expires="3600")
    etag, (opened,) = h.published(body=presenceDoc(), Expires="300")
    h.answer(opened)
    assert basics(opened) == ["open"]
    h.crash()
    h.clock.advance(400)
    assert h.take() == []
    m = h.restart()
    assert m.publications == {} and h.store.publications == {}
    (notify,) = h.take()
    assert notify.callId == sub.callId and notify.fromAddr().tag == ok.toAddr().tag
    assert notify.header("subscription-state") == "active;expires=3200"
    assert basics(notify) == ["closed"]
    assert cseqOf(notify) > max(cseqOf(first), cseqOf(opened))
    assert h.store.subscriptions[ok.toAddr().tag].localCSeq > cseqOf(notify)
    h.answer(notify)
    h.clock.advance(60)
    assert h.take() == []


def test_restartNotifiesALiveState(make):
    """
    The process died once the PUBLISH was committed, before its NOTIFY
    reached the watcher (it never answered it): at start the watcher gets
    the published state, once.
    """
    h = make()
    sub, ok, first = h.subscribed(Expires="3600")
    assert basics(first) == ["closed"]
    etag, (lost,) = h.published(body=presenceDoc(note="back"))
    h.crash()
    m = h.restart()
    assert list(m.publications) == [etag]
    (notify,) = h.take()
    assert notify.callId == sub.callId
    assert basics(notify) == ["open"] and b"<note>back</note>" in notify.body
    assert cseqOf(notify) > cseqOf(lost)
    h.answer(notify)
    h.clock.advance(60)
    assert h.take() == []


def test_restartTellsAPendingWatcherNothing(make):
    """
    A pending watcher (the owner has not decided) is sent no state at
    start, not even an empty NOTIFY; an active one beside it is.
    """
    h = make()
    h.billing(lambda conn: db.addAccount(conn, BOB, "secret", "acme"))
    h.billing(lambda conn: db.setRule(conn, BOB, "sip:alice@example.test", "ask"))
    h.billing(lambda conn: db.setRule(conn, BOB, "sip:carol@example.test", "allow"))
    _, _, pending = h.subscribed(Expires="600")
    assert pending.header("subscription-state") == "pending;expires=600"
    _, _, active = h.subscribed(Expires="600", fromURI="sip:carol@example.test")
    h.published(body=presenceDoc())
    for notify in h.take():
        h.answer(notify)
    m = h.restart()
    assert len(m.subscriptions) == 2
    (notify,) = h.take()
    assert notify.callId == active.callId and basics(notify) == ["open"]
    h.answer(notify)
    assert m.notifier.paced == {}


def test_restartNotifiesPaced(make):
    """
    2,500 reloaded subscriptions at adopt_notify_rate 500: 50 NOTIFYs at
    once, about 500 in the first second, the last ones about 5 s after
    the start; each watcher exactly one, in load order, above its stored
    CSeq ceiling, and no pacing timer left afterwards.
    """
    from tests.test_store import sub as record

    h = make(clusterAdoptNotifyRate=500)
    now = h.clock.seconds()
    for i in range(2500):
        h.store.addSubscription(
            record(
                "%04d" % (i,), owner=h.config.node, watcher="sip:w%d@example.test" % (i,),
                presentity="sip:p%d@example.test" % (i % 5,), remoteTarget="sip:w%d@192.0.2.10:5060" % (i,),
                expiresAt=now + 3600, transport="UDP", routeSet=(), flowToken="", localCSeq=100, remoteCSeq=1,
            )
        )
    m = h.restart()
    start = h.clock.seconds()
    assert len(m.notifier.paced) == 2450
    sent: List[Tuple[float, Request]] = []
    while True:
        for notify in h.take():
            sent.append((h.clock.seconds() - start, notify))
            h.answer(notify)
        if not m.notifier.paced or h.clock.seconds() > start + 10:
            break
        h.clock.advance(0.05)
    assert len([at for at, _ in sent if at == 0]) == 50
    assert 450 <= len([at for at, _ in sent if at < 1.0 - 1e-6]) <= 550
    assert 4.5 < max(at for at, _ in sent) < 5.1
    assert [n.callId for _, n in sent] == ["call-%04d@192.0.2.10" % (i,) for i in range(2500)]
    assert min(cseqOf(n) for _, n in sent) > 100
    assert m.notifier.counters["paced"] == 2500
    assert [c for c in h.clock.getDelayedCalls() if c.func == m.notifier._releasePaced] == []


def test_restartNotifyWaitsForTheProxyToConnect(make):
    """
    A watcher behind a proxy that reached us over TCP: that connection
    died with the process.  At its turn the NOTIFY neither fails (which
    would end the subscription) nor goes over a connection of this run
    from another host (flow tokens differ across runs); it waits, a
    change meanwhile folded in, until the proxy connects again, then goes
    once over that connection.
    """
    from tests.registrarharness import StreamPeer

    h = make()
    route = "<sip:proxy.example.test;lr;transport=tcp>"
    proxy = StreamPeer(h.core, host="192.0.2.40", port=40001)
    proxy.send(subscribe(Expires="600", Record_Route=route, source=proxy.source))
    (ok,), (first,) = proxy.split()
    proxy.send(Response.forRequest(first, 200))
    m = h.restart(fenced=True)
    other = StreamPeer(h.core, host="192.0.2.99", port=40001)
    assert other.token != proxy.token
    m.notifier.unfence()
    _, notifies = h.published(body=presenceDoc())
    assert notifies == []
    h.clock.advance(5)
    assert other.take() == [] and h.take() == []
    # Parked, no longer paced: a change is sent at once if it can be.
    assert len(m.subscriptions) == 1 and m.notifier.paced == {} and m.notifier.waiting == 1
    back = StreamPeer(h.core, host="192.0.2.40", port=40002)
    assert back.take() == []
    h.clock.advance(0.1)
    (notify,) = back.take()
    assert notify.callId == first.callId and notify.headerValues("route") == [route]
    assert basics(notify) == ["open"] and cseqOf(notify) > cseqOf(first)
    back.send(Response.forRequest(notify, 200))
    assert m.notifier.paced == {} and m.notifier.counters["paced"] == 1
    h.clock.advance(5)
    assert back.take() == [] and other.take() == []


def test_parkedWatcherServedByItsRefresh(make):
    """
    A watcher parked after a restart (its paced turn came before any
    connection from its proxy) that refreshes over a connection from
    another host is served there: the refresh's NOTIFY takes it out of
    waiting, a later change goes out at once, and nothing is kept for the
    old host.
    """
    from tests.registrarharness import StreamPeer

    h = make()
    route = "<sip:proxy.example.test;lr;transport=tcp>"
    proxy = StreamPeer(h.core, host="192.0.2.40", port=40001)
    sub = subscribe(Expires="600", Record_Route=route, source=proxy.source)
    proxy.send(sub)
    (ok,), (first,) = proxy.split()
    proxy.send(Response.forRequest(first, 200))
    m = h.restart(fenced=True)
    m.notifier.unfence()
    h.clock.advance(1)
    assert m.notifier.waiting == 1
    moved = StreamPeer(h.core, host="192.0.2.41", port=40001)
    moved.send(refresh(sub, ok, 2, Expires="600", Record_Route=route, source=moved.source))
    (ok2,), (notify,) = moved.split()
    assert ok2.code == 200 and cseqOf(notify) > cseqOf(first)
    assert m.notifier.waiting == 0 and m.notifier._parked == {}
    moved.send(Response.forRequest(notify, 200))
    h.published(body=presenceDoc())
    (change,) = moved.take()
    assert basics(change) == ["open"]
    moved.send(Response.forRequest(change, 200))
    StreamPeer(h.core, host="192.0.2.40", port=40002)
    h.clock.advance(5)
    assert moved.take() == [] and proxy.take() == []


def test_restartWithoutNotifyOnStart(make):
    """
    With [manager] notify_on_start = no a restart sends nothing, however
    stale the watcher's view (only the final NOTIFY of an expired
    subscription still goes); the next change is notified as usual.
    """
    h = make(notifyOnStart=False)
    h.subscribed(Expires="3600")
    h.subscribed(Expires="600", fromURI="sip:carol@example.test")
    etag, opened = h.published(body=presenceDoc(), Expires="300")
    for notify in opened:
        h.answer(notify)
    h.crash()
    h.clock.advance(700)
    m = h.restart()
    (final,) = h.take()
    assert final.header("subscription-state") == "terminated;reason=timeout"
    h.answer(final)
    assert len(m.subscriptions) == 1 and m.notifier.paced == {}
    h.clock.advance(10)
    assert h.take() == []
    _, (notify,) = h.published(body=presenceDoc(note="again"))
    assert basics(notify) == ["open"]
    h.answer(notify)


@pytest.mark.parametrize(
    "text, expected",
    [("", True), ("notify_on_start = yes\n", True), ("notify_on_start = off\n", False),
     ("notify_on_start = 0\n", False), ("notify_on_start = True\n", True)],
)
def test_notifyOnStartSetting(text, expected):
    assert Config.fromString("[manager]\n" + text).notifyOnStart is expected


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_notifyOnStartBadValue(value):
    with pytest.raises(ConfigError, match=r"\[manager\] notify_on_start = '%s': must be yes or no" % (value,)):
        Config.fromString("[manager]\nnotify_on_start = %s\n" % (value,))


def test_notifyOnStartInTheSampleConfig():
    """
    etc/presence.ini documents the key with its default.
    """
    import os

    sample = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "presence.ini")
    with open(sample, encoding="utf-8") as f:
        assert re.search(r"^notify_on_start = yes$", f.read(), re.M)
    assert Config.fromFile(sample).notifyOnStart is Config().notifyOnStart is True


# Hostile or odd requests: a precise error, no state.


def test_subscribeMissingFromTag(make):
    h = make()
    sub = subscribe()
    sub.setHeader("From", "<sip:alice@example.test>")
    h.receive(sub)
    (response,), notifies = h.split()
    assert response.code == 400
    assert "From tag" in response.reason
    assertNoState(h)


@pytest.mark.parametrize("contact", [None, "garbage", "<>", "<sip:>", "*"])
def test_subscribeBadContact(make, contact):
    h = make()
    sub = subscribe()
    if contact is None:
        sub.removeHeader("contact")
    else:
        sub.setHeader("Contact", contact)
    h.receive(sub)
    (response,), notifies = h.split()
    assert response.code == 400
    if contact is None:
        assert response.reason == "Missing Contact"
    assertNoState(h)


@pytest.mark.parametrize("method", ["SUBSCRIBE", "PUBLISH"])
@pytest.mark.parametrize("expires", ["abc", "-5", "1e3", "60 60", "12345678901"])
def test_garbageExpires(make, method, expires):
    h = make()
    r = subscribe() if method == "SUBSCRIBE" else publish(body=presenceDoc())
    r.setHeader("Expires", expires)
    h.receiveBytes(r.toBytes(), WATCHER if method == "SUBSCRIBE" else PUBLISHER)
    (response,), notifies = h.split()
    assert response.code == 400
    assert "Expires" in response.reason
    assertNoState(h)


@pytest.mark.parametrize("cseq", [1, 0])
def test_cseqBackwardsInDialog(make, cseq):
    h = make()
    sub, ok, _ = h.subscribed(Expires="600")
    record = list(h.store.subscriptions.values())[0]
    h.clock.advance(100)
    h.receive(refresh(sub, ok, cseq, Expires="3600"))
    (response,), notifies = h.split()
    assert response.code == 500
    assert notifies == []
    assert list(h.store.subscriptions.values())[0] == record
    assert onlySubscription(h).expiresAt == record.expiresAt


def test_refreshBadContact(make):
    h = make()
    sub, ok, _ = h.subscribed(Expires="600")
    record = list(h.store.subscriptions.values())[0]
    h.receive(refresh(sub, ok, 2, Contact="<garbage>"))
    (response,), notifies = h.split()
    assert response.code == 400
    assert notifies == []
    assert list(h.store.subscriptions.values())[0] == record


def test_refreshMovesContact(make):
    h = make()
    sub, ok, _ = h.subscribed(Expires="600")
    h.receive(refresh(sub, ok, 2, Contact="<sip:alice@198.51.100.7:5090>"))
    (ok2,), (notify,) = h.split()
    assert notify.uri == "sip:alice@198.51.100.7:5090"
    assert list(h.store.subscriptions.values())[0].remoteTarget == "sip:alice@198.51.100.7:5090"


def test_unexpectedErrorAnswers500(make):
    """
    A bug in a handler answers 500 instead of leaving the transaction
    unanswered.
    """
    h = make()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    h.manager.resourceOf = broken  # type: ignore[assignment]
    h.receive(publish(body=presenceDoc()), PUBLISHER)
    assert [r.code for r in h.responses()] == [500]


# Random sequences of operations, with invariants checked after each step.


class Watcher:
    """
    One subscription as the watcher sees it.
    """

    def __init__(self, sub: Request, ok: Response) -> None:
        self.sub = sub
        self.ok = ok
        self.cseq = 1

    @property
    def dialog(self) -> Tuple[str, str, str]:
        return (self.sub.callId or "", self.ok.toAddr().tag or "", self.sub.fromAddr().tag or "")


class Driver:
    """
    Drives a harness with random operations and checks, from the wire and
    from the store, what must always hold.
    """

    TIMER_F = 32.0

    def __init__(self, interval: float, keepOnTimeout: bool) -> None:
        self.h = Harness(notifyMinInterval=interval, keepOnTimeout=keepOnTimeout)
        self.interval = interval
        self.watchers: List[Watcher] = []
        self.etags: Dict[int, str] = {}
        self.branches: Dict[str, Tuple[Tuple[str, str, str], int]] = {}
        self.outstanding: Dict[str, Tuple[Tuple[str, str, str], float, Request]] = {}
        self.lastCSeq: Dict[Tuple[str, str, str], int] = {}
        self.lastBody: Dict[Tuple[str, str, str], bytes] = {}
        self.lastState: Dict[Tuple[str, str, str], str] = {}

    # Watching the wire.

    def pump(self) -> List[Response]:
        now = self.h.clock.seconds()
        for branch, (dialog, sentAt, _) in list(self.outstanding.items()):
            if now >= sentAt + self.TIMER_F:
                del self.outstanding[branch]  # the transaction timed out
        responses = []
        for message in self.h.take():
            if isinstance(message, Response):
                responses.append(message)
                continue
            assert message.method == "NOTIFY"
            dialog = (message.callId or "", message.fromAddr().tag or "", message.toAddr().tag or "")
            branch = branchOf(message)
            cseq = cseqOf(message)
            if branch in self.branches:
                assert self.branches[branch] == (dialog, cseq)  # a retransmission
                continue
            self.branches[branch] = (dialog, cseq)
            assert cseq > self.lastCSeq.get(dialog, 0), "CSeq did not grow"
            self.lastCSeq[dialog] = cseq
            inFlight = [b for b, (d, _, _) in self.outstanding.items() if d == dialog]
            assert inFlight == [], "two NOTIFYs in flight in one dialog"
            self.outstanding[branch] = (dialog, now, message)
            self.lastBody[dialog] = message.body
            self.lastState[dialog] = message.header("subscription-state") or ""
        return responses

    # Operations.

    def subscribe(self, who: int, expires: Optional[int]) -> None:
        kw: Dict[str, Any] = {"fromURI": "sip:w%d@example.test" % (who,)}
        if expires is not None:
            kw["Expires"] = str(expires)
        sub = subscribe(**kw)
        self.h.receive(sub)
        (ok,) = self.pump()
        assert ok.code == 200
        if expires != 0:
            self.watchers.append(Watcher(sub, ok))

    def refresh(self, index: int, expires: int) -> None:
        if not self.watchers:
            return
        w = self.watchers[index % len(self.watchers)]
        w.cseq += 1
        self.h.receive(refresh(w.sub, w.ok, w.cseq, Expires=str(expires)))
        (response,) = self.pump()
        assert response.code in (200, 481)

    def publish(self, device: int, basic: str, note: Optional[str]) -> None:
        body = presenceDoc((("d%d" % (device,), basic),), note=note)
        kw: Dict[str, Any] = {}
        if device in self.etags:
            kw["SIP_If_Match"] = self.etags[device]
        self.h.receive(publish(body=body, **kw), PUBLISHER)
        (response,) = self.pump()
        self._published(device, response)

    def refreshPublication(self, device: int) -> None:
        if device not in self.etags:
            return
        self.h.receive(publish(body=b"", SIP_If_Match=self.etags[device]), PUBLISHER)
        (response,) = self.pump()
        self._published(device, response)

    def _published(self, device: int, response: Response) -> None:
        if response.code == 200:
            self.etags[device] = response.header("sip-etag") or ""
        else:
            assert response.code == 412  # it expired meanwhile
            self.etags.pop(device, None)

    def unpublish(self, device: int) -> None:
        if device not in self.etags:
            return
        self.h.receive(publish(body=b"", SIP_If_Match=self.etags.pop(device), Expires="0"), PUBLISHER)
        (response,) = self.pump()
        assert response.code in (200, 412)

    def answer(self, code: int) -> None:
        if not self.outstanding:
            return
        branch = sorted(self.outstanding, key=lambda b: self.outstanding[b][1])[0]
        _, _, notify = self.outstanding.pop(branch)
        self.h.answer(notify, code)
        assert self.pump() == []

    def advance(self, seconds: float) -> None:
        # In steps, as time passes: retransmissions and timeouts interleave.
        step = 0.5
        while seconds > 0:
            self.h.clock.advance(min(step, seconds))
            seconds -= step
            assert self.pump() == []

    def restart(self) -> None:
        self.outstanding.clear()  # the old transactions are gone
        self.h.restart()
        # Every active watcher is sent the current state on start (what
        # was waiting for an answer when the manager went down included),
        # so settle() holds across restarts too.
        assert self.pump() == []

    def run(self, op: Tuple[Any, ...]) -> None:
        getattr(self, op[0])(*op[1:])
        self.check()

    # Invariants.

    def check(self) -> None:
        h = self.h
        m = h.manager
        store = h.store
        assert set(m.subscriptions) == set(store.subscriptions)
        assert set(m.dialogs) == {s.dialogKey for s in m.subscriptions.values()}
        for sid, sub in m.subscriptions.items():
            assert store.subscriptions[sid].expiresAt == sub.expiresAt
            assert sid in m.presentities[sub.presentity].watchers
            # The stored ceiling is above every CSeq sent.
            assert store.subscriptions[sid].localCSeq >= sub.cseq
            dialog = (sub.callId, sub.localTag, sub.remoteTag)
            assert store.subscriptions[sid].localCSeq > self.lastCSeq.get(dialog, 0)
        assert set(m.publications) == set(store.publications)
        aors = {r.presentity for r in store.publications.values()}
        assert aors <= set(m.presentities)
        for aor, pres in m.presentities.items():
            assert set(pres.publications) == {e for e, r in store.publications.items() if r.presentity == aor}
            assert pres.publications or pres.watchers
            if pres.document is not None:
                assert pres.document == composed(h, aor)

    def settle(self) -> None:
        """
        Answer everything and let rate control run out; then every live
        watcher holds the current composed document.
        """
        for _ in range(10):
            while self.outstanding:
                self.answer(200)
            self.advance(self.interval + 0.5)
            if not self.outstanding:
                break
        self.check()
        m = self.h.manager
        for sub in m.subscriptions.values():
            dialog = (sub.callId, sub.localTag, sub.remoteTag)
            assert self.lastState[dialog].startswith("active")
            if dialog in self.lastBody:
                assert self.lastBody[dialog] == composed(self.h, sub.presentity)


OPERATIONS = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, 2), st.sampled_from([None, 0, 60, 300])),
    st.tuples(st.just("refresh"), st.integers(0, 5), st.sampled_from([0, 60, 300])),
    st.tuples(
        st.just("publish"),
        st.integers(0, 1),
        st.sampled_from(["open", "closed"]),
        st.sampled_from([None, "away", "busy"]),
    ),
    st.tuples(st.just("refreshPublication"), st.integers(0, 1)),
    st.tuples(st.just("unpublish"), st.integers(0, 1)),
    st.tuples(st.just("answer"), st.sampled_from([200, 200, 200, 481, 500])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 10.0, 33.0, 70.0, 400.0])),
    st.tuples(st.just("restart")),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    interval=st.sampled_from([0.0, 3.0]),
    keepOnTimeout=st.booleans(),
    operations=st.lists(OPERATIONS, max_size=30),
)
# The manager goes down with a NOTIFY in flight and a change waiting for
# its answer: the restart must still bring the watcher the latest state.
@example(
    interval=0.0,
    keepOnTimeout=False,
    operations=[("subscribe", 0, None), ("publish", 0, "open", None), ("restart",)],
)
def test_randomOperations(interval, keepOnTimeout, operations):
    driver = Driver(interval, keepOnTimeout)
    try:
        driver.check()
        for op in operations:
            driver.run(op)
        driver.settle()
    finally:
        driver.h.stop()
    assert driver.h.clock.getDelayedCalls() == []
