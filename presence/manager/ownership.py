"""
What a manager serves, and how that changes outside SIP: its state
rebuilt from the store at start (L{Ownership.load}), subscriptions that
move to it from a dead or handing-over peer (L{Ownership.adopt}) or away
from it (L{Ownership.release}, L{Ownership.disown}), and publications
other managers of the cluster accepted (L{Ownership.applyRemote}).

NOTIFY CSeqs of a subscription that moves or reloads continue above the
ceiling in the store, so above any its former owner sent; its package
state (L{presence.interfaces.IEventPackage.render}) comes with it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.manager.state import Presentity, Publication, Subscription
from presence.store.records import PublicationRecord, SubscriptionRecord


class Ownership:
    """
    Loads, adopts and releases the subscriptions of one manager, and
    applies replicated publications.
    """

    log = Logger()

    def __init__(self, manager: Any) -> None:
        """
        @param manager: the L{presence.manager.manager.SubscriptionManager}
            whose model, store and notifier it works with.
        """
        self.manager = manager

    # Start.

    def load(self) -> Deferred:
        """
        Rebuild memory from the store: live publications, then this node's
        subscriptions.  Those that expired while the manager was down are
        removed, and their watchers sent a final NOTIFY.

        Then, with C{[manager] notify_on_start}, every active watcher is
        sent the current state once: what it last saw may be stale, as a
        publication may have expired while the manager was down, or the
        process may have died between committing a PUBLISH and sending its
        NOTIFYs.  Those NOTIFYs are paced (L{Notifier.pace}) at C{[cluster]
        adopt_notify_rate} per second, as after an adoption, so that a
        restart with many watchers does not flood the dispatcher; a fenced
        manager (a cluster's, until its lease is held) starts them once
        unfenced.  Their CSeqs continue above the stored ceiling.  A pending
        watcher gets nothing: it has been told all it may know.
        """
        manager = self.manager
        d = manager.store.loadPublications()
        d.addCallback(self._loadPublications)
        d.addCallback(lambda _: self._loadSubscriptionPages(None, [0]))
        d.addCallback(lambda _: manager.model.composeWatched())
        if manager.config.notifyOnStart:
            d.addCallback(lambda _: self._notifyLoaded())
        return d

    def _loadSubscriptionPages(self, after: Optional[str], expired: List[int]) -> Deferred:
        manager = self.manager
        pageSize = manager.loadPageSize
        d = manager.store.loadSubscriptions(manager.node, after, pageSize)

        def loaded(records: List[SubscriptionRecord]) -> Any:
            expired[0] += self._loadSubscriptions(records)
            if len(records) >= pageSize:
                return self._loadSubscriptionPages(records[-1].id, expired)
            self.log.info(
                "Loaded {subscriptions} subscriptions and {publications} publications "
                "({expired} subscriptions had expired)",
                subscriptions=len(manager.model.subscriptions),
                publications=len(manager.model.publications),
                expired=expired[0],
            )
            return None

        return d.addCallback(loaded)

    def _loadPublications(self, records: Iterable[PublicationRecord]) -> None:
        manager = self.manager
        now = manager.clock.seconds()
        for record in records:
            if record.expiresAt <= now:
                manager.store.removePublication(record.etag).addErrback(
                    manager.storeFailed, "stale publication"
                )
                continue
            package = manager.packages.get(record.event)
            if package is None:
                self.log.warn(
                    "Not serving stored publication {etag}: no event package {event}",
                    etag=record.etag, event=record.event,
                )
                continue
            try:
                document = package.parse(record.body, record.presentity)
            except ValueError as e:
                self.log.warn("Dropping unreadable stored publication {etag}: {e}", etag=record.etag, e=str(e))
                continue
            manager.model.put(
                Publication(
                    record.etag, record.presentity, record.body, document,
                    record.expiresAt, record.modifiedAt, record.version,
                    event=record.event, contentType=record.contentType,
                )
            )

    def _loadSubscriptions(self, records: Iterable[SubscriptionRecord]) -> int:
        """
        Put loaded subscriptions in memory; end those that expired.

        @return: how many had expired.
        """
        manager = self.manager
        model = manager.model
        now = manager.clock.seconds()
        expired = 0
        for record in records:
            sub = Subscription.fromRecord(record)
            model.dialogs.add(sub)
            if record.expiresAt <= now:
                expired += 1
                manager.terminate(sub, "timeout")
                continue
            if self._unserved(sub):
                continue
            model.keep(sub)
        return expired

    def _unserved(self, sub: Subscription) -> bool:
        """
        End C{sub} if its event package is not served (any more): its
        watcher is told, and may subscribe again to hear 489.
        """
        if self.manager.packages.get(sub.event) is not None:
            return False
        self.log.warn(
            "Ending subscription {id}: no event package {event}", id=sub.id, event=sub.event
        )
        self.manager.model.dialogs.add(sub)
        self.manager.terminate(sub, "deactivated")
        return True

    def _notifyLoaded(self) -> None:
        """
        Queue one paced NOTIFY with the current state for every active
        subscription just loaded (see L{load}).
        """
        notifier = self.manager.notifier
        count = notifier.pace(
            sub for sub in self.manager.model.subscriptions.values() if sub.state == "active"
        )
        if count:
            self.log.info(
                "Notifying {count} watchers of their current state, at most {rate} per second",
                count=count,
                rate=notifier.paceRate,
            )

    # Subscriptions that change owner.

    def adopt(self, records: Iterable[SubscriptionRecord], notify: bool = True) -> int:
        """
        Serve subscriptions whose ownership just moved to this manager in
        the store (a dead manager's, or one handed over).

        @param notify: send each active watcher the current state (after
            a death: it may have missed changes), paced in order at
            C{[cluster] adopt_notify_rate} NOTIFYs per second
            (L{Notifier.pace}) so that a large adoption does not flood
            the dispatcher.
        @return: how many are now served (expired ones end instead).
        """
        manager = self.manager
        model = manager.model
        now = manager.clock.seconds()
        count = 0
        toNotify: List[Subscription] = []
        for record in records:
            if record.id in model.subscriptions:
                continue
            sub = Subscription.fromRecord(record)
            if record.expiresAt <= now:
                model.dialogs.add(sub)
                manager.terminate(sub, "timeout")
                continue
            if self._unserved(sub):
                continue
            model.keep(sub)
            count += 1
            if notify and sub.state == "active":
                toNotify.append(sub)
        if toNotify:
            manager.notifier.pace(toNotify)
        return count

    def release(self, subscriptionId: str, owner: str) -> Deferred:
        """
        Hand C{subscriptionId} over to the manager C{owner}: stop serving
        it (no final NOTIFY), then record C{owner} and a CSeq ceiling above
        every NOTIFY we sent.

        @return: a Deferred firing with C{True} once committed, C{False}
            when we do not hold it or the write failed (we then keep it).
        """
        manager = self.manager
        sub = manager.model.subscriptions.get(subscriptionId)
        if sub is None or sub.terminated:
            return succeed(False)
        manager.forget(sub)
        ceiling = max(sub.cseqCeiling, sub.cseq + 1)

        def failed(failure: Failure) -> bool:
            manager.storeFailed(failure, "hand-over of " + sub.id)
            if sub.id not in manager.model.subscriptions:
                manager.model.keep(sub)
            return False

        d = manager.store.updateSubscription(sub.id, owner=owner, localCSeq=ceiling)
        return d.addCallbacks(lambda _: True, failed)

    def disown(self, subscriptionIds: Iterable[str]) -> int:
        """
        Stop serving subscriptions another manager now owns (it adopted
        them while we were cut off from the cluster), without a final
        NOTIFY: the watcher's subscription goes on there.

        @return: how many were dropped.
        """
        manager = self.manager
        count = 0
        for subscriptionId in subscriptionIds:
            sub = manager.model.subscriptions.get(subscriptionId)
            if sub is not None:
                manager.forget(sub)
                count += 1
        return count

    # Publications from the cluster.

    def applyRemote(self, puts: List[Publication], removes: List[Tuple[str, str]]) -> int:
        """
        Apply publications another manager accepted (C{puts}) and ended
        (C{removes}: C{(presentity, etag)}), already checked and ordered
        by the cluster; then recompose and notify our watchers once per
        resource.  Nothing is written: the origin wrote the store.

        @return: how many changed our memory.
        """
        manager = self.manager
        model = manager.model
        changed: Dict[Tuple[str, str], Presentity] = {}
        count = 0
        for presentity, etag in removes:
            pub = model.publications.pop(etag, None)
            if pub is not None:
                model.publicationExpiry.discard(etag, pub.expiresAt)
            else:
                pub = model.held(presentity, etag)
            if pub is None:
                continue
            pres = model.resources[pub.event].get(pub.presentity)
            if pres is not None and pres.publications.pop(etag, None) is not None:
                changed[(pub.event, pres.aor)] = pres
                count += 1
        for pub in puts:
            changed[(pub.event, pub.presentity)] = model.put(pub)
            count += 1
        # PUBLISH-to-NOTIFY from the update's arrival here: the origin's
        # clock may differ, and a resync brings old publications.
        now = manager.clock.seconds()
        for (event, _), pres in changed.items():
            manager.changed(pres, event, now)
        return count
