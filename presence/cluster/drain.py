"""
Draining a manager before maintenance: hand every subscription it serves
over to the peers it reaches, so that stopping it afterwards costs its
watchers nothing (no adoption delay, no lease to wait out).

Why push, when the cluster already pulls (L{IPeer.handOver}, asked by a
peer that gets an in-dialog request for one of our dialogs) and adopts (a
dead peer's subscriptions, once its lease ran out): a pull only moves the
dialogs whose watchers happen to refresh, and adoption needs the manager
to be dead for C{adopt_after} seconds and its lease to run out, during
which its watchers hear nothing.  A drain moves them all at once while
this manager still serves each until its turn:

  1. the manager stops taking new work
     (L{SubscriptionManager.setDraining}): new SUBSCRIBEs and PUBLISHes
     get 503, which the dispatcher answers by trying another manager, and
     OPTIONS 503, which takes it out of the dispatcher's rotation so that
     in-dialog requests go to a manager in rotation;
  2. after a grace period (a few of the dispatcher's pings, so that it
     has seen the 503), chunk by chunk, each subscription is released to
     a live peer chosen by rendezvous hash of its presentity
     (L{SubscriptionManager.release}: no final NOTIFY, the owner and a
     CSeq ceiling written in the store), then that peer is told to serve
     the chunk (L{IPeer.takeOver}); a subscription with a change not yet
     told, or a NOTIFY in flight, is marked stale and the peer sends its
     watcher the current state.

A subscription whose release fails stays here (counted C{failed}); one
released to a peer whose link fails before it took it over is the peer's
in the store all the same, and it serves it after its next start, or
whoever adopts that peer does.  With no peer reachable nothing is moved:
the subscriptions stay ours, and once this manager is stopped the
cluster adopts them as after a death.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.dispatcher.policy import rendezvous

#: Subscriptions released, then taken over, per step.
CHUNK = 200


class Drain:
    """
    One drain of the manager of C{group}.

    @ivar counters: C{handedOver}, C{failed}, and per peer how many it
        took (C{to}).
    """

    log = Logger()

    def __init__(self, group: Any, grace: float = 2.0, chunk: int = CHUNK) -> None:
        """
        @param group: the L{presence.cluster.group.PeerGroup}, attached.
        @param grace: seconds between refusing new work and the first
            hand-over.
        """
        self.group = group
        self.manager = group.manager
        self.grace = grace
        self.chunk = chunk
        self.handedOver = 0
        self.failed = 0
        self.to: Dict[str, int] = {}
        self.result: Any = None
        self._waiters: List[Deferred] = []

    def whenDone(self) -> Deferred:
        """
        A Deferred firing with the L{report} once every subscription held
        at the start was handed over or failed.
        """
        if self.result is not None:
            return succeed(self.result)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def start(self) -> None:
        """
        Refuse new work now; hand over after the grace period.
        """
        manager = self.manager
        manager.setDraining(True)
        self.log.warn(
            "Draining {node}: handing {count} subscriptions over to {peers} in {grace}s",
            node=manager.node, count=len(manager.subscriptionIds()),
            peers=" ".join(sorted(self.group.peers)) or "no peer", grace=self.grace,
        )
        d = deferLater(self.group.clock, self.grace, lambda: None)
        d.addCallback(lambda _: self._step(sorted(manager.subscriptionIds())))
        d.addErrback(self._crashed)

    def report(self) -> Dict[str, Any]:
        """
        What the drain did, as plain data.
        """
        return {
            "node": self.manager.node,
            "draining": self.manager.draining,
            "handedOver": self.handedOver,
            "failed": self.failed,
            "to": dict(sorted(self.to.items())),
            "remaining": len(self.manager.subscriptionIds()),
            "peers": sorted(self.group.peers),
        }

    def _step(self, todo: List[str]) -> None:
        manager = self.manager
        peers = sorted(self.group.peers)
        if self.group.manager is not manager or not manager.draining or not peers or not todo:
            self._finish()
            return
        chunk, rest = todo[: self.chunk], todo[self.chunk :]
        byPeer: Dict[str, List[Tuple[str, bool]]] = {}
        releases: List[Deferred] = []
        for subscriptionId in chunk:
            sub = manager.subscription(subscriptionId)
            if sub is None or sub.terminated:
                continue
            peer = rendezvous(peers, sub.presentity)
            stale = manager.isStale(subscriptionId)
            d = manager.release(subscriptionId, peer)
            d.addCallback(self._released, byPeer, peer, subscriptionId, stale)
            releases.append(d)
        gathered = gatherResults(releases, consumeErrors=True)
        gathered.addCallback(lambda _: self._takeOver(byPeer))
        gathered.addCallback(lambda _: self._step(rest))
        gathered.addErrback(self._crashed)

    def _released(self, ok: bool, byPeer: Dict[str, List[Tuple[str, bool]]], peer: str, subscriptionId: str, stale: bool) -> None:
        if ok:
            self.handedOver += 1
            self.to[peer] = self.to.get(peer, 0) + 1
            byPeer.setdefault(peer, []).append((subscriptionId, stale))
        else:
            self.failed += 1

    def _takeOver(self, byPeer: Dict[str, List[Tuple[str, bool]]]) -> Deferred:
        calls = []
        for name, items in sorted(byPeer.items()):
            peer = self.group.peers.get(name)
            if peer is None:
                self.log.warn(
                    "Draining: {peer} went away before taking over {count} subscriptions; "
                    "they are its own in the store", peer=name, count=len(items),
                )
                continue
            d = peer.takeOver([[i, stale] for i, stale in items])
            d.addErrback(self._takeOverFailed, name, len(items))
            calls.append(d)
        return gatherResults(calls, consumeErrors=True) if calls else succeed(None)

    def _takeOverFailed(self, failure: Failure, name: str, count: int) -> None:
        self.log.warn(
            "Draining: {peer} did not take over {count} subscriptions ({error}); "
            "they are its own in the store", peer=name, count=count, error=failure.getErrorMessage(),
        )

    def _crashed(self, failure: Failure) -> None:
        self.log.failure("Draining failed", failure)
        self._finish()

    def _finish(self) -> None:
        if self.result is not None:
            return
        report = self.result = self.report()
        self.log.warn(
            "Drained {node}: {handedOver} subscriptions handed over, {failed} failed, "
            "{remaining} still served here", **report,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(report)
