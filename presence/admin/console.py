"""
What an operator can read and do in the live server: the live objects of
the service tree and the helpers that read them (C{stats()},
C{presentity()}, C{presentities()}, C{subscriptions()}, C{status()}) or
act on them (C{terminate()}, C{refresh()}, C{drain()}, C{resume()},
C{cleanup()}).

This is the one place where the admin tools touch the subscription
manager, the cluster and the dispatcher: the manhole's namespace
(L{presence.admin.manhole}) and the control channel's commands
(L{presence.admin.control}) are both these helpers, so they are plain
code, tested against a service tree without any SSH or socket.  What they
return is plain data (dicts, lists, strings, numbers), ready for JSON.  They look the live objects up at each call:
the subscription manager only exists once the store is ready, and a
manhole session may outlive a restart of it.

Everything here runs on the reactor thread (the manhole runs typed code
there), so it reads the same state the server changes, with no locking.
"""

from __future__ import annotations

import datetime
import heapq
from typing import Any, Dict, Iterable, List, Optional, Union

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, succeed

from presence.interfaces import ISubscriptionManager
from presence.manager.state import Presentity, Subscription
from presence.sip.uri import URIError, normaliseAOR

# The reasons RFC 6665 §4.2.2 (and RFC 3265 §3.2.4) define for a
# terminated subscription.
REASONS = frozenset(
    ["deactivated", "probation", "rejected", "timeout", "giveup", "noresource", "invariant"]
)


class NotRunning(RuntimeError):
    """
    The part of the server a helper needs is not running (yet).
    """


#: A subscription as the helpers take it: its id, the summary
#: L{Console.subscriptions} gives, or the object itself.
SubscriptionRef = Union[str, Dict[str, Any], Subscription]


class LiveObjects:
    """
    The running objects of one service tree: the subscription manager, the
    SIP core and the store, each L{None} while not running.

    Shared by the manhole and the metrics endpoint, which must both work on
    a process that runs only some of the services.

    @ivar root: the service collection holding the C{"store"}, C{"sip"} and
        C{"manager"} services.
    """

    def __init__(self, root: service.IServiceCollection) -> None:
        self.root = root

    def service(self, name: str) -> Optional[service.IService]:
        """
        The child service named C{name}, or L{None}.
        """
        try:
            return self.root.getServiceNamed(name)
        except KeyError:
            return None

    @property
    def manager(self) -> Optional[ISubscriptionManager]:
        """
        The subscription manager, once it serves: seen only as an
        L{ISubscriptionManager}.
        """
        return getattr(self.service("manager"), "manager", None)

    @property
    def core(self) -> Any:
        """
        The L{presence.sip.core.SIPCore}, once the SIP service started.
        """
        return getattr(self.service("sip"), "core", None)

    @property
    def cluster(self) -> Any:
        """
        The L{presence.cluster.group.PeerGroup}, once the cluster runs.
        """
        return getattr(self.service("cluster"), "group", None)

    @property
    def dispatcher(self) -> Any:
        """
        The L{presence.dispatcher.dispatcher.Dispatcher}, once it runs.
        """
        return getattr(self.service("dispatcher"), "dispatcher", None)

    @property
    def store(self) -> Any:
        """
        The store (an L{presence.interfaces.IStore} provider).
        """
        return getattr(self.service("store"), "store", None)


def _watchersOf(manager: ISubscriptionManager, pres: Presentity, ordered: bool = False) -> List[Subscription]:
    """
    The live subscriptions to C{pres} (by id when C{ordered}).
    """
    ids = sorted(pres.watchers) if ordered else pres.watchers
    subs = [manager.subscription(i) for i in ids]
    return [sub for sub in subs if sub is not None]


