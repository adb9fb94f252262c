"""
The dialog, message-summary and presence.winfo event packages through the
sans-IO manager (C{tests/harness.py}): SUBSCRIBE and PUBLISH routed by
their C{Event} header, what each watcher gets, per-subscription versions
across a restart, who may watch what, hostile bodies.
"""

from __future__ import annotations

from typing import Any, List

from zope.interface.verify import verifyObject

from presence.billing import db
from presence.dialoginfo import parseDialogInfo
from presence.interfaces import IEventPackage, IWatcherInfoPackage
from presence.mwi import parseMessageSummary
from presence.packages.dialog import DialogPackage
from presence.packages.messagesummary import MessageSummaryPackage
from presence.packages.winfo import WatcherInfoPackage
from presence.sip.message import Request
from presence.winfo import parseWatcherinfo
from tests.harness import Harness, publish, refresh, subscribe
from tests.test_cluster import cluster  # noqa: F401 (the fixture)
from tests.test_manager import make  # noqa: F401 (the fixture)

BOB = "sip:bob@example.test"
ALICE = "sip:alice@example.test"
DIALOG_INFO = "application/dialog-info+xml"
MWI = "application/simple-message-summary"
WINFO = "application/watcherinfo+xml"


def call(callId: str, state: str, direction: str = "recipient", entity: str = BOB) -> bytes:
    """
    A document as Kamailio's pua_dialoginfo publishes it: one dialog.
    """
    return (
        '<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" '
        'state="full" entity="%s"><dialog id="%s" call-id="%s" local-tag="L%s" remote-tag="R%s" '
        'direction="%s"><state>%s</state><remote><identity>sip:carol@example.test</identity>'
        '<target uri="sip:carol@192.0.2.30:5060"/></remote><local><identity>%s</identity>'
        '<target uri="sip:bob@192.0.2.40:5060"/></local></dialog></dialog-info>'
        % (entity, callId, callId, callId, callId, direction, state, entity)
    ).encode()


def watchDialog(h: Harness, **kw: Any) -> Any:
    kw.setdefault("Event", "dialog")
    kw.setdefault("Accept", DIALOG_INFO)
    return h.subscribed(**kw)


def publishDialog(h: Harness, body: bytes, **kw: Any) -> List[Request]:
    kw.setdefault("Content_Type", DIALOG_INFO)
    _, notifies = h.published(body=body, Event="dialog", **kw)
    return notifies


def dialogsOf(notify: Request) -> List[tuple]:
    assert notify.header("content-type") == DIALOG_INFO
    document = parseDialogInfo(notify.body, BOB)
    return [(d.id, d.state) for d in document.dialogs]


def versionOf(notify: Request) -> int:
    return parseDialogInfo(notify.body).version


def test_packagesProvideTheInterface() -> None:
    for package in (DialogPackage(), MessageSummaryPackage()):
        assert verifyObject(IEventPackage, package)
    assert verifyObject(IWatcherInfoPackage, WatcherInfoPackage())


# -- dialog ------------------------------------------------------------------


def test_dialogSubscription(make: Any) -> None:
    """
    A lamp subscribes: full-state dialog-info about bob, version 0 and no
    dialog; each publication then gives the next version with the call.
    """
    h = make()
    _, _, first = watchDialog(h)
    assert first.header("event") == "dialog"
    root = parseDialogInfo(first.body, BOB)
    assert (root.entity, root.version, root.state, root.dialogs) == (BOB, 0, "full", ())
    (notify,) = publishDialog(h, call("c1", "early"))
    assert versionOf(notify) == 1 and dialogsOf(notify) == [("c1", "early")]
    assert b'<target uri="sip:carol@192.0.2.30:5060"/>' in notify.body
    h.answer(notify)
    (notify,) = publishDialog(h, call("c2", "confirmed"))
    assert versionOf(notify) == 2
    assert dialogsOf(notify) == [("c2", "confirmed"), ("c1", "early")]


