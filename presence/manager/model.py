"""
The manager's in-memory model: every subscription it serves, the dialogs
they live in, every live publication, and per (resource, event package)
the L{Presentity} holding a resource's publications, watchers and composed
document; and the expiry wheels of subscriptions and publications.

No SIP and no store here: the handlers (L{presence.manager.subscribe},
L{presence.manager.publish}, L{presence.manager.ownership}) decide what
changes and when, this module keeps the indexes consistent with each
other.  What a body means is the package's (L{IEventPackage}); the model
only asks it to compose.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Hashable, List, Optional

from presence.manager.expiry import ExpiryWheel, expiresAtIn
from presence.manager.state import DialogIndex, Presentity, Publication, Subscription
from presence.sip.target import Target

TARGETS_REBUILD_MIN = 1024


class ManagerState:
    """
    What one manager holds.

    @ivar subscriptions: id to subscription (all packages).
    @ivar dialogs: the subscriptions by dialog, for in-dialog requests.
    @ivar publications: entity-tag to live publication (all packages);
        one being refreshed or modified is claimed: out of this table, but
        still in its resource's until the store has answered.
    @ivar resources: event package to AOR to L{Presentity}, for the
        resources with publications or watchers.
    @ivar expiry: the subscriptions' expiry wheel.
    @ivar publicationExpiry: the publications' expiry wheel.
    @ivar registrations: the registrar whose bindings give state to a
        resource without publication, or L{None}.
    """

    def __init__(
        self,
        clock: Any,
        packages: Any,
        subscriptionsExpired: Callable[[List[Hashable]], None],
        publicationsExpired: Callable[[List[Hashable]], None],
    ) -> None:
        """
        @param packages: the L{presence.interfaces.IPackageRegistry}.
        @param subscriptionsExpired: called with the ids of subscriptions
            whose time is up (it must end them).
        @param publicationsExpired: called with the entity-tags of
            publications whose time is up (it must end them).
        """
        self.packages = packages
        self.subscriptions: Dict[str, Subscription] = {}
        self.dialogs = DialogIndex()
        self.publications: Dict[str, Publication] = {}
        self.resources: Dict[str, Dict[str, Presentity]] = {p.event: {} for p in packages}
        # Two wheels keyed by the subscription id and the entity-tag
        # themselves: no key string of its own per entry, and no deadline
        # either (they ask the subscription or publication for it).
        self.expiry = ExpiryWheel(clock, subscriptionsExpired, expiresAtIn(self.subscriptions))
        self.publicationExpiry = ExpiryWheel(clock, publicationsExpired, expiresAtIn(self.publications))
        self.registrations: Any = None
        # Equal targets shared by the subscriptions that have them (a
        # phone's every dialog comes from one address): a L{Target} and its
        # host string each cost an eighth of a subscription's memory.
        # Rebuilt from the live subscriptions when it has doubled, so the
        # targets of ended ones do not stay.
        self._targets: Dict[Target, Target] = {}
        self._targetsRebuildAt = TARGETS_REBUILD_MIN

    # Resources.

    def resource(self, aor: str, event: str) -> Presentity:
        """
        The resource C{aor} of package C{event}, made if need be (then
        L{release} it when done, should it hold nothing).
        """
        table = self.resources[event]
        pres = table.get(aor)
        if pres is None:
            pres = table[aor] = Presentity(aor)
            if self.registrations is not None:
                pres.registered = self.registrations.contactOf(aor)
        return pres

    def release(self, pres: Presentity, event: str) -> None:
        """
        Forget C{pres} if nothing refers to it any more.
        """
        if pres.idle():
            self.resources[event].pop(pres.aor, None)

    def documentOf(self, aor: str, event: str) -> bytes:
        """
        The composed document of C{aor} in C{event}, composing it if need be.
        """
        pres = self.resource(aor, event)
        document = pres.document
        if document is None:
            document = pres.compose(self.packages.get(event))
        self.release(pres, event)
        return document

    def changed(self, pres: Presentity, event: str) -> List[Subscription]:
        """
        Recompose C{pres} after a change of its publications or
        registration.  Without watchers nothing is composed now: the
        document is composed when first asked for (L{documentOf}), which a
        resource nobody watches may never be.

        @return: the active watchers to notify: none unless the composed
            bytes changed (a pending watcher is told nothing until it is
            allowed).
        """
        toNotify: List[Subscription] = []
        if not pres.watchers:
            pres.document = None
        else:
            before = pres.document
            if pres.compose(self.packages.get(event)) != before:
                subs = self.subscriptions
                for sid in pres.watchers:
                    sub = subs[sid]
                    if sub.state == "active":
                        toNotify.append(sub)
        self.release(pres, event)
        return toNotify

    def composeWatched(self) -> None:
        """
        Compose the documents of the watched resources, so that a change
        is told from the state they had (L{changed}).
        """
        for event, table in self.resources.items():
            package = self.packages.get(event)
            for pres in table.values():
                if pres.watchers:
                    pres.compose(package)

    # Subscriptions.

    def keep(self, sub: Subscription) -> None:
        """
        Put C{sub} in memory: indexes, watchers, expiry.
        """
        sub.terminated = False
        self.subscriptions[sub.id] = sub
        self.dialogs.add(sub)
        pres = self.resource(sub.presentity, sub.event)
        pres.addWatcher(sub.id)
        # One copy of each AOR however many dialogs name it: the
        # resource's own for the presentity, the interned one for the
        # watcher (a phone watches many, a presentity has many watchers;
        # a copy each cost a tenth of a subscription's memory), and of the
        # phone's Contact, the same in all its dialogs.
        sub.presentity = pres.aor
        sub.watcher = sys.intern(sub.watcher)
        sub.remoteTarget = sys.intern(sub.remoteTarget)
        sub.target = self.sharedTarget(sub.target)
        self.expiry.set(sub.id, sub.expiresAt)

    def forget(self, sub: Subscription) -> None:
        """
        Take C{sub} out of every index and mark it terminated.
        """
        sub.terminated = True
        if self.subscriptions.pop(sub.id, None) is sub:
            self.expiry.discard(sub.id, sub.expiresAt)
        self.dialogs.discard(sub)
        pres = self.resources[sub.event].get(sub.presentity)
        if pres is not None:
            pres.removeWatcher(sub.id)
            self.release(pres, sub.event)

    def sharedTarget(self, target: Target) -> Target:
        """
        The target equal to C{target} that subscriptions already share, or
        C{target} itself, shared from now on.
        """
        targets = self._targets
        shared = targets.get(target)
        if shared is not None:
            return shared
        if len(targets) >= self._targetsRebuildAt:
            targets = self._targets = {s.target: s.target for s in self.subscriptions.values()}
            self._targetsRebuildAt = max(TARGETS_REBUILD_MIN, 2 * len(targets))
        return targets.setdefault(target, target)

    def moveExpiry(self, sub: Subscription, expiresAt: float) -> None:
        self.expiry.discard(sub.id, sub.expiresAt)
        sub.expiresAt = expiresAt
        self.expiry.set(sub.id, expiresAt)

    # Publications.

    def put(self, pub: Publication, replaced: Optional[Publication] = None) -> Presentity:
        """
        Make C{pub} live (replacing C{replaced}, whose claim it ends).

        @return: its resource, for L{changed}.
        """
        pres = self.resource(pub.presentity, pub.event)
        pres.version = max(pres.version, pub.version)
        if replaced is not None:
            pres.publications.pop(replaced.etag, None)
        pres.publications[pub.etag] = pub
        old = self.publications.get(pub.etag)
        if old is not None:
            self.publicationExpiry.discard(pub.etag, old.expiresAt)
        self.publications[pub.etag] = pub
        self.publicationExpiry.set(pub.etag, pub.expiresAt)
        return pres

    def claim(self, pub: Publication) -> None:
        """
        Claim C{pub}'s entity-tag for a request that refreshes, modifies or
        removes it: a racing request naming it finds nothing.  Its
        resource keeps it until L{put} or L{drop}.
        """
        del self.publications[pub.etag]
        self.publicationExpiry.discard(pub.etag, pub.expiresAt)

    def unclaim(self, pub: Publication) -> None:
        """
        Give back a claimed entity-tag whose request failed.
        """
        pres = self.resources[pub.event].get(pub.presentity)
        if pres is not None:
            if pub.etag in pres.publications:
                self.publications[pub.etag] = pub
                self.publicationExpiry.set(pub.etag, pub.expiresAt)
            self.release(pres, pub.event)

    def drop(self, pub: Publication) -> Presentity:
        """
        End C{pub} (its entity-tag no longer live or claimed).

        @return: its resource, for L{changed}.
        """
        if self.publications.get(pub.etag) is pub:
            del self.publications[pub.etag]
            self.publicationExpiry.discard(pub.etag, pub.expiresAt)
        pres = self.resource(pub.presentity, pub.event)
        pres.publications.pop(pub.etag, None)
        return pres

    def held(self, presentity: str, etag: str) -> Optional[Publication]:
        """
        The publication C{etag} of C{presentity}, claimed ones included.
        """
        for table in self.resources.values():
            pres = table.get(presentity)
            if pres is not None:
                pub = pres.publications.get(etag)
                if pub is not None:
                    return pub
        return None

    def sizes(self) -> Dict[str, int]:
        return {
            "subscriptions": len(self.subscriptions),
            "dialogs": len(self.dialogs),
            "publications": len(self.publications),
            "presentities": sum(len(table) for table in self.resources.values()),
        }

