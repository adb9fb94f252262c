"""
The server's metric families for C{prometheus_client}: a custom collector
that reads the live objects of the service tree at each scrape.

Why a collector and not instruments updated as things happen: the numbers
already exist (counters on the SIP core, the manager, the notifier, the
registrar, the store, the dispatcher and the cluster group; latency
histograms in L{presence.latency}), so reading them at scrape time costs nothing between
scrapes and nothing on the hot path, and mirrors nothing.  The collector
is called by the metrics endpoint's request handler, on the reactor
thread, so it reads the same state the server changes, with no locking;
no thread ever reads the live objects.

No metric is labelled with an address of record: label sets stay small
and bounded whatever peers send, and a scrape shows no user's name.
Parts that are not running (a manager still loading, a process without a
store, a manager's families in a dispatcher and the dispatcher's in a
manager, the cluster's before it has joined) are simply absent;
C{presence_manager_ready} tells the first.
"""

from __future__ import annotations

import platform
from typing import Any, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import twisted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from presence.admin.console import LiveObjects
from presence.interfaces import ISubscriptionManager
from presence.latency import LatencyHistogram
from presence.version import version

Labels = Sequence[Tuple[str, str]]
Sample = Tuple[Labels, float]


class Families:
    """
    The metric families of one scrape, in the order they are added.
    """

    def __init__(self) -> None:
        self.metrics: List[Metric] = []

    def family(self, name: str, kind: str, help: str, samples: Sequence[Sample]) -> None:
        """
        Add a family whose samples all have the same label names; one
        without samples is left out.

        @param kind: C{counter} (C{name} ends in C{_total}) or C{gauge}.
        """
        if not samples:
            return
        labelNames = [key for key, _ in samples[0][0]]
        maker = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        metric = maker(name, help, labels=labelNames)
        for labels, value in samples:
            metric.add_metric([val for _, val in labels], value)
        self.metrics.append(metric)

    def single(self, name: str, kind: str, help: str, value: Optional[float]) -> None:
        """
        Add a family of one unlabelled sample, unless C{value} is L{None}.
        """
        if value is not None:
            self.family(name, kind, help, [((), value)])

    def histograms(self, name: str, help: str, labelName: str, histograms: Sequence[Tuple[str, LatencyHistogram]]) -> None:
        """
        Add a histogram family in seconds (C{name} ends in C{_seconds}),
        one histogram per value of the label C{labelName} (none if it is
        C{""}).
        """
        if not histograms:
            return
        metric = HistogramMetricFamily(name, help, labels=[labelName] if labelName else [], unit="seconds")
        for labelValue, histogram in histograms:
            buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
            metric.add_metric([labelValue] if labelName else [], buckets, histogram.sum)
        self.metrics.append(metric)


def _buildInfo(out: Families) -> None:
    metric = InfoMetricFamily(
        "presence_build",
        "This server's version and what it runs on.",
        value={
            "version": version,
            "python_implementation": platform.python_implementation(),
            "python_version": platform.python_version(),
            "twisted_version": twisted.__version__,
        },
    )
    out.metrics.append(metric)


def _sipMetrics(out: Families, core: Any) -> None:
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
    intake = getattr(core, "intake", None)
    if intake is not None:
        out.family(
            "presence_sip_intake_total", "counter",
            "New SUBSCRIBEs and PUBLISHes over UDP by what the intake did with them: served, "
            "refused 503 or dropped unparsed after waiting too long in the receive buffer.",
            [((("outcome", outcome),), intake.counters.get(key)) for outcome, key in
             (("served", "accepted"), ("refused", "refused"), ("dropped", "dropped"))],
        )
        out.single(
            "presence_sip_intake_episodes_total", "counter",
            "Times the UDP intake started shedding new requests.", intake.counters.get("episodes"),
        )
    out.histograms(
        "presence_sip_request_duration_seconds",
        "Seconds from a request's arrival to its final response, by method "
        "(through a dispatcher: the managers' work and the relaying included).",
        "method",
        sorted(core.transactions.answerTimes.items()),
    )


class ManagerReading(NamedTuple):
    """
    What the collectors read of the subscription manager, all read in
    L{readManager} through its L{ISubscriptionManager}.
    """

    subscriptions: int
    publications: int
    presentities: int
    counters: Mapping[str, int]
    notifies: Mapping[str, int]
    pacedWaiting: int
    publishToNotify: LatencyHistogram
    overload: Any
    gate: Any
    authorizer: Any
    draining: bool


def readManager(manager: ISubscriptionManager) -> ManagerReading:
    sizes = manager.sizes()
    return ManagerReading(
        subscriptions=sizes["subscriptions"],
        publications=sizes["publications"],
        presentities=sizes["presentities"],
        counters=manager.counters,
        notifies=manager.notifyCounters,
        pacedWaiting=sizes["pacedWaiting"],
        publishToNotify=manager.publishToNotify,
        overload=manager.overload,
        gate=manager.gate,
        authorizer=manager.authorizer,
        draining=manager.draining,
    )


def _managerMetrics(out: Families, manager: ManagerReading) -> None:
    out.single(
        "presence_manager_draining", "gauge",
        "1 while the manager drains (presence-admin live drain): new work is refused.",
        int(manager.draining),
    )
    out.single("presence_subscriptions", "gauge", "Live subscriptions.", manager.subscriptions)
    out.single("presence_publications", "gauge", "Live publications.", manager.publications)
    out.single(
        "presence_presentities", "gauge",
        "Presentities with live publications or watchers.", manager.presentities,
    )
    notifies = manager.notifies
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
        manager.pacedWaiting,
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
    out.histograms(
        "presence_publish_to_notify_seconds",
        "Seconds from a PUBLISH's arrival (here, or its replicated update from a peer) "
        "to each NOTIFY carrying its change to a watcher.",
        "",
        [("", manager.publishToNotify)],
    )
    overload = manager.overload
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


