"""
Tests of the manager's seams: the event package registry and router
(L{presence.packages}, L{presence.interfaces.IEventPackage}) and the
interfaces the cluster, the notifier and the admin side see the manager
through.

A second package, L{CountPackage}, stands for the packages to come: its
bodies are C{count=N} lines, its render hook numbers every NOTIFY of a
subscription (as the dialog package's C{version} does), and
L{MailboxPackage} is one only the resource's owner may watch.
"""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
from twisted.spread import jelly, pb
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from presence.cluster.group import LocalPeer, PeerGroup
from presence.cluster.messages import PublicationUpdate
from presence.interfaces import (
    IClusterMember,
    IEventPackage,
    INotifyHost,
    IPackageRegistry,
    ISubscriptionManager,
)
from presence.manager.state import Publication
from presence.packages import PackageRegistry, acceptable, defaultPackages
from presence.packages.presence import PresencePackage
from presence.pidf import parsePidf
from presence.sip.message import Request
from presence.store import MemoryStore
from tests.harness import PUBLISHER, Harness, publish, refresh, subscribe

BOB = "sip:bob@example.test"
COUNT = "application/x-count"


@implementer(IEventPackage)
class CountPackage:
    """
    A package whose state is a number per publication; its watchers get
    the numbers newest first, each NOTIFY headed by its sequence number in
    the subscription.
    """

    event = "x-count"
    bodyTypes = (COUNT,)
    publishTypes = (COUNT,)
    ownerOnly = False

    def parse(self, body: bytes, resource: str) -> int:
        if not body.startswith(b"count=") or not body[6:].isdigit():
            raise ValueError("Bad Count")
        return int(body[6:])

    def compose(self, resource: str, documents: List[int]) -> bytes:
        return b",".join(b"%d" % (n,) for n in documents)

    def withoutState(self, resource: str, registered: Optional[str]) -> bytes:
        return b"none" if registered is None else b"registered"

    def initialState(self, params: Any) -> str:
        return ""

    def render(self, subscription: Any, body: bytes) -> bytes:
        number = int(subscription.packageState or "-1") + 1
        subscription.packageState = str(number)
        return b"#%d %s" % (number, body)


@implementer(IEventPackage)
class MailboxPackage(CountPackage):
    """
    The count package's bodies, watched only by the resource's owner and
    published by nobody.
    """

    event = "x-mailbox"
    publishTypes = ()
    ownerOnly = True


class PackageHarness(Harness):
    def _newManager(self) -> Any:
        from presence.manager.manager import SubscriptionManager

        packages = PackageRegistry([PresencePackage(), CountPackage(), MailboxPackage()])
        return SubscriptionManager(
            self.core, self.store, self.config, self.clock, self.authorizer, self.digest, packages
        )


@pytest.fixture
def h():
    harness = PackageHarness()
    yield harness
    harness.stop()
    assert harness.clock.getDelayedCalls() == []


def countSubscribe(**kw: Any) -> Request:
    kw.setdefault("Event", "x-count")
    kw.setdefault("Accept", COUNT)
    return subscribe(**kw)


def countPublish(body: bytes, **kw: Any) -> Request:
    kw.setdefault("Event", "x-count")
    kw.setdefault("Content_Type", COUNT)
    return publish(body=body, **kw)


def codes(h: Harness) -> List[int]:
    return [r.code for r in h.responses()]


# The interfaces.


def test_managerProvidesItsInterfaces(h):
    """
    The manager provides what the admin side, the cluster and the
    notifier see of it.
    """
    for interface in (ISubscriptionManager, IClusterMember, INotifyHost):
        assert verifyObject(interface, h.manager)


def test_packagesProvideTheirInterfaces():
    registry = defaultPackages()
    assert verifyObject(IPackageRegistry, registry)
    assert registry.names() == ["presence", "dialog", "message-summary", "presence.winfo"]
    for package in registry:
        assert verifyObject(IEventPackage, package)
    assert registry.get("conference") is None


