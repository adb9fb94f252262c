"""
Sending NOTIFYs (RFC 6665 §4.2.2, RFC 3856 §6.6) with rate control.

Each subscription has at most one NOTIFY in flight, as RFC 6665 requires.
A change that comes while one is in flight, or within the configured
minimum interval of the last one (the spirit of RFC 6446), only marks the
subscription dirty; when the NOTIFY completes or the interval ends, one
NOTIFY carries the latest state.  A watcher is never sent a stale state, and
a burst of publications costs it one NOTIFY.

A manager of a cluster that may no longer own its subscriptions (its
lease ran out, or a peer fenced it: L{presence.cluster.lease}) is
I{fenced}: every NOTIFY it would send is held back (the subscription
stays dirty, a final NOTIFY stays due) until it is unfenced, when each
held subscription gets one NOTIFY with the then current state, or is
dropped if another manager adopted it meanwhile.

Subscriptions a manager adopts from a dead peer all need a NOTIFY with the
current state (their watchers may have missed changes), tens of thousands
at once; so do those a manager reloads when it starts (C{[manager]
notify_on_start}: a publication may have expired while it was down, or it
died before the NOTIFYs of a committed PUBLISH went out).  Sent in one
burst they would flood the dispatcher (UDP drops, retransmissions, NOTIFY
timeouts that end subscriptions).  So they are I{paced}
(L{Notifier.pace}): each is marked dirty and queued, and a cooperative
loop on the manager's clock releases them in order, at most C{[cluster]
adopt_notify_rate} per second.  A queued subscription behaves
like one held back by rate control: a change meanwhile only keeps it
dirty, so its paced NOTIFY carries the latest state, once; one that is
sent by another path first (a refresh's immediate NOTIFY) or ends leaves
the queue, so it gets no duplicate.  A subscription whose turn comes
while no connection can carry its NOTIFY (a TCP or TLS flow that died with
an earlier run or with the adopted manager, a proxy that has not connected
again since the restart) waits, still queued, until a connection from its
host opens, rather than failing and ending: after a restart the dispatcher
connects again within its ping interval.  The loop pauses while the manager
is fenced and ends with L{Notifier.stop}.  A manager of a cluster starts
fenced, so the NOTIFYs of its start begin once its lease is held, after
it has dropped whatever a peer adopted meanwhile; publications a resync
brings before a watcher's turn are folded into its paced NOTIFY.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, Optional

from twisted.logger import Logger

from presence.config import Config
from presence.interfaces import INotifyHost
from presence.latency import NOTIFY_BUCKETS, LatencyHistogram
from presence.manager.state import CSEQ_BLOCK, Subscription
from presence.sip.message import Request, Response
from presence.sip.target import Target

#: Seconds between two releases of paced NOTIFYs (at rates under
#: 1 / PACE_TICK per second, one NOTIFY per release, further apart).
PACE_TICK = 0.1


class Notifier:
    """
    Builds, sends and follows up the NOTIFYs of one manager.
    """

    log = Logger()

    def __init__(self, core: Any, store: Any, clock: Any, config: Config, host: INotifyHost) -> None:
        """
        @param core: the L{presence.sip.core.SIPCore} NOTIFYs go through.
        @param store: the L{presence.interfaces.IStore} keeping CSeq
            ceilings.
        @param host: the manager, for the bodies and for ending
            subscriptions.
        """
        self.core = core
        self.store = store
        self.clock = clock
        self.host = host
        self.minInterval = config.notifyMinInterval
        self.keepOnTimeout = config.keepOnTimeout
        self.counters = {"sent": 0, "failed": 0, "coalesced": 0, "held": 0, "paced": 0}
        #: Seconds from a PUBLISH's arrival (here, or its replicated update
        #: from a peer) to each NOTIFY carrying its change.
        self.publishToNotify = LatencyHistogram(NOTIFY_BUCKETS)
        #: While set, NOTIFYs are held back in L{held}, neither sent nor
        #: failed.
        self.fenced = False
        #: Subscription id to the subscription whose NOTIFY is held back.
        self.held: Dict[str, Subscription] = {}
        #: At most this many paced NOTIFYs per second (L{pace}), after an
        #: adoption or a start alike.
        self.paceRate = config.clusterAdoptNotifyRate
        #: Subscription id to the subscription waiting for its paced turn.
        self.paced: Dict[str, Subscription] = {}
        # The paced subscriptions in order; entries of those that left
        # L{paced} meanwhile are skipped (a dict popped from the front
        # would cost quadratic time).
        self._paceQueue: Deque[Subscription] = deque()
        self._paceCall: Any = None
        # Host to the subscriptions whose paced turn came while no
        # connection could carry their NOTIFY (by id): queued again when
        # one from that host opens.  They are no longer paced: a change
        # meanwhile is sent at once if a connection can carry it then.
        self._parked: Dict[str, Dict[str, Subscription]] = {}
        # Parked subscription id to the host it is parked under.
        self._parkedHost: Dict[str, str] = {}
        core.flows.addOpenListener(self._flowOpened)

    def fence(self) -> None:
        """
        Hold back every NOTIFY from now on (one already in flight goes on
        with its retransmissions).  Pacing pauses: the paced subscriptions
        wait in their queue, not in L{held}, so that unfencing does not
        send them in one burst.
        """
        self.fenced = True
        self._cancelPacing()

    def unfence(self) -> None:
        """
        Send what was held back: one NOTIFY per held subscription with its
        current state, or its final NOTIFY.
        """
        self.fenced = False
        held, self.held = self.held, {}
        for sub in held.values():
            if sub.inFlight:
                # Its answer sends what is due (sub.dirty or sub.final).
                continue
            if sub.final is not None or (sub.dirty and not sub.terminated):
                self._send(sub)
        if self.paced and self._paceCall is None:
            self._releasePaced()

    def drop(self, subscriptionIds: Iterable[str]) -> int:
        """
        Forget the held-back NOTIFYs of these subscriptions (another
        manager serves them now, final NOTIFY included).

        @return: how many were held.
        """
        count = 0
        for subscriptionId in subscriptionIds:
            self.paced.pop(subscriptionId, None)
            self._unpark(subscriptionId)
            sub = self.held.pop(subscriptionId, None)
            if sub is not None:
                sub.dirty = False
                sub.final = None
                sub.changedAt = None
                count += 1
        return count

    def notify(self, sub: Subscription, immediate: bool = False, since: Optional[float] = None) -> None:
        """
        Let C{sub}'s watcher know the current state, now or as soon as rate
        control and the NOTIFY in flight allow.

        @param immediate: skip rate control: the NOTIFY that answers a
            SUBSCRIBE must go at once (RFC 6665 §4.2, RFC 3265 §3.1.6.2).
            The NOTIFY in flight, if any, is still waited for.
        @param since: when the PUBLISH (or a peer's update) that changed
            the state arrived, for L{publishToNotify}; a change folded into
            a NOTIFY already due keeps the older time.
        """
        if sub.terminated and sub.final is None:
            return
        if since is not None and sub.changedAt is None:
            sub.changedAt = since
        if not immediate and sub.id in self.paced:
            # Its paced turn sends the latest state.
            sub.dirty = True
            return
        if sub.id in self._parkedHost and not self._reachable(self.targetOf(sub)):
            # Still no connection: the one its host opens sends it.
            sub.dirty = True
            return
        if sub.inFlight:
            if not sub.dirty:
                self.counters["coalesced"] += 1
            sub.dirty = True
            return
        if immediate:
            self._cancelTimer(sub)
        elif sub.final is None:
            wait = sub.lastNotify + self.minInterval - self.clock.seconds()
            if wait > 0:
                if not sub.dirty:
                    self.counters["coalesced"] += 1
                sub.dirty = True
                if sub.timer is None:
                    sub.timer = self.clock.callLater(wait, self._release, sub)
                return
        self._send(sub)

    def finish(self, sub: Subscription, reason: str) -> None:
        """
        Send the final NOTIFY (C{terminated;reason=...}) of an ended
        subscription, after the one in flight if there is one.
        """
        sub.final = reason
        self._cancelTimer(sub)
        if not sub.inFlight:
            self._send(sub)

    def pace(self, subs: Iterable[Subscription]) -> int:
        """
        Send each of C{subs} a NOTIFY with its current state, in order, at
        most L{paceRate} per second: the first ones at once, the others
        as the clock moves on (see the module docstring).

        @return: how many were queued (ended ones and those queued already
            are not).
        """
        count = 0
        queue = self._paceQueue
        for sub in subs:
            if sub.terminated or sub.id in self.paced:
                continue
            sub.dirty = True
            self.paced[sub.id] = sub
            queue.append(sub)
            count += 1
        if count and self._paceCall is None and not self.fenced:
            self._releasePaced()
        return count

    def _releasePaced(self) -> None:
        """
        Send the next chunk of paced NOTIFYs, and come back for the next
        one while any is left.
        """
        self._paceCall = None
        if self.fenced:
            return
        size = self._chunkSize()
        chunk = size
        queue, paced = self._paceQueue, self.paced
        while chunk and queue:
            sub = queue.popleft()
            if paced.get(sub.id) is not sub:
                continue
            if sub.inFlight or sub.terminated or not sub.dirty:
                # Its answer sends what is due; or nothing is.
                del paced[sub.id]
                continue
            chunk -= 1
            del paced[sub.id]
            target = self.targetOf(sub)
            if not self._reachable(target):
                self._parked.setdefault(target.host, {})[sub.id] = sub
                self._parkedHost[sub.id] = target.host
                continue
            self.counters["paced"] += 1
            self._send(sub)
        if not paced:
            queue.clear()
            return
        if queue:
            # size NOTIFYs every size / rate seconds: the rate, whatever
            # the rounding of size.
            self._paceCall = self.clock.callLater(size / self.paceRate, self._releasePaced)

    def _chunkSize(self) -> int:
        """
        How many paced NOTIFYs one release sends.
        """
        return max(1, int(self.paceRate * PACE_TICK + 0.5))

    def _reachable(self, target: Target) -> bool:
        """
        Whether a NOTIFY to C{target} can leave now: over UDP always, over
        a stream only through the open connection it names, and from that
        very peer (the subscription's own, not a replacement: a proxy that
        reconnected has a new token, found by L{targetOf}).
        """
        if target.transport == "UDP":
            return True
        flow = self.core.flows.get(target.flow) if target.flow else None
        return flow is not None and flow.peer == (target.host, target.port)

    def _flowOpened(self, token: str) -> None:
        """
        A connection opened: the paced subscriptions parked for want of
        one from its host take their turn again, from the next release on
        (the connection is not ready to write to yet).
        """
        if not self._parked:
            return
        flow = self.core.flows.get(token)
        subs = self._parked.pop(flow.peer[0], None) if flow is not None else None
        if not subs:
            return
        for sub in subs.values():
            del self._parkedHost[sub.id]
            if sub.dirty and not sub.terminated and not sub.inFlight and sub.id not in self.paced:
                self.paced[sub.id] = sub
                self._paceQueue.append(sub)
        if self.paced and self._paceCall is None and not self.fenced:
            self._paceCall = self.clock.callLater(self._chunkSize() / self.paceRate, self._releasePaced)

    def _cancelPacing(self) -> None:
        if self._paceCall is not None:
            if self._paceCall.active():
                self._paceCall.cancel()
            self._paceCall = None

    def _release(self, sub: Subscription) -> None:
        sub.timer = None
        if sub.dirty and not sub.inFlight and not sub.terminated:
            self._send(sub)

    def cancel(self, sub: Subscription) -> None:
        """
        C{sub} has ended: drop any held-back NOTIFY (only its final NOTIFY,
        through L{finish}, may still go out).
        """
        self._cancelTimer(sub)
        sub.dirty = False
        sub.changedAt = None
        self.held.pop(sub.id, None)
        self.paced.pop(sub.id, None)
        self._unpark(sub.id)

    @property
    def waiting(self) -> int:
        """
        Subscriptions waiting for a paced NOTIFY: queued, or parked until
        a connection can carry it.
        """
        return len(self.paced) + len(self._parkedHost)

    def _unpark(self, subscriptionId: str) -> None:
        host = self._parkedHost.pop(subscriptionId, None)
        if host is not None:
            parked = self._parked[host]
            del parked[subscriptionId]
            if not parked:
                del self._parked[host]

    def _cancelTimer(self, sub: Subscription) -> None:
        if sub.timer is not None:
            sub.timer.cancel()  # type: ignore[attr-defined]
            sub.timer = None

    def stop(self, subs: Any) -> None:
        """
        Cancel every held-back NOTIFY (shutdown): the state is in the store.
        Paced ones are forgotten too: a restarted manager notifies the
        subscriptions it reloads (C{[manager] notify_on_start}).
        """
        for sub in subs:
            self._cancelTimer(sub)
        self._cancelPacing()
        self.paced.clear()
        self._paceQueue.clear()
        self._parked.clear()
        self._parkedHost.clear()
        self.core.flows.removeOpenListener(self._flowOpened)

    def _send(self, sub: Subscription) -> None:
        # Whatever sends it (or holds it back) serves its paced turn too.
        self.paced.pop(sub.id, None)
        if self._parkedHost:
            self._unpark(sub.id)
        if self.fenced:
            if sub.id not in self.held:
                self.counters["held"] += 1
            self.held[sub.id] = sub
            sub.dirty = True
            return
        sub.dirty = False
        sub.cseq += 1
        if not sub.terminated and sub.cseq >= sub.cseqCeiling - CSEQ_BLOCK // 2:
            sub.cseqCeiling = sub.cseq + CSEQ_BLOCK
            self.store.updateSubscription(sub.id, localCSeq=sub.cseqCeiling).addErrback(
                self.host.storeFailed, "CSeq ceiling of " + sub.id
            )
        target = self.targetOf(sub)
        request = self.build(sub)
        sub.inFlight = True
        sub.lastNotify = now = self.clock.seconds()
        self.counters["sent"] += 1
        changedAt = sub.changedAt
        if changedAt is not None:
            sub.changedAt = None
            self.publishToNotify.observe(now - changedAt)
        final = sub.final
        sub.final = None
        tx = self.core.sendRequest(request, target)
        tx.deferred.addCallback(self._answered, sub, final)

    def targetOf(self, sub: Subscription) -> Target:
        """
        Where C{sub}'s NOTIFY is sent: the flow its SUBSCRIBE (or latest
        refresh) came in on.  Through a dispatcher that is the dispatcher,
        and the route set takes the NOTIFY on from there to the watcher.

        A connection from such a proxy may have been replaced (it
        reconnected) or, for a subscription reloaded from the store, be a
        token of an earlier run, which names no connection of this one
        (L{presence.sip.transport.FlowTable}).  When the subscription has a route set, any open
        connection from the same proxy host will do: the Route, not the
        connection, says where the NOTIFY goes next.  Without a route set
        the flow reaches the watcher itself: if it has closed, the flow the
        watcher registered its contact over (RFC 5626) stands in, when
        there is one.
        """
        target = sub.target
        if target.flow is None:
            return target
        flows = self.core.flows
        if not sub.routeSet:
            current = flows.get(target.flow)
            if current is None or current.peer != (target.host, target.port):
                flow = self.host.flowFor(sub)
                if flow is not None:
                    sub.target = flow
                    return flow
            return target
        flow = flows.get(target.flow)
        if flow is not None and flow.peer == (target.host, target.port):
            return target
        for flow in flows.all():
            if flow.peer[0] == target.host and flow.transportName == target.transport:
                sub.target = flow.source()
                return sub.target
        return target

    def build(self, sub: Subscription) -> Request:
        """
        The NOTIFY for C{sub}'s current state (RFC 6665 §4.2.2; RFC 3856
        §6.6 for presence).
        """
        request = Request("NOTIFY", sub.remoteTarget)
        headers = request.headers
        if sub.routeSet:
            headers["route"] = list(sub.routeSet)
        headers["max-forwards"] = ["70"]
        headers["from"] = ["<%s>;tag=%s" % (sub.presentity, sub.localTag)]
        headers["to"] = ["<%s>;tag=%s" % (sub.watcher, sub.remoteTag)]
        headers["call-id"] = [sub.callId]
        headers["cseq"] = ["%d NOTIFY" % (sub.cseq,)]
        headers["contact"] = [self.core.contactFor(sub.target)]
        headers["event"] = [sub.event + ";id=" + sub.eventId if sub.eventId else sub.event]
        final = sub.final
        if final is not None:
            headers["subscription-state"] = ["terminated;reason=" + final]
            # A pending watcher never sees the state, not even in the last
            # NOTIFY (RFC 6665 §4.2.2, RFC 3856 §6.6 privacy).
            withState = final in ("timeout", "noresource") and sub.state == "active"
        else:
            remaining = max(0, int(sub.expiresAt - self.clock.seconds() + 0.5))
            headers["subscription-state"] = ["%s;expires=%d" % (sub.state, remaining)]
            withState = sub.state == "active"
        if withState:
            contentType, request.body = self.host.notifyBody(sub)
            headers["content-type"] = [contentType]
        return request

    def _answered(self, response: Response, sub: Subscription, final: Optional[str]) -> None:
        sub.inFlight = False
        code = response.code
        if 200 <= code < 300:
            sub.timeouts = 0
        else:
            self.counters["failed"] += 1
            self.log.info(
                "NOTIFY to {watcher} for {presentity} failed: {code} {reason}",
                watcher=sub.watcher,
                presentity=sub.presentity,
                code=code,
                reason=response.reason,
            )
            if final is None and not sub.terminated:
                if code in (408, 503):
                    # A timeout, or no way to send (synthesised 503).
                    sub.timeouts += 1
                    if not self.keepOnTimeout or sub.timeouts > 1:
                        self.host.terminate(sub, None)
                    else:
                        # Kept: the watcher missed this state, send it again.
                        sub.dirty = True
                else:
                    # RFC 6665 §4.2.2: an error response to a NOTIFY ends
                    # the subscription (481 and every other failure).
                    self.host.terminate(sub, None)
        if sub.final is not None:
            self._send(sub)
        elif sub.dirty and not sub.terminated:
            self.notify(sub)