def _when(seconds: float) -> str:
    """
    A clock time as ISO 8601 UTC, for people.
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _aor(text: str) -> str:
    """
    C{text} normalised as an address of record, or as given when it does
    not parse (so a lookup simply finds nothing).
    """
    try:
        return normaliseAOR(text)
    except URIError:
        return text


class Console:
    """
    The manhole's helpers, bound to one service tree.
    """

    def __init__(self, root: service.IServiceCollection, clock: Any) -> None:
        """
        @param root: the service collection with the server's services.
        @param clock: provides C{seconds()}, to show what expires when.
        """
        self.live = LiveObjects(root)
        self.clock = clock

    def _manager(self) -> ISubscriptionManager:
        manager = self.live.manager
        if manager is None:
            raise NotRunning("the subscription manager is not running (yet)")
        return manager

    def namespace(self) -> Dict[str, Any]:
        """
        A fresh namespace for one manhole session: the helpers, and the live
        objects as they are now (C{manager} is L{None} until the store is
        ready; the helpers always look it up anew).
        """
        live = self.live
        return {
            "stats": self.stats,
            "presentity": self.presentity,
            "presentities": self.presentities,
            "subscriptions": self.subscriptions,
            "terminate": self.terminate,
            "refresh": self.refresh,
            "status": self.status,
            "drain": self.drain,
            "resume": self.resume,
            "cleanup": self.cleanup,
            "root": live.root,
            "manager": live.manager,
            "core": live.core,
            "store": live.store,
        }

    def stats(self) -> Dict[str, Any]:
        """
        How busy the server is, in one dict.  Keys whose part is not running
        are left out.
        """
        result: Dict[str, Any] = {}
        manager = self.live.manager
        core = self.live.core
        store = self.live.store
        result["managerReady"] = manager is not None
        if manager is not None:
            sizes = manager.sizes()
            for name in ("subscriptions", "dialogs", "publications", "presentities"):
                result[name] = sizes[name]
            notifies = manager.notifyCounters
            result["notifiesSent"] = notifies["sent"]
            result["notifiesFailed"] = notifies["failed"]
            result["notifiesCoalesced"] = notifies["coalesced"]
            result["manager"] = dict(manager.counters)
        if core is not None:
            result["transactions"] = len(core.transactions)
            result["flows"] = len(core.flows)
            result["sip"] = dict(core.counters)
            result["requestsByMethod"] = dict(sorted(core.requestsByMethod.items()))
            result["responsesSent"] = {
                "%s %dxx" % key: count for key, count in sorted(core.responsesSent.items())
            }
        if store is not None:
            for name, attribute in (
                ("storeBatches", "batchCount"),
                ("storeCommits", "commitCount"),
                ("storeReplays", "replayCount"),
                ("storeWrites", "writeCount"),
                ("storeLastBatchSize", "lastBatchSize"),
                ("storeLastCommitLatency", "lastCommitLatency"),
            ):
                value = getattr(store, attribute, None)
                if value is not None:
                    result[name] = value
        return result

    def presentity(self, aor: str) -> Dict[str, Any]:
        """
        What the server holds about the presentity C{aor}: the composed
        document its watchers get, its live publications and its watchers.
        C{print(presentity(aor)["document"])} shows the document as XML.
        """
        manager = self._manager()
        aor = _aor(aor)
        now = self.clock.seconds()
        pres = manager.resource(aor)
        publications: List[Dict[str, Any]] = []
        watchers: List[Dict[str, Any]] = []
        if pres is not None:
            for pub in sorted(pres.publications.values(), key=lambda p: -p.modifiedAt):
                publications.append(
                    {
                        "etag": pub.etag,
                        "expires": max(0, int(round(pub.expiresAt - now))),
                        "modified": _when(pub.modifiedAt),
                    }
                )
            watchers = [self._summary(sub, now) for sub in _watchersOf(manager, pres, True)]
        document = manager.documentOf(aor)
        return {
            "aor": aor,
            "document": document.decode("utf-8", "replace"),
            "publications": publications,
            "watchers": watchers,
        }

    def presentities(self, after: Optional[str] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """
        The presentities this manager holds (those with live publications
        or watchers here), in AOR order: for each, how many watchers
        (C{active} of them), publications, and whether a registration
        binding makes it open.

        @param after: start after this AOR (the last of the previous page).
        @param limit: at most this many (all when L{None}); a page is
            picked in time linear in the presentities held, without
            sorting them all.
        """
        manager = self._manager()
        held = manager.resourceTable()
        aors = _page(held, after, limit)
        result = []
        for aor in aors:
            pres = held[aor]
            watchers = _watchersOf(manager, pres)
            result.append(
                {
                    "aor": aor,
                    "watchers": len(watchers),
                    "active": sum(1 for sub in watchers if sub.state == "active"),
                    "publications": len(pres.publications),
                    "registered": pres.registered is not None,
                }
            )
        return result

    def subscriptions(
        self,
        watcher: Optional[str] = None,
        presentity: Optional[str] = None,
        objects: bool = False,
        after: Optional[Iterable[str]] = None,
        limit: Optional[int] = None,
    ) -> List[Any]:
        """
        The live subscriptions, optionally only those of C{watcher} or to
        C{presentity}, ordered by presentity, watcher, then id.

        @param objects: give the L{Subscription} objects themselves instead
            of summaries.
        @param after: start after this C{(presentity, watcher, id)}: the
            last of the previous page.
        @param limit: at most this many (all when L{None}).
        """
        manager = self._manager()
        if presentity is not None:
            pres = manager.resource(_aor(presentity))
            candidates: Iterable[Subscription] = _watchersOf(manager, pres) if pres else []
        else:
            candidates = manager.allSubscriptions()
        if watcher is not None:
            wanted = _aor(watcher)
            candidates = [sub for sub in candidates if sub.watcher == wanted]
        if after is not None:
            start = tuple(after)
            candidates = (sub for sub in candidates if _order(sub) > start)
        if limit is None:
            chosen = sorted(candidates, key=_order)
        else:
            chosen = heapq.nsmallest(limit, candidates, key=_order)
        if objects:
            return chosen
        now = self.clock.seconds()
        return [self._summary(sub, now) for sub in chosen]

    @staticmethod
    def _summary(sub: Subscription, now: float) -> Dict[str, Any]:
        target = sub.target
        return {
            "id": sub.id,
            "watcher": sub.watcher,
            "presentity": sub.presentity,
            "expires": max(0, int(round(sub.expiresAt - now))),
            "state": sub.state,
            "target": "%s %s:%d" % (target.transport, target.host, target.port),
            "notifyCSeq": sub.cseq,
            "inFlight": sub.inFlight,
            "pending": sub.dirty,
        }

    def held(self, ids: Iterable[str]) -> List[str]:
        """
        Those of C{ids} that name a live subscription here, once each.
        """
        subs = self._manager().subscriptions
        return [i for i in dict.fromkeys(ids) if i in subs]

    def terminate(self, subscription: Union[SubscriptionRef, Iterable[SubscriptionRef]], reason: str = "deactivated") -> Deferred:
        """
        End subscriptions now: each is forgotten and deleted from the
        store, and its watcher gets a final NOTIFY (C{Subscription-State:
        terminated;reason=REASON}).  RFC 6665 lets the watcher subscribe
        again after C{deactivated}, but not after C{rejected}.

        @param subscription: what L{subscriptions} returns (a list of
            summaries, or one of them), ids, or the objects.
        @param reason: one of L{REASONS}.
        @return: a Deferred firing with how many ended, once the store
            has deleted them.
        @raise KeyError: for one that is not live (then none is ended).
        @raise ValueError: for a reason RFC 6665 does not define.
        """
        manager = self._manager()
        if reason not in REASONS:
            raise ValueError("reason must be one of %s" % (", ".join(sorted(REASONS)),))
        many = not isinstance(subscription, (str, dict, Subscription))
        refs = list(subscription) if many else [subscription]  # type: ignore[call-overload]
        subs = []
        for ref in refs:
            ident = _identOf(ref)
            sub = manager.subscription(ident)
            if sub is None:
                raise KeyError("no live subscription %r" % (ident,))
            if sub not in subs:
                subs.append(sub)
        return gatherResults([manager.terminate(sub, reason) for sub in subs]).addCallback(lambda _: len(subs))

    def refresh(self, aor: str) -> Dict[str, Any]:
        """
        Send every active watcher of C{aor} a NOTIFY with the current
        state now (what Kamailio calls C{refreshWatchers}): after a fix in
        the database, or to check a watcher's path.  They are paced at
        C{[cluster] adopt_notify_rate} per second; one with a NOTIFY in
        flight gets the latest state once it is answered.
        """
        manager = self._manager()
        aor = _aor(aor)
        pres = manager.resource(aor)
        active = [sub for sub in _watchersOf(manager, pres, True) if sub.state == "active"] if pres else []
        return {
            "aor": aor,
            "watchers": len(active),
            "queued": manager.notifyPaced(sub.id for sub in active),
        }

    def drain(self, grace: float = 2.0) -> Deferred:
        """
        Stop taking new work before maintenance and hand every
        subscription over to the peers this manager reaches
        (L{presence.cluster.drain}); without a cluster, only stop taking
        new work.  Asked again while a drain runs, wait for that one.

        @param grace: seconds between refusing new work and the first
            hand-over (the dispatcher needs one ping to see it).
        @return: a Deferred firing with what was done.
        """
        from presence.cluster.drain import Drain

        manager = self._manager()
        group = self.live.cluster
        if group is None:
            manager.setDraining(True)
            return succeed(
                {
                    "node": manager.node,
                    "draining": True,
                    "handedOver": 0,
                    "failed": 0,
                    "to": {},
                    "remaining": manager.sizes()["subscriptions"],
                    "peers": [],
                }
            )
        running = getattr(group, "drainRun", None)
        if running is None or not manager.draining:
            running = group.drainRun = Drain(group, grace)
            running.start()
        return running.whenDone()

    def resume(self) -> Dict[str, Any]:
        """
        Take new work again after a drain.  What was handed over stays
        with the peers.
        """
        manager = self._manager()
        manager.setDraining(False)
        group = self.live.cluster
        if group is not None:
            group.drainRun = None
        return {"node": manager.node, "draining": False, "subscriptions": manager.sizes()["subscriptions"]}

    def cleanup(self, olderThan: float = 60.0) -> Deferred:
        """
        Delete from the database the subscriptions and publications that
        expired more than C{olderThan} seconds ago (what Kamailio calls
        C{presence.cleanup}): rows a manager that never came back left
        behind.  The live ones expire on their own timers; the margin
        leaves their owners the time to send the final NOTIFYs.

        @return: a Deferred firing with how many rows of each went.
        """
        store = self.live.store
        if store is None:
            raise NotRunning("this process has no database")
        d = store.removeExpired(self.clock.seconds() - olderThan)
        return d.addCallback(lambda counts: {"subscriptions": counts[0], "publications": counts[1]})

    def status(self) -> Deferred:
        """
        Health of this process and of the cluster as it sees it: for a
        manager, whether it serves, drains, is fenced or overloaded, its
        peers' links and every manager's lease in the database; for a
        dispatcher, each manager's state.  C{healthy} sums it up.

        @return: a Deferred firing with the status (the leases are read
            from the store, off the reactor thread).
        """
        result: Dict[str, Any] = {}
        healthy = True
        managerService = self.live.service("manager")
        manager = self.live.manager
        if managerService is not None:
            if manager is None:
                healthy = False
                result["manager"] = {"ready": False}
            else:
                sizes = manager.sizes()
                overloaded = manager.overload.shedding
                result["manager"] = {
                    "node": manager.node,
                    "ready": True,
                    "draining": manager.draining,
                    "fenced": manager.fenced,
                    "overloaded": overloaded,
                    "subscriptions": sizes["subscriptions"],
                    "presentities": sizes["presentities"],
                    "publications": sizes["publications"],
                    "pacedWaiting": sizes["pacedWaiting"],
                }
                healthy = healthy and not (manager.draining or manager.fenced or overloaded)
        dispatcher = self.live.dispatcher
        if dispatcher is not None:
            now = self.clock.seconds()
            managers = [
                {
                    "name": state.name,
                    "address": str(state.spec),
                    "up": state.up,
                    "draining": state.draining,
                    "inFlight": state.inFlight,
                    "pings": state.pings,
                    "answers": state.answers,
                    "lastAnswer": None if state.lastAnswer is None else round(now - state.lastAnswer, 3),
                }
                for state in dispatcher.managers
            ]
            result["dispatcher"] = {"policy": dispatcher.policyName, "managers": managers}
            healthy = healthy and all(m["up"] and not m["draining"] for m in managers)
        elif self.live.service("dispatcher") is not None:
            healthy = False
            result["dispatcher"] = {"ready": False}
        group = self.live.cluster
        if group is None:
            if self.live.service("cluster") is not None:
                healthy = False
                result["cluster"] = {"ready": False}
            result["healthy"] = healthy
            return succeed(result)
        lease = group.lease
        cluster = {
            "node": group.node,
            "quorum": group.quorum,
            "peers": {name: name in group.peers for name in sorted(group.peerNames)},
            "lease": None if lease is None else {"epoch": lease.epoch, "holding": lease.holding},
            "counters": dict(group.counters),
        }
        result["cluster"] = cluster
        healthy = healthy and all(cluster["peers"].values()) and (lease is None or lease.holding)

        def leases(records: List[Any]) -> Dict[str, Any]:
            now = self.clock.seconds()
            cluster["leases"] = [
                {
                    "node": record.node,
                    "epoch": record.epoch,
                    "expires": _when(record.expiresAt),
                    "expiresIn": round(record.expiresAt - now, 3),
                }
                for record in sorted(records, key=lambda r: r.node)
            ]
            result["healthy"] = healthy
            return result

        def unreadable(failure: Any) -> Dict[str, Any]:
            cluster["leases"] = None
            cluster["leasesError"] = failure.getErrorMessage()
            result["healthy"] = False
            return result

        return group.store.loadLeases().addCallbacks(leases, unreadable)


def _page(keys: Iterable[Any], after: Any, limit: Optional[int]) -> List[Any]:
    """
    The keys after C{after} (all when L{None}) in order, at most C{limit}
    of them: a page of a listing without sorting every key.
    """
    if after is not None:
        keys = [key for key in keys if key > after]
    if limit is None:
        return sorted(keys)
    return heapq.nsmallest(limit, keys)


def _order(sub: Subscription) -> Any:
    """
    The order of listings: by presentity, watcher, then id.
    """
    return (sub.presentity, sub.watcher, sub.id)


def _identOf(ref: Any) -> str:
    """
    The id of a subscription given as L{SubscriptionRef}.
    """
    if isinstance(ref, Subscription):
        return ref.id
    if isinstance(ref, dict):
        ident = ref.get("id")
        if not isinstance(ident, str):
            raise KeyError("not a subscription summary: %r" % (ref,))
        return ident
    if isinstance(ref, str):
        return ref
    raise TypeError("a subscription, its id or its summary, not %r" % (ref,))