def test_registryRefusesDuplicatesNothingAndNonPackages():
    with pytest.raises(ValueError):
        PackageRegistry([PresencePackage(), PresencePackage()])
    with pytest.raises(ValueError):
        PackageRegistry([])
    with pytest.raises(Invalid):
        PackageRegistry([object()])


def test_acceptable():
    package = CountPackage()
    assert acceptable(package, [])
    assert acceptable(package, [COUNT])
    assert acceptable(package, ["application/*"])
    assert acceptable(package, ["text/plain", "*/*"])
    assert not acceptable(package, ["application/pidf+xml"])
    assert not acceptable(package, ["text/*"])


def test_coreAdvertisesThePackages(h):
    assert h.core.allowEvents == ["presence", "x-count", "x-mailbox"]
    assert h.core.acceptTypes == ["application/pidf+xml", COUNT]


def test_sizesAndLookups(h):
    """
    What the admin side reads: the counts over all packages, one
    resource per (AOR, package).
    """
    h.subscribed()
    h.receive(countSubscribe())
    h.take()
    h.receive(countPublish(b"count=3"), PUBLISHER)
    h.take()
    sizes = h.manager.sizes()
    assert sizes == {
        "subscriptions": 2, "dialogs": 2, "publications": 1, "presentities": 2, "pacedWaiting": 0,
    }
    assert h.manager.resource(BOB).publications == {}
    assert len(h.manager.resource(BOB, "x-count").publications) == 1
    assert h.manager.resource(BOB, "nothing") is None
    assert h.manager.documentOf(BOB, "x-count") == b"3"
    assert sorted(s.event for s in h.manager.allSubscriptions()) == ["presence", "x-count"]


# The router.


def test_unknownEventListsEveryPackage(h):
    for message in (subscribe(Event="dialog"), publish(Event="dialog")):
        h.receive(message)
        (response,) = h.responses()
        assert response.code == 489
        assert response.headerValues("allow-events") == ["presence", "x-count", "x-mailbox"]


def test_publishToAPackageWithoutPublications(h):
    h.receive(countPublish(b"count=1", Event="x-mailbox"), PUBLISHER)
    (response,) = h.responses()
    assert response.code == 489


def test_acceptOfAnotherPackage(h):
    h.receive(countSubscribe(Accept="application/pidf+xml"))
    (response,) = h.responses()
    assert (response.code, response.header("accept")) == (406, COUNT)
    h.receive(subscribe(Accept=COUNT))
    (response,) = h.responses()
    assert (response.code, response.header("accept")) == (406, "application/pidf+xml")


def test_publishBodyOfAnotherPackage(h):
    h.receive(countPublish(b"count=1", Content_Type="application/pidf+xml"), PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.header("accept")) == (415, COUNT)
    h.receive(countPublish(b"many"), PUBLISHER)
    (response,) = h.responses()
    assert (response.code, response.reason) == (400, "Bad Count")
    assert h.manager.sizes()["publications"] == 0


def test_statePerResourceAndPackage(h):
    """
    Publications of one package never reach the watchers of another: each
    watcher gets its package's document, Event and Content-Type.
    """
    h.subscribed()
    h.receive(countSubscribe())
    (ok,), (first,) = h.split()
    assert ok.code == 200
    assert first.header("event") == "x-count"
    assert first.header("content-type") == COUNT
    assert first.body == b"#0 none"
    h.answer(first)
    h.receive(countPublish(b"count=7"), PUBLISHER)
    (published,), notifies = h.split()
    assert published.code == 200
    assert [(n.header("event"), n.body) for n in notifies] == [("x-count", b"#1 7")]
    etag = published.header("sip-etag")
    stored = h.store.publications[etag]
    assert (stored.event, stored.contentType) == ("x-count", COUNT)
    # The presence watcher saw nothing; its document is still bob's own.
    assert b"basic" in h.manager.documentOf(BOB)
    # A modification in the wrong package does not find the entity-tag.
    h.receive(publish(SIP_If_Match=etag), PUBLISHER)
    assert codes(h) == [412]