def test_dialogPublicationReplacedByEtag(make: Any) -> None:
    """
    A proxy modifies its publication of a call (SIP-If-Match): the call's
    dialog changes state in place, and its removal takes it away.
    """
    h = make()
    watchDialog(h)
    etag, (notify,) = h.published(body=call("c1", "early"), Event="dialog", Content_Type=DIALOG_INFO)
    h.answer(notify)
    h.receive(publish(body=call("c1", "confirmed"), Event="dialog", Content_Type=DIALOG_INFO, SIP_If_Match=etag))
    responses, (notify,) = h.split()
    assert [r.code for r in responses] == [200]
    assert dialogsOf(notify) == [("c1", "confirmed")]
    h.answer(notify)
    newEtag = responses[0].header("sip-etag")
    h.receive(publish(body=b"", Event="dialog", SIP_If_Match=newEtag, Expires="0"))
    responses, (notify,) = h.split()
    assert [r.code for r in responses] == [200]
    assert dialogsOf(notify) == []


def test_dialogStateDoesNotMixWithPresence(make: Any) -> None:
    h = make()
    h.subscribed()
    watchDialog(h)
    (notify,) = publishDialog(h, call("c1", "early"))
    assert notify.header("event") == "dialog"
    assert h.manager.documentOf(BOB).startswith(b"<?xml") and b"dialog" not in h.manager.documentOf(BOB)


def test_oneDialogMode(make: Any) -> None:
    """
    [dialog] one_dialog: a ringing call wins over one in progress.
    """
    h = make(dialogOneDialog=True)
    watchDialog(h)
    h.answer(publishDialog(h, call("c1", "confirmed"))[0])
    (notify,) = publishDialog(h, call("c2", "early"))
    assert dialogsOf(notify) == [("c2", "early")]


def test_idleDummyDialog(make: Any) -> None:
    h = make(dialogIdle=True)
    _, _, first = watchDialog(h)
    assert dialogsOf(first) == [("idle", "terminated")]


def test_dialogFilterByCallId(make: Any) -> None:
    """
    Event: dialog;call-id=...;from-tag=... asks for one dialog only.
    """
    h = make()
    h.published(body=call("c1", "early"), Event="dialog", Content_Type=DIALOG_INFO)
    h.published(body=call("c2", "confirmed"), Event="dialog", Content_Type=DIALOG_INFO)
    _, _, first = watchDialog(h, Event="dialog;call-id=c2;from-tag=Lc2")
    assert dialogsOf(first) == [("c2", "confirmed")]
    _, _, other = watchDialog(h, Event="dialog;call-id=c3")
    assert dialogsOf(other) == []


def test_dialogVersionSurvivesRestart(make: Any) -> None:
    """
    The version is stored with the subscription: after a restart the next
    NOTIFY goes on counting.
    """
    h = make()
    sub, ok, first = watchDialog(h, Expires="600")
    h.answer(publishDialog(h, call("c1", "early"))[0])
    h.restart()
    (notify,) = h.take()
    assert versionOf(notify) == 2
    h.answer(notify)
    h.receive(refresh(sub, ok, 2, Event="dialog", Accept=DIALOG_INFO, Expires="600"))
    responses, (notify,) = h.split()
    assert [r.code for r in responses] == [200] and versionOf(notify) == 3


def test_dialogAcceptAndBodyChecks(make: Any) -> None:
    h = make()
    h.receive(subscribe(Event="dialog", Accept="application/pidf+xml"))
    (response,) = h.responses()
    assert response.code == 406 and response.header("accept") == DIALOG_INFO
    h.receive(publish(body=call("c1", "early"), Event="dialog", Content_Type="application/pidf+xml"))
    (response,) = h.responses()
    assert response.code == 415
    hostile = b'<!DOCTYPE d [<!ENTITY x "x">]>' + call("c1", "early").split(b"?>", 1)[1]
    h.receive(publish(body=hostile, Event="dialog", Content_Type=DIALOG_INFO))
    (response,) = h.responses()
    assert response.code == 400 and "DTD" in response.reason
    h.receive(publish(body=call("c1", "ringing"), Event="dialog", Content_Type=DIALOG_INFO))
    (response,) = h.responses()
    assert response.code == 400 and response.reason == "invalid dialog state"
    h.receive(publish(body=call("c1", "early", entity=ALICE), Event="dialog", Content_Type=DIALOG_INFO))
    (response,) = h.responses()
    assert response.code == 400 and "match" in response.reason


