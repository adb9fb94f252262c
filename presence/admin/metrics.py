"""
A Prometheus metrics endpoint: C{GET /metrics} in the text exposition
format (version 0.0.4), served by twisted.web.

Why not C{prometheus_client}: it is not installed, and what we export are
numbers the server already keeps (counters on the SIP core, the manager,
the notifier, the store, the dispatcher and the cluster group).  Rendering them at scrape time costs nothing
between scrapes and needs no registry mirroring them; the format is a few
lines of text.  The price is that we write the escaping ourselves (below,
tested) and have no C{process_*} metrics.

Off unless C{[metrics] enabled = yes}; listens on loopback unless
C{listen} says otherwise.  No metric is labelled with an address of
record: label sets stay small and bounded whatever peers send, and a
scrape shows no user's name.

Only the configuration is pickled into a C{.tap} file; the web site and the
port are built in L{MetricsService.startService}.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.logger import Logger
from twisted.web import resource, server

from presence.admin.console import LiveObjects
from presence.admin.listening import Listener, describe, isLoopback
from presence.config import Config
from presence.runtime import RuntimeService

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Labels = Sequence[Tuple[str, str]]
Sample = Tuple[Labels, float]


def formatValue(value: float) -> str:
    """
    A sample value as Prometheus reads it (Go's C{ParseFloat}).
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escapeLabelValue(text: str) -> str:
    """
    Escape a label value: backslash, double quote and line feed.
    """
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escapeHelp(text: str) -> str:
    """
    Escape a HELP text: backslash and line feed.
    """
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Exposition:
    """
    Text exposition being written: each family's HELP and TYPE once, then
    its samples together, as the format requires.
    """

    def __init__(self) -> None:
        self.lines: List[str] = []

    def family(self, name: str, kind: str, help: str, samples: Sequence[Sample]) -> None:
        """
        Add a metric family; one without samples is left out.

        @param kind: C{counter} or C{gauge}.
        """
        if not samples:
            return
        self.lines.append("# HELP %s %s" % (name, escapeHelp(help)))
        self.lines.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            if labels:
                text = ",".join('%s="%s"' % (key, escapeLabelValue(val)) for key, val in labels)
                self.lines.append("%s{%s} %s" % (name, text, formatValue(value)))
            else:
                self.lines.append("%s %s" % (name, formatValue(value)))

    def single(self, name: str, kind: str, help: str, value: Optional[float]) -> None:
        """
        Add a family of one unlabelled sample, unless C{value} is L{None}.
        """
        if value is not None:
            self.family(name, kind, help, [((), value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""


def _sipMetrics(out: Exposition, core: Any) -> None:
    out.family(
        "presence_sip_requests_received_total",
        "counter",
        "SIP requests received, by method (retransmissions and ACKs included; "
        "methods RFC 3261 and its extensions do not define count as other).",
        [((("method", method),), count) for method, count in sorted(core.requestsByMethod.items())],
    )
    out.family(
        "presence_sip_responses_sent_total",
        "counter",
        "SIP responses this server gave, by request method and status class. "
        "Answers to unusable messages are counted in presence_sip_malformed_total only.",
        [
            ((("method", method), ("class", "%dxx" % (kind,))), count)
            for (method, kind), count in sorted(core.responsesSent.items())
        ],
    )
    out.family(
        "presence_sip_responses_received_total",
        "counter",
        "SIP responses received (to our NOTIFYs), by status class.",
        [((("class", "%dxx" % (kind,)),), count) for kind, count in sorted(core.responsesReceived.items())],
    )
    counters = core.counters
    out.single(
        "presence_sip_malformed_total", "counter",
        "Messages that could not be parsed or used (answered 400 when possible).",
        counters.get("malformed"),
    )
    out.single(
        "presence_sip_retransmissions_total", "counter",
        "Request retransmissions absorbed by the transaction layer.",
        counters.get("retransmissions"),
    )
    out.single(
        "presence_sip_send_errors_total", "counter",
        "Answers that could not be sent (closed flow, no listener).",
        counters.get("sendErrors"),
    )
    out.single(
        "presence_sip_transactions", "gauge",
        "Live SIP transactions, server and client, completed ones included.",
        len(core.transactions),
    )
    out.single("presence_sip_flows", "gauge", "Open TCP and TLS connections.", len(core.flows))


def _managerMetrics(out: Exposition, manager: Any) -> None:
    out.single("presence_subscriptions", "gauge", "Live subscriptions.", len(manager.subscriptions))
    out.single("presence_publications", "gauge", "Live publications.", len(manager.publications))
    out.single(
        "presence_presentities", "gauge",
        "Presentities with live publications or watchers.", len(manager.presentities),
    )
    notifies = manager.notifier.counters
    out.single("presence_notify_sent_total", "counter", "NOTIFYs sent.", notifies.get("sent"))
    out.single(
        "presence_notify_failed_total", "counter",
        "NOTIFYs that failed (error response, timeout or transport error).",
        notifies.get("failed"),
    )
    out.single(
        "presence_notify_coalesced_total", "counter",
        "State changes folded into a later NOTIFY by rate control or a NOTIFY in flight.",
        notifies.get("coalesced"),
    )
    out.single(
        "presence_notify_paced_waiting", "gauge",
        "Reloaded or adopted subscriptions still waiting for their paced NOTIFY "
        "([cluster] adopt_notify_rate).",
        manager.notifier.waiting,
    )
    out.single(
        "presence_notify_paced_total", "counter",
        "Paced NOTIFYs sent to the watchers of reloaded or adopted subscriptions.",
        notifies.get("paced"),
    )
    out.single(
        "presence_manager_store_errors_total", "counter",
        "Store writes of the subscription manager that failed.",
        manager.counters.get("storeErrors"),
    )
    overload = getattr(manager, "overload", None)
    if overload is not None:
        out.single(
            "presence_overload_shed_total", "counter",
            "New SUBSCRIBEs and PUBLISHes answered 503 because the manager was overloaded.",
            overload.counters.get("shed"),
        )
        out.single(
            "presence_overload_episodes_total", "counter",
            "Times the manager started shedding new requests.", overload.counters.get("episodes"),
        )
        out.single(
            "presence_reactor_lag_seconds", "gauge",
            "How late the manager's last reactor probe ran.", overload.lag,
        )


def _billingMetrics(out: Exposition, manager: Any) -> None:
    """
    Authentication at the manager's door, and the authorizer: the
    in-memory replica of the embedded one, or the cache in front of a
    remote billing node (each reports only the metrics it has).
    """
    gate = getattr(manager, "gate", None)
    if gate is not None:
        counters = gate.counters
        out.single(
            "presence_auth_challenges_total", "counter",
            "401 challenges sent to requests without credentials.", counters.get("challenges"),
        )
        out.single(
            "presence_auth_failures_total", "counter",
            "Requests with wrong, unknown, malformed or replayed digest credentials (answered 401).",
            counters.get("failures"),
        )
        out.single(
            "presence_auth_stale_total", "counter",
            "Right credentials on an expired nonce (answered 401 stale=true).", counters.get("stale"),
        )
        out.single(
            "presence_auth_rate_limited_total", "counter",
            "Requests refused 403 because their source failed authentication too often.",
            counters.get("rateLimited"),
        )
        out.single(
            "presence_auth_forbidden_total", "counter",
            "Authenticated requests refused 403 for the account's standing (blocked, presence disabled).",
            counters.get("forbidden"),
        )
        out.single(
            "presence_auth_admitted_total", "counter",
            "Requests admitted (authenticated, or from a domain without authentication).",
            counters.get("admitted"),
        )
        out.single(
            "presence_auth_tracked_sources", "gauge",
            "Source addresses with recent authentication failures (bounded).", len(gate.limiter),
        )
    authorizer = getattr(manager, "authorizer", None)
    counters = getattr(authorizer, "counters", None)
    if counters is not None:
        # The embedded authorizer (presence.billing.authorizer).
        out.single(
            "presence_authorization_lookups_total", "counter",
            "Billing lookups (accounts and watch decisions) answered from memory.",
            counters.get("lookups"),
        )
        out.single(
            "presence_authorization_waits_total", "counter",
            "Billing lookups that had to wait for the accounts to be loaded.", counters.get("waited"),
        )
        out.single(
            "presence_authorization_wait_timeouts_total", "counter",
            "Billing lookups that failed because the accounts were still not loaded.",
            counters.get("waitTimeouts"),
        )
        loaded = getattr(authorizer, "loaded", None)
        out.single(
            "presence_authorization_loaded", "gauge",
            "1 once the accounts and watch rules are in memory, 0 until then.",
            None if loaded is None else int(loaded),
        )
        out.single(
            "presence_authorization_accounts", "gauge",
            "Accounts held in memory.", getattr(authorizer, "accountCount", None),
        )
        out.single(
            "presence_authorization_rules", "gauge",
            "Watch rules held in memory.", getattr(authorizer, "ruleCount", None),
        )
        out.single(
            "presence_authorization_changes_applied_total", "counter",
            "Rows of the billing change log applied to the accounts and rules in memory.",
            counters.get("changes"),
        )
        out.single(
            "presence_authorization_reloads_total", "counter",
            "Complete loads of the accounts and rules (the first one, then after pruned changes).",
            counters.get("reloads"),
        )
        out.single(
            "presence_authorization_load_errors_total", "counter",
            "Attempts at the first load of the accounts that failed (retried with a growing delay).",
            counters.get("loadErrors"),
        )
        out.single(
            "presence_authorization_poll_errors_total", "counter",
            "Polls of the billing change log that failed.", counters.get("pollErrors"),
        )
        # The cache in front of a remote billing node (presence.billing.remote).
        out.single(
            "presence_authorization_cache_hits_total", "counter",
            "Billing lookups (accounts and watch decisions) answered from the cache.",
            counters.get("hits"),
        )
        out.single(
            "presence_authorization_cache_misses_total", "counter",
            "Billing lookups that had to ask the billing node.", counters.get("misses"),
        )
        out.single(
            "presence_authorization_cache_entries", "gauge",
            "Billing answers cached now.", getattr(authorizer, "cacheSize", None),
        )
        out.single(
            "presence_authorization_invalidated_total", "counter",
            "Cached billing answers dropped because an account or policy changed.",
            counters.get("invalidated"),
        )
    managerCounters = getattr(manager, "counters", {})
    out.single(
        "presence_subscriptions_rejected_total", "counter",
        "Subscriptions refused or ended because the watcher may not see the presentity.",
        managerCounters.get("rejected"),
    )
    out.single(
        "presence_billing_errors_total", "counter",
        "Requests answered 500 because billing could not be reached.",
        managerCounters.get("billingErrors"),
    )


# (metric, help, key in Dispatcher.counters): counters.
_DISPATCHER_COUNTERS = (
    (
        "presence_dispatcher_flow_failed_total",
        "Requests from managers answered 430 Flow Failed: the user agent's TCP or TLS flow had closed.",
        "flowFailed",
    ),
    (
        "presence_dispatcher_no_manager_total",
        "Requests answered 503 because no live manager was left to try.",
        "unavailable",
    ),
    (
        "presence_dispatcher_failovers_total",
        "Requests sent to another manager after a 503 or the death of the one they waited on.",
        "failovers",
    ),
    (
        "presence_dispatcher_forged_routes_total",
        "Requests refused 403 because their Route carried a bad signature.",
        "forged",
    ),
    (
        "presence_dispatcher_timeouts_total",
        "Relayed requests that got no final response in time (not answered upstream, RFC 4320).",
        "timeouts",
    ),
)


def _dispatcherMetrics(out: Exposition, dispatcher: Any) -> None:
    """
    The dispatching node: what it relayed which way, its refusals, and
    each configured manager's health (manager names come from the
    configuration, so the label set is bounded).
    """
    out.family(
        "presence_dispatcher_requests_relayed_total",
        "counter",
        "Requests sent on, by direction (manager: from user agents, every attempt, failovers "
        "included; user_agent: from managers, their NOTIFYs) and method.",
        [
            ((("direction", direction), ("method", method)), count)
            for (direction, method), count in sorted(dispatcher.requestsRelayed.items())
        ],
    )
    out.family(
        "presence_dispatcher_responses_relayed_total",
        "counter",
        "Responses relayed back to whoever sent the request, by status class "
        "(100 Trying is hop by hop: not relayed).",
        [
            ((("class", "%dxx" % (kind,)),), count)
            for kind, count in sorted(dispatcher.responsesRelayed.items())
        ],
    )
    counters = dispatcher.counters
    for name, help, key in _DISPATCHER_COUNTERS:
        out.single(name, "counter", help, counters.get(key))
    managers = list(dispatcher.managers)
    out.single(
        "presence_dispatcher_managers_up", "gauge",
        "Managers answering the health check, of those configured.",
        sum(1 for manager in managers if manager.up),
    )
    out.family(
        "presence_dispatcher_manager_up",
        "gauge",
        "1 while the manager answers the health check (in rotation), 0 while it is out.",
        [((("manager", manager.name),), int(manager.up)) for manager in managers],
    )
    out.family(
        "presence_dispatcher_manager_in_flight",
        "gauge",
        "Requests forwarded to the manager and still waiting for a final response.",
        [((("manager", manager.name),), manager.inFlight) for manager in managers],
    )
    out.family(
        "presence_dispatcher_manager_pings_total",
        "counter",
        "Health-check OPTIONS sent to the manager.",
        [((("manager", manager.name),), manager.pings) for manager in managers],
    )
    out.family(
        "presence_dispatcher_manager_ping_answers_total",
        "counter",
        "Health-check OPTIONS the manager answered.",
        [((("manager", manager.name),), manager.answers) for manager in managers],
    )


# (metric, help, key in PeerGroup.counters): counters.
_CLUSTER_COUNTERS = (
    (
        "presence_cluster_updates_sent_total",
        "Publication updates replicated to peers (one per update and peer).",
        "sent",
    ),
    (
        "presence_cluster_updates_received_total",
        "Publication updates received from peers (resync pages included) or read from the store.",
        "received",
    ),
    (
        "presence_cluster_updates_applied_total",
        "Received updates that changed this manager's state.",
        "applied",
    ),
    (
        "presence_cluster_updates_ignored_total",
        "Received updates ignored as stale or duplicate (known, removed or expired publication).",
        "ignored",
    ),
    (
        "presence_cluster_updates_refused_total",
        "Received publications refused because their PIDF body does not parse.",
        "refused",
    ),
    ("presence_cluster_resyncs_total", "Resynchronisations pulled from a peer that (re)appeared.", "resyncs"),
    ("presence_cluster_resync_pages_total", "Pages pulled by resynchronisations.", "pages"),
    (
        "presence_cluster_adoptions_total",
        "Adoption runs completed: taking over the stored subscriptions of a peer gone for adopt_after.",
        "adoptions",
    ),
    (
        "presence_cluster_adoptions_postponed_total",
        "Adoptions put off because fewer managers than the quorum were reachable.",
        "adoptionsPostponed",
    ),
    (
        "presence_cluster_subscriptions_adopted_total",
        "Subscriptions taken over from dead peers.",
        "adopted",
    ),
    (
        "presence_cluster_subscriptions_handed_over_total",
        "Subscriptions handed over to a live peer that got a request of their dialog.",
        "handedOver",
    ),
    (
        "presence_cluster_subscriptions_taken_over_total",
        "Subscriptions a live peer handed over to this manager.",
        "takenOver",
    ),
    (
        "presence_cluster_adoptions_lease_live_total",
        "Adoptions put off because the silent peer's lease in the database was still live.",
        "adoptionsLeaseLive",
    ),
    (
        "presence_cluster_fenced_total",
        "Times this manager stopped notifying because its own lease was no longer safe.",
        "fenced",
    ),
    (
        "presence_cluster_subscriptions_dropped_total",
        "Subscriptions this manager dropped because a peer adopted them while it was fenced.",
        "dropped",
    ),
)

# (metric, help, ManagerLease counter)
_LEASE_COUNTERS = (
    ("presence_cluster_lease_registrations_total", "Leases registered (a new epoch) by this manager.", "registrations"),
    ("presence_cluster_lease_renewals_total", "Lease renewals committed.", "renewals"),
    ("presence_cluster_lease_failures_total", "Lease writes that failed.", "failures"),
    (
        "presence_cluster_lease_lost_total",
        "Renewals that found the lease taken over (epoch changed by an adopter).",
        "fenced",
    ),
    ("presence_cluster_lease_ran_out_total", "Times the lease ran out before a renewal committed.", "ranOut"),
)


def _clusterMetrics(out: Exposition, group: Any) -> None:
    """
    This manager's cluster links and replication (peer names come from
    the configuration: a bounded label set).
    """
    names = sorted(group.peerNames)
    out.single(
        "presence_cluster_peers_connected", "gauge",
        "Peers this manager is logged in to, of those configured.",
        sum(1 for name in names if name in group.peers),
    )
    out.family(
        "presence_cluster_peer_up",
        "gauge",
        "1 while this manager is logged in to the peer, 0 while it cannot reach it.",
        [((("peer", name),), int(name in group.peers)) for name in names],
    )
    counters = group.counters
    for name, help, key in _CLUSTER_COUNTERS:
        out.single(name, "counter", help, counters.get(key))
    lease = getattr(group, "lease", None)
    if lease is not None:
        out.single(
            "presence_cluster_lease_safe", "gauge",
            "1 while this manager's lease is safe and it sends NOTIFYs, 0 while fenced.",
            int(bool(lease.holding)),
        )
        for name, help, key in _LEASE_COUNTERS:
            out.single(name, "counter", help, lease.counters.get(key))
    out.single(
        "presence_cluster_tombstones", "gauge",
        "Removed publications remembered so that late updates cannot bring them back.",
        len(group.tombstones),
    )


# (metric, type, help, store attribute)
_STORE_METRICS = (
    ("presence_store_batches_total", "counter", "Write batches run by the store.", "batchCount"),
    (
        "presence_store_commits_total", "counter",
        "Transactions committed by the store's writer (group commit: one per batch).",
        "commitCount",
    ),
    (
        "presence_store_replays_total", "counter",
        "Batches that failed and were replayed one operation at a time.",
        "replayCount",
    ),
    ("presence_store_pending_writes", "gauge", "Writes queued or being committed.", "pendingWrites"),
    (
        "presence_store_writes_total", "counter",
        "Write operations completed; rate(writes) / rate(batches) is the mean batch size.",
        "writeCount",
    ),
    ("presence_store_last_batch_size", "gauge", "Operations in the last write batch.", "lastBatchSize"),
    (
        "presence_store_last_commit_latency_seconds", "gauge",
        "Seconds the last write batch spent in the database, begin to commit.",
        "lastCommitLatency",
    ),
)


def _storeMetrics(out: Exposition, store: Any) -> None:
    for name, kind, help, attribute in _STORE_METRICS:
        out.single(name, kind, help, getattr(store, attribute, None))


def collect(live: LiveObjects) -> str:
    """
    The metrics of the running parts of the server, as exposition text.
    Parts that are not running (a manager still loading, a process without
    a store, a manager's families in a dispatcher and the dispatcher's in
    a manager, the cluster's before it has joined) are simply absent;
    C{presence_manager_ready} tells the first.
    """
    out = Exposition()
    core = live.core
    if core is not None:
        _sipMetrics(out, core)
    if live.service("manager") is not None:
        manager = live.manager
        out.single(
            "presence_manager_ready", "gauge",
            "1 once the subscription manager serves, 0 while it loads.",
            int(manager is not None),
        )
        if manager is not None:
            _managerMetrics(out, manager)
            _billingMetrics(out, manager)
    dispatcher = getattr(live.service("dispatcher"), "dispatcher", None)
    if dispatcher is not None:
        _dispatcherMetrics(out, dispatcher)
    group = getattr(live.service("cluster"), "group", None)
    if group is not None:
        _clusterMetrics(out, group)
    store = live.store
    if store is not None:
        _storeMetrics(out, store)
    return out.text()


class MetricsResource(resource.Resource):
    """
    C{/metrics}: renders the exposition at each scrape.
    """

    isLeaf = True

    def __init__(self, collect: Callable[[], str]) -> None:
        resource.Resource.__init__(self)
        self.collect = collect

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self.collect().encode("utf-8")


class MetricsRoot(resource.Resource):
    """
    The site's root: C{/metrics}, and a plain 404 for anything else.
    """

    def __init__(self, collect: Callable[[], str]) -> None:
        resource.Resource.__init__(self)
        self.putChild(b"metrics", MetricsResource(collect))

    def getChild(self, path: bytes, request: Any) -> resource.IResource:
        return NotFound()


class NotFound(resource.Resource):
    """
    A plain-text 404 pointing at C{/metrics}.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found: the metrics are at /metrics\n"


class QuietSite(server.Site):
    """
    A site that writes no access log: a scrape every few seconds would
    drown the server's log.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(RuntimeService):
    """
    The metrics endpoint in the service tree (name C{"metrics"}).  It finds
    the parts it reports on through its parent.

    @ivar address: the address it listens on, once started.
    """

    log = Logger()
    name = "metrics"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        """
        No site and no port before start: L{startService} builds them.
        """
        self._listener: Optional[Listener] = None
        self.address: Any = None

    def startService(self) -> None:
        """
        Listen.

        @raise twisted.internet.error.CannotListenError: when the address
            is taken.
        """
        assert self.parent is not None, "the metrics endpoint needs the service tree as its parent"
        live = LiveObjects(self.parent)
        site = QuietSite(MetricsRoot(lambda: collect(live)))
        listener = Listener(self.reactor, self.config.metricsListen, site)
        self.address = listener.listen()
        self._listener = listener
        service.Service.startService(self)
        where = describe(self.address)
        self.log.info("Metrics listening on {address} (GET /metrics)", address=where)
        if not isLoopback(self.address):
            self.log.warn("The metrics endpoint listens on {address}, not on loopback only", address=where)

    def stopService(self) -> Any:
        """
        Stop listening and close open scrape connections.
        """
        service.Service.stopService(self)
        listener, self._listener = self._listener, None
        self.address = None
        if listener is None:
            return None
        return listener.stop()