def test_inDialogRequestOfAnotherPackage(h):
    sub, ok, _ = h.subscribed()
    h.receive(refresh(sub, ok, 2, Event="x-count", Accept=COUNT))
    assert codes(h) == [481]


def test_renderStateIsStoredAndSurvivesRestart(h):
    """
    What a package keeps per subscription (its C{packageState}) is written
    with the subscription as the render hook changes it, and a restarted
    manager goes on from there.
    """
    h.receive(countSubscribe())
    (ok,), (first,) = h.split()
    h.answer(first)
    h.receive(countPublish(b"count=1"), PUBLISHER)
    (_,), (second,) = h.split()
    assert second.body == b"#1 1"
    h.answer(second)
    (record,) = h.store.subscriptions.values()
    assert (record.event, record.accept, record.packageState) == ("x-count", COUNT, "1")
    h.restart()
    (again,) = [m for m in h.take() if isinstance(m, Request)]
    assert again.body == b"#2 1"


def test_adoptedSubscriptionKeepsItsPackageState(h):
    h.receive(countSubscribe())
    (ok,), (first,) = h.split()
    h.answer(first)
    (record,) = h.store.subscriptions.values()
    sub = h.manager.subscription(record.id)
    assert h.manager.release(record.id, "other").result is True
    assert h.manager.subscription(record.id) is None
    assert h.manager.adopt([h.store.subscriptions[record.id]]) == 1
    (notify,) = [m for m in h.take() if isinstance(m, Request)]
    assert notify.body == b"#1 none"
    assert h.manager.subscription(record.id) is not sub


def test_ownerOnlyPackage(h):
    """
    Only the resource's own account may watch a package of the owner's
    alone; billing is not asked.
    """
    h.receive(countSubscribe(Event="x-mailbox"))
    (response,) = h.responses()
    assert (response.code, response.reason) == (403, "Not Your Resource")
    h.receive(countSubscribe(Event="x-mailbox", fromURI=BOB))
    (ok,), (notify,) = h.split()
    assert ok.code == 200
    assert notify.header("subscription-state").startswith("active")


def test_clusterMemberPublications(h):
    """
    Replicated publications go through the package that parses them, and
    are found by entity-tag, claimed or not.
    """
    manager = h.manager
    document = manager.parsePublication("x-count", b"count=5", BOB)
    with pytest.raises(ValueError):
        manager.parsePublication("dialog", b"", BOB)
    with pytest.raises(ValueError):
        manager.parsePublication("presence", b"<nope/>", BOB)
    now = h.clock.seconds()
    pub = Publication("e1", BOB, b"count=5", document, now + 60, now, 1, "m2", "x-count", COUNT)
    assert manager.applyRemote([pub], []) == 1
    assert manager.publication("e1") is pub
    assert manager.heldPublication(BOB, "e1") is pub
    assert manager.heldPublication("sip:carol@example.test", "e1") is None
    assert manager.publicationKeys() == [(BOB, "e1")]
    assert manager.applyRemote([], [(BOB, "e1")]) == 1
    assert manager.publication("e1") is None and manager.publicationKeys() == []


def test_presencePackage():
    package = PresencePackage()
    body = (
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
        b'<tuple id="t"><status><basic>open</basic></status></tuple></presence>' % (BOB.encode(),)
    )
    document = package.parse(body, BOB)
    assert package.compose(BOB, [document]) == package.compose(BOB, [parsePidf(body, BOB)])
    assert b"closed" in package.withoutState(BOB, None)
    assert b"open" in package.withoutState(BOB, "sip:bob@192.0.2.5")
    with pytest.raises(ValueError):
        package.parse(b"<!DOCTYPE x [<!ENTITY a 'b'>]><presence/>", BOB)
    assert package.render(object(), body) is body