def test_dialogAuthorizedAsPresence(make: Any) -> None:
    """
    Watching a lamp is decided by billing like presence: another customer
    is refused, a blocked watcher is refused, nobody publishes for others.
    """
    h = make()
    h.billing(lambda conn: db.addAccount(conn, BOB, "secret", "acme"))
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "block"))
    h.receive(subscribe(Event="dialog", Accept=DIALOG_INFO))
    (response,) = h.responses()
    assert response.code == 403
    h.billing(lambda conn: db.addAccount(conn, "sip:carol@example.test", "secret", "globex"))
    h.receive(subscribe(Event="dialog", Accept=DIALOG_INFO, fromURI="sip:carol@example.test"))
    (response,) = h.responses()
    assert response.code == 403
    h.receive(publish(body=call("c1", "early"), Event="dialog", Content_Type=DIALOG_INFO, fromURI=ALICE))
    (response,) = h.responses()
    assert response.code == 403


# -- message-summary ----------------------------------------------------------


def test_messageSummary(make: Any) -> None:
    """
    bob's phone watches his own mailbox: no message, then what the
    voicemail system publishes.
    """
    h = make()
    _, _, first = h.subscribed(Event="message-summary", Accept=MWI, fromURI=BOB)
    assert first.header("content-type") == MWI
    assert parseMessageSummary(first.body).waiting is False
    _, (notify,) = h.published(
        body=b"Messages-Waiting: yes\r\nVoice-Message: 2/1 (1/0)\r\n", Event="message-summary", Content_Type=MWI
    )
    summary = parseMessageSummary(notify.body)
    assert summary.waiting and summary.countsOf("voice-message") == (2, 1, 1, 0)


def test_onlyTheOwnerWatchesAMailbox(make: Any) -> None:
    h = make()
    h.receive(subscribe(Event="message-summary", Accept=MWI))
    (response,) = h.responses()
    assert response.code == 403


def test_badMessageSummaryRefused(make: Any) -> None:
    h = make()
    h.receive(publish(body=b"Messages-Waiting: perhaps\r\n", Event="message-summary", Content_Type=MWI))
    (response,) = h.responses()
    assert response.code == 400 and "yes or no" in response.reason


# -- presence.winfo -------------------------------------------------------------


def watchWatchers(h: Harness) -> Any:
    return h.subscribed(Event="presence.winfo", Accept=WINFO, fromURI=BOB)


def subscribeWatcher(h: Harness, **kw: Any) -> Any:
    """
    alice subscribes to bob's presence; her NOTIFY is answered, the
    presence.winfo NOTIFYs it caused are returned.
    """
    sub = subscribe(**kw)
    h.receive(sub)
    responses, notifies = h.split()
    assert [r.code for r in responses] == [200], responses
    for notify in notifies:
        if notify.header("event") == "presence":
            h.answer(notify)
    return sub, responses[0], [n for n in notifies if n.header("event") == "presence.winfo"]


def winfoNotifies(h: Harness) -> List[Request]:
    return [n for n in h.take() if isinstance(n, Request) and n.header("event") == "presence.winfo"]


def watchersIn(notify: Request) -> tuple:
    document = parseWatcherinfo(notify.body)
    (watchers,) = document.lists or (None,)
    assert watchers is None or (watchers.resource, watchers.package) == (BOB, "presence")
    listed = () if watchers is None else tuple((w.uri, w.status, w.event) for w in watchers.watchers)
    return document.version, document.state, listed


