"""
An in-memory L{IStore} for unit tests of the subscription manager.

It keeps the Deferred contract of L{presence.store.sql.SQLStore} (same
results, same exception types, same refusal when not running) but fires
synchronously and needs neither a reactor nor threads, so manager tests stay
deterministic.  Nothing survives the process.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from presence.interfaces import IBindingStore, ILeaseStore, IStore
from presence.store.errors import DuplicateRecord, NoSuchRecord, StoreNotRunning
from presence.store.records import (
    BindingRecord,
    LeaseRecord,
    PublicationRecord,
    SubscriptionRecord,
    checkSubscriptionChanges,
)


@implementer(IStore, IBindingStore, ILeaseStore)
class MemoryStore:
    """
    Subscriptions, publications, bindings and leases in dictionaries.

    @ivar subscriptions: id -> L{SubscriptionRecord}; tests may inspect it.
    @ivar publications: etag -> L{PublicationRecord}; tests may inspect it.
    @ivar bindings: id -> L{BindingRecord}; tests may inspect it.
    @ivar leases: node -> L{LeaseRecord}; tests may inspect it.
    @ivar clock: the store's clock for leases (C{seconds()}): the
        database's clock of L{ILeaseStore}.
    """

    def __init__(self, clock: Any = None) -> None:
        """
        @param clock: an C{IReactorTime} whose C{seconds()} leases are
            measured with (a test's C{Clock}); the host's clock if
            L{None}.
        """
        self.subscriptions: Dict[str, SubscriptionRecord] = {}
        self.publications: Dict[str, PublicationRecord] = {}
        self.bindings: Dict[str, BindingRecord] = {}
        self.leases: Dict[str, LeaseRecord] = {}
        self.clock = clock
        self.running = False

    #: Writes waiting: none, every write here completes at once.
    pendingWrites = 0

    def _now(self) -> float:
        return time.time() if self.clock is None else self.clock.seconds()

    def _check(self) -> Optional[Deferred]:
        """
        @return: a failed Deferred if the store is not running, else C{None}.
        """
        if not self.running:
            return fail(StoreNotRunning("store is not running"))
        return None

    def start(self) -> Deferred:
        """
        Become usable.  See L{IStore.start}.
        """
        self.running = True
        return succeed(None)

    def stop(self) -> Deferred:
        """
        Refuse further work.  See L{IStore.stop}.
        """
        self.running = False
        return succeed(None)

    def addSubscription(self, record: SubscriptionRecord) -> Deferred:
        """
        See L{IStore.addSubscription}.
        """
        if not isinstance(record, SubscriptionRecord):
            return fail(TypeError("expected a SubscriptionRecord, got %r" % (type(record),)))
        refused = self._check()
        if refused is not None:
            return refused
        if record.id in self.subscriptions:
            return fail(DuplicateRecord("subscription %r exists" % (record.id,)))
        self.subscriptions[record.id] = record
        return succeed(None)

    def updateSubscription(self, subscriptionId: str, **changes: object) -> Deferred:
        """
        See L{IStore.updateSubscription}.
        """
        try:
            checked = checkSubscriptionChanges(changes)
        except (TypeError, ValueError) as e:
            return fail(e)
        refused = self._check()
        if refused is not None:
            return refused
        current = self.subscriptions.get(subscriptionId)
        if current is None:
            return fail(NoSuchRecord("no subscription %r" % (subscriptionId,)))
        self.subscriptions[subscriptionId] = dataclasses.replace(current, **checked)
        return succeed(None)

    def removeSubscription(self, subscriptionId: str) -> Deferred:
        """
        See L{IStore.removeSubscription}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        self.subscriptions.pop(subscriptionId, None)
        return succeed(None)

    def putPublication(self, record: PublicationRecord) -> Deferred:
        """
        See L{IStore.putPublication}.
        """
        if not isinstance(record, PublicationRecord):
            return fail(TypeError("expected a PublicationRecord, got %r" % (type(record),)))
        refused = self._check()
        if refused is not None:
            return refused
        self.publications[record.etag] = record
        return succeed(None)

    def replacePublication(self, oldEtag: str, record: PublicationRecord) -> Deferred:
        """
        See L{IStore.replacePublication}.
        """
        if not isinstance(record, PublicationRecord):
            return fail(TypeError("expected a PublicationRecord, got %r" % (type(record),)))
        refused = self._check()
        if refused is not None:
            return refused
        if self.publications.pop(oldEtag, None) is None:
            return fail(NoSuchRecord("no publication %r" % (oldEtag,)))
        self.publications[record.etag] = record
        return succeed(None)

    def removePublication(self, etag: str) -> Deferred:
        """
        See L{IStore.removePublication}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        self.publications.pop(etag, None)
        return succeed(None)

    def removeExpired(self, now: float) -> Deferred:
        """
        See L{IStore.removeExpired}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        subs = [k for k, r in self.subscriptions.items() if r.expiresAt <= now]
        pubs = [k for k, r in self.publications.items() if r.expiresAt <= now]
        for k in subs:
            del self.subscriptions[k]
        for k in pubs:
            del self.publications[k]
        result: Tuple[int, int] = (len(subs), len(pubs))
        return succeed(result)

    def getSubscription(self, subscriptionId: str) -> Deferred:
        """
        See L{IStore.getSubscription}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        return succeed(self.subscriptions.get(subscriptionId))

    def loadSubscriptions(
        self, owner: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None
    ) -> Deferred:
        """
        See L{IStore.loadSubscriptions}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        result: List[SubscriptionRecord] = [
            r for r in self.subscriptions.values() if owner is None or r.owner == owner
        ]
        if after is not None or limit is not None:
            result = sorted((r for r in result if after is None or r.id > after), key=lambda r: r.id)
            if limit is not None:
                result = result[:limit]
        return succeed(result)

    def loadPublications(self) -> Deferred:
        """
        See L{IStore.loadPublications}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        return succeed(list(self.publications.values()))

    def findSubscription(self, presentity: str, callId: str, localTag: str) -> Deferred:
        """
        See L{IStore.findSubscription}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        for record in self.subscriptions.values():
            if (record.presentity, record.callId, record.localTag) == (presentity, callId, localTag):
                return succeed(record)
        return succeed(None)

    def getPublication(self, etag: str) -> Deferred:
        """
        See L{IStore.getPublication}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        return succeed(self.publications.get(etag))

    def putBinding(self, record: BindingRecord) -> Deferred:
        """
        See L{IBindingStore.putBinding}.
        """
        if not isinstance(record, BindingRecord):
            return fail(TypeError("expected a BindingRecord, got %r" % (type(record),)))
        refused = self._check()
        if refused is not None:
            return refused
        self.bindings[record.id] = record
        return succeed(None)

    def removeBinding(self, bindingId: str) -> Deferred:
        """
        See L{IBindingStore.removeBinding}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        self.bindings.pop(bindingId, None)
        return succeed(None)

    def loadBindings(self, owner: Optional[str] = None) -> Deferred:
        """
        See L{IBindingStore.loadBindings}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        result: List[BindingRecord] = [
            r for r in self.bindings.values() if owner is None or r.owner == owner
        ]
        return succeed(result)

    def registerLease(self, node: str, duration: float) -> Deferred:
        """
        See L{ILeaseStore.registerLease}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        current = self.leases.get(node)
        epoch = 1 if current is None else current.epoch + 1
        lease = self.leases[node] = LeaseRecord(node, self._now() + duration, epoch)
        return succeed(lease)

    def renewLease(self, node: str, epoch: int, duration: float) -> Deferred:
        """
        See L{ILeaseStore.renewLease}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        current = self.leases.get(node)
        if current is None or current.epoch != epoch:
            return succeed(None)
        lease = self.leases[node] = LeaseRecord(node, self._now() + duration, epoch)
        return succeed(lease)

    def fenceAndAdopt(self, formerOwner: str, owner: str) -> Deferred:
        """
        See L{ILeaseStore.fenceAndAdopt}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        now = self._now()
        current = self.leases.get(formerOwner)
        if current is not None:
            if current.expiresAt >= now:
                return succeed((None, current.expiresAt - now))
            self.leases[formerOwner] = dataclasses.replace(current, epoch=current.epoch + 1)
        adopted: List[SubscriptionRecord] = []
        for key, record in list(self.subscriptions.items()):
            if record.owner == formerOwner:
                record = self.subscriptions[key] = dataclasses.replace(record, owner=owner)
                adopted.append(record)
        return succeed((adopted, 0.0))

    def loadLeases(self) -> Deferred:
        """
        See L{ILeaseStore.loadLeases}.
        """
        refused = self._check()
        if refused is not None:
            return refused
        return succeed(list(self.leases.values()))
