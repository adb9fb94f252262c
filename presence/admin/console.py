"""
What the manhole offers an operator: the live objects of the service tree and
a few helpers that read them (C{stats()}, C{presentity()},
C{subscriptions()}) or act on them (C{terminate()}).

The helpers live here, apart from the SSH plumbing of
L{presence.admin.manhole}, so that they are plain code, tested against a
service tree without any SSH.  They look the live objects up at each call:
the subscription manager only exists once the store is ready, and a
manhole session may outlive a restart of it.

Everything here runs on the reactor thread (the manhole runs typed code
there), so it reads the same state the server changes, with no locking.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional, Union

from twisted.application import service
from twisted.internet.defer import Deferred

from presence.manager.state import Subscription
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
    def manager(self) -> Any:
        """
        The L{presence.manager.manager.SubscriptionManager}, once it serves.
        """
        return getattr(self.service("manager"), "manager", None)

    @property
    def core(self) -> Any:
        """
        The L{presence.sip.core.SIPCore}, once the SIP service started.
        """
        return getattr(self.service("sip"), "core", None)

    @property
    def store(self) -> Any:
        """
        The store (an L{presence.interfaces.IStore} provider).
        """
        return getattr(self.service("store"), "store", None)


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

    def _manager(self) -> Any:
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
            "subscriptions": self.subscriptions,
            "terminate": self.terminate,
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
            result["subscriptions"] = len(manager.subscriptions)
            result["dialogs"] = len(manager.dialogs)
            result["publications"] = len(manager.publications)
            result["presentities"] = len(manager.presentities)
            notifies = manager.notifier.counters
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
        pres = manager.presentities.get(aor)
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
            subs = manager.subscriptions
            watchers = [
                self._summary(subs[sid], now) for sid in sorted(pres.watchers) if sid in subs
            ]
        document = manager.documentOf(aor)
        return {
            "aor": aor,
            "document": document.decode("utf-8", "replace"),
            "publications": publications,
            "watchers": watchers,
        }

    def subscriptions(
        self, watcher: Optional[str] = None, presentity: Optional[str] = None, objects: bool = False
    ) -> List[Any]:
        """
        The live subscriptions, optionally only those of C{watcher} or to
        C{presentity}, ordered by presentity then watcher.

        @param objects: give the L{Subscription} objects themselves instead
            of summaries.
        """
        manager = self._manager()
        wanted = [
            sub
            for sub in manager.subscriptions.values()
            if (watcher is None or sub.watcher == _aor(watcher))
            and (presentity is None or sub.presentity == _aor(presentity))
        ]
        wanted.sort(key=lambda sub: (sub.presentity, sub.watcher, sub.id))
        if objects:
            return wanted
        now = self.clock.seconds()
        return [self._summary(sub, now) for sub in wanted]

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

    def terminate(
        self, subscription: Union[str, Subscription], reason: str = "deactivated"
    ) -> Deferred:
        """
        End a subscription now: it is forgotten and deleted from the store,
        and its watcher gets a final NOTIFY (C{Subscription-State:
        terminated;reason=REASON}).  RFC 6665 lets the watcher subscribe
        again after C{deactivated}, but not after C{rejected}.

        @param subscription: a subscription, or its id.
        @param reason: one of L{REASONS}.
        @return: a Deferred firing once the store has deleted it.
        @raise KeyError: for an id of no live subscription.
        @raise ValueError: for a reason RFC 6665 does not define.
        """
        manager = self._manager()
        if reason not in REASONS:
            raise ValueError("reason must be one of %s" % (", ".join(sorted(REASONS)),))
        ident = subscription if isinstance(subscription, str) else subscription.id
        sub = manager.subscriptions.get(ident)
        if sub is None:
            raise KeyError("no live subscription %r" % (ident,))
        return manager.terminate(sub, reason)