# Replication of every package's publications.


def test_packageUpdateCrossesJelly():
    """
    An update of another package carries its package and content type;
    one of presence has the state managers before event packages send
    and expect.
    """
    presence = PublicationUpdate(BOB, "e1", b"<presence/>", 10.0, 5.0, 1, "a")
    assert sorted(presence.getStateToCopy()) == [
        "body", "etag", "expiresAt", "modifiedAt", "origin", "presentity", "removed", "replaces", "version",
    ]
    counted = PublicationUpdate(BOB, "e2", b"count=1", 10.0, 5.0, 1, "a", event="x-count", contentType=COUNT)
    copied = jelly.unjelly(jelly.jelly([presence, counted]), taster=pb.globalSecurity)
    assert copied == [presence, counted]
    assert (copied[1].event, copied[1].contentType) == ("x-count", COUNT)
    assert (copied[0].event, copied[0].contentType) == ("presence", "application/pidf+xml")


@pytest.mark.parametrize(
    "change",
    [{"event": ""}, {"event": 7}, {"contentType": "x" * 5000}, {"event": "x-count", "contentType": None}],
)
def test_packageUpdateRefusesBadState(change):
    state = PublicationUpdate(BOB, "e2", b"count=1", 10.0, 5.0, 1, "a", event="x-count", contentType=COUNT)
    state = state.getStateToCopy()
    state.update(change)
    with pytest.raises(ValueError):
        PublicationUpdate().setCopyableState(state)
    del state["contentType"]
    with pytest.raises(ValueError):
        PublicationUpdate().setCopyableState(state)


def test_packagePublicationReplicated():
    """
    A publication of another package accepted on one manager reaches the
    watchers of another, parsed by that package; its removal too.
    """
    a, b = PackageHarness(store=MemoryStore(), node="a"), PackageHarness(store=MemoryStore(), node="b")
    groups = {}
    for harness in (a, b):
        group = groups[harness.config.node] = PeerGroup(harness.config.node, ["a", "b"], harness.clock)
        group.attach(harness.manager)
    groups["a"].peerUp("b", LocalPeer(groups["b"], "a"))
    groups["b"].peerUp("a", LocalPeer(groups["a"], "b"))
    try:
        b.receive(countSubscribe())
        (ok,), (first,) = b.split()
        b.answer(first)
        a.receive(countPublish(b"count=4"), PUBLISHER)
        (published,) = a.responses()
        etag = published.header("sip-etag")
        a.clock.advance(0)
        (notify,) = [m for m in b.take() if isinstance(m, Request)]
        assert (notify.header("event"), notify.body) == ("x-count", b"#1 4")
        held = b.manager.publication(etag)
        assert (held.event, held.contentType, held.origin, held.document) == ("x-count", COUNT, "a", 4)
        b.answer(notify)
        a.receive(countPublish(b"", SIP_If_Match=etag, Expires="0"), PUBLISHER)
        assert [r.code for r in a.responses()] == [200]
        a.clock.advance(0)
        (notify,) = [m for m in b.take() if isinstance(m, Request)]
        assert notify.body == b"#2 none" and b.manager.publication(etag) is None
        b.answer(notify)
    finally:
        for name, harness in (("a", a), ("b", b)):
            groups[name].stop()
            harness.stop()


def test_finalNotifyRendersWithoutStoreWrite(h):
    """
    The final NOTIFY of an expired subscription carries its state,
    rendered, but its package state is not written: the row is gone.
    """
    h.receive(countSubscribe(Expires="60"))
    (ok,), (first,) = h.split()
    h.answer(first)
    h.clock.advance(61)
    final = [m for m in h.take() if isinstance(m, Request)][-1]
    assert final.header("subscription-state") == "terminated;reason=timeout"
    assert final.body == b"#1 none"
    assert h.store.subscriptions == {}
    assert h.manager.counters["storeErrors"] == 0