def test_watcherInfoFullThenPartial(make: Any) -> None:
    """
    bob watches his watchers: the full list first, then each watcher that
    comes and goes.
    """
    h = make()
    _, _, first = watchWatchers(h)
    assert watchersIn(first) == (0, "full", ())
    sub, ok, (notify,) = subscribeWatcher(h, Expires="600")
    assert watchersIn(notify) == (1, "partial", ((ALICE, "active", "approved"),))
    h.answer(notify)
    h.receive(refresh(sub, ok, 2, Expires="0"))
    (notify,) = winfoNotifies(h)
    assert watchersIn(notify) == (2, "partial", ((ALICE, "terminated", "timeout"),))
    h.answer(notify)
    # The next change tells the new watcher only, alice is not told again.
    _, _, (notify,) = subscribeWatcher(h, fromURI="sip:carol@example.test")
    assert watchersIn(notify) == (3, "partial", (("sip:carol@example.test", "active", "approved"),))
    assert [w.uri for w in parseWatcherinfo(h.manager.documentOf(BOB, "presence.winfo")).lists[0].watchers] == [
        "sip:carol@example.test"
    ]


def test_watcherInfoShowsPolicy(make: Any) -> None:
    """
    A watcher the policy asks about is pending; presence-admin policy
    allow makes it active; block ends it.
    """
    h = make()
    h.billing(lambda conn: db.addAccount(conn, BOB, "secret", "acme"))
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "ask"))
    watchWatchers(h)
    _, _, (notify,) = subscribeWatcher(h, Expires="600")
    assert watchersIn(notify)[1:] == ("partial", ((ALICE, "pending", "subscribe"),))
    h.answer(notify)
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "allow"))
    (notify,) = winfoNotifies(h)
    assert watchersIn(notify)[1:] == ("partial", ((ALICE, "active", "approved"),))
    h.answer(notify)
    h.billing(lambda conn: db.setRule(conn, BOB, ALICE, "block"))
    (notify,) = winfoNotifies(h)
    assert watchersIn(notify)[1:] == ("partial", ((ALICE, "terminated", "rejected"),))


def test_onlyTheOwnerWatchesWatchers(make: Any) -> None:
    h = make()
    h.receive(subscribe(Event="presence.winfo", Accept=WINFO))
    (response,) = h.responses()
    assert response.code == 403
    h.receive(publish(body=b"x", Event="presence.winfo", Content_Type=WINFO))
    (response,) = h.responses()
    assert response.code == 489


# -- across a cluster ------------------------------------------------------------


def test_dialogAndMailboxReplicated(cluster: Any) -> None:  # noqa: F811
    """
    A proxy publishes a call on manager a, a voicemail system a summary:
    the lamp watching on b and the phone watching its mailbox on c are
    told, and only a wrote the publications.
    """
    watchDialog(cluster["b"].harness)
    cluster["c"].harness.subscribed(Event="message-summary", Accept=MWI, fromURI=BOB)
    cluster["a"].harness.published(body=call("c1", "early"), Event="dialog", Content_Type=DIALOG_INFO)
    cluster["a"].harness.published(
        body=b"Messages-Waiting: yes\r\nVoice-Message: 1/0\r\n", Event="message-summary", Content_Type=MWI
    )
    cluster.flush()
    (lamp,) = cluster["b"].notifies()
    assert dialogsOf(lamp) == [("c1", "early")] and versionOf(lamp) == 1
    (mailbox,) = cluster["c"].notifies()
    assert parseMessageSummary(mailbox.body).waiting
    assert cluster["a"].store.calls.count("putPublication") == 2
    assert "putPublication" not in cluster["b"].store.calls


def test_dialogVersionSurvivesAdoption(cluster: Any) -> None:  # noqa: F811
    """
    b dies with a lamp's subscription; a adopts it and its NOTIFYs go on
    counting versions from where b's stopped.
    """
    b = cluster["b"]
    watchDialog(b.harness)
    cluster["c"].harness.published(body=call("c1", "early"), Event="dialog", Content_Type=DIALOG_INFO)
    cluster.flush()
    (notify,) = b.notifies()
    assert versionOf(notify) == 1
    b.crash()
    cluster.cut("a", "b")
    cluster.cut("b", "c")
    cluster["a"].clock.advance(10.5)
    (adopted,) = cluster["a"].notifies()
    assert versionOf(adopted) == 2 and dialogsOf(adopted) == [("c1", "early")]
    cluster["c"].harness.published(body=call("c2", "trying"), Event="dialog", Content_Type=DIALOG_INFO)
    cluster.flush()
    (notify,) = cluster["a"].notifies()
    assert versionOf(notify) == 3