def _billingMetrics(out: Families, manager: ManagerReading) -> None:
    """
    Authentication at the manager's door, and the authorizer: the
    in-memory replica of the embedded one, or the cache in front of a
    remote billing node (each reports only the metrics it has).
    """
    gate = manager.gate
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
    authorizer = manager.authorizer
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
    managerCounters = manager.counters
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


# (metric, help, key in ClosedFlowNotifier.counters): counters.
_CLOSING_COUNTERS = (
    (
        "presence_dispatcher_flow_close_notices_sent_total",
        "Notices sent to managers that user agents' connections carrying REGISTERs closed "
        "(one request names up to 32 connections).",
        "notices",
    ),
    (
        "presence_dispatcher_flow_close_flows_notified_total",
        "Closed connections named in the notices sent (one per connection and manager).",
        "flows",
    ),
    (
        "presence_dispatcher_flow_close_flows_lost_total",
        "Closed connections whose manager could not be told (unreachable, or no 200): "
        "their bindings last until they expire.",
        "lost",
    ),
)


def _dispatcherMetrics(out: Families, dispatcher: Any) -> None:
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
    closing = getattr(dispatcher, "closing", None)
    if closing is not None:
        for name, help, key in _CLOSING_COUNTERS:
            out.single(name, "counter", help, closing.counters.get(key))
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
        "presence_dispatcher_manager_draining",
        "gauge",
        "1 while the manager answers the health check 503 (draining): out of rotation for new work.",
        [((("manager", manager.name),), int(getattr(manager, "draining", False))) for manager in managers],
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


def _clusterMetrics(out: Families, group: Any) -> None:
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


# (metric, help, key in Registrar.counters): counters.
_REGISTRAR_COUNTERS = (
    (
        "presence_registrar_registers_total",
        "REGISTER requests received (retransmissions absorbed); their answers are in "
        'presence_sip_responses_sent_total{method="REGISTER"}.',
        "registers",
    ),
    ("presence_registrar_bindings_added_total", "Bindings created by a REGISTER.", "added"),
    ("presence_registrar_bindings_refreshed_total", "Bindings a REGISTER renewed or changed.", "refreshed"),
    ("presence_registrar_bindings_removed_total", "Bindings a REGISTER removed (expires 0 or *).", "removed"),
    ("presence_registrar_bindings_expired_total", "Bindings that expired unrefreshed.", "expired"),
    (
        "presence_registrar_bindings_flow_closed_total",
        "Bindings dropped because the TCP, TLS or WebSocket connection they were registered "
        "over closed (this process's, or a dispatcher's it gave notice of).",
        "flowClosed",
    ),
    (
        "presence_registrar_flow_notices_accepted_total",
        "Dispatchers' notices of closed connections accepted (signed with the cluster secret).",
        "flowNotices",
    ),
    (
        "presence_registrar_flow_notices_refused_total",
        "Notices of closed connections refused: malformed (400), badly signed or without "
        "a [dispatcher] secret here (403).",
        "badFlowNotices",
    ),
    ("presence_registrar_store_errors_total", "Store writes of the registrar that failed.", "storeErrors"),
    (
        "presence_registrar_billing_errors_total",
        "REGISTERs answered 500 because billing could not be reached.",
        "billingErrors",
    ),
)


def _registrarMetrics(out: Families, registrar: Any) -> None:
    """
    The registrar beside a manager: its bindings now, and what REGISTERs,
    expiry and closed connections did to them.
    """
    out.single("presence_registrar_bindings", "gauge", "Live registration bindings.", registrar.bindingCount)
    out.single(
        "presence_registrar_aors", "gauge", "Addresses of record with live bindings.", len(registrar.bindings)
    )
    counters = registrar.counters
    for name, help, key in _REGISTRAR_COUNTERS:
        out.single(name, "counter", help, counters.get(key))


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


def _storeMetrics(out: Families, store: Any) -> None:
    for name, kind, help, attribute in _STORE_METRICS:
        out.single(name, kind, help, getattr(store, attribute, None))
    latency = getattr(store, "commitLatency", None)
    if latency is not None:
        out.histograms(
            "presence_store_commit_duration_seconds",
            "Seconds each committed write batch spent in the database, begin to commit.",
            "",
            [("", latency)],
        )


def collect(live: LiveObjects) -> List[Metric]:
    """
    The metric families of the running parts of the server.
    """
    out = Families()
    _buildInfo(out)
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
            reading = readManager(manager)
            _managerMetrics(out, reading)
            _billingMetrics(out, reading)
    registrar = getattr(live.service("manager"), "registrar", None)
    if registrar is not None:
        _registrarMetrics(out, registrar)
    dispatcher = getattr(live.service("dispatcher"), "dispatcher", None)
    if dispatcher is not None:
        _dispatcherMetrics(out, dispatcher)
    group = getattr(live.service("cluster"), "group", None)
    if group is not None:
        _clusterMetrics(out, group)
    store = live.store
    if store is not None:
        _storeMetrics(out, store)
    return out.metrics


class PresenceCollector:
    """
    A C{prometheus_client} collector of L{collect}'s families for one
    service tree.
    """

    def __init__(self, live: LiveObjects) -> None:
        self.live = live

    def collect(self) -> Iterator[Metric]:
        return iter(collect(self.live))
