"""
The Prometheus metrics endpoint: the exposition format, what it reports
after real SIP traffic to C{twistd -n presence}, and its service.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Dict, FrozenSet, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import defer, protocol

from presence.admin.console import LiveObjects
from presence.admin.metrics import (
    Exposition,
    MetricsService,
    collect,
    escapeHelp,
    escapeLabelValue,
    formatValue,
)
from presence.config import Config
from tests.serverprocess import ServerProcess
from tests.sipclient import UDPClient, answer, newRequest

Key = Tuple[str, FrozenSet[Tuple[str, str]]]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)$" % (_NAME,))
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\[\\"n])*)"(?:,|$)')


def parseExposition(text: str) -> Dict[Key, float]:
    """
    Parse text exposition strictly enough to catch format mistakes: every
    line is a HELP, a TYPE or a sample; each family is declared once, HELP
    then TYPE, before its samples, which come together; label values are
    properly escaped; values parse as Prometheus parses them.
    """
    assert text.endswith("\n"), "exposition must end with a line feed"
    samples: Dict[Key, float] = {}
    declared: List[str] = []
    current = None
    helped = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.match("^%s$" % (_NAME,), name), line
            assert name not in declared, "family %s declared twice" % (name,)
            helped = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == helped, "TYPE %s does not follow its HELP" % (name,)
            assert kind in ("counter", "gauge"), line
            declared.append(name)
            current = name
        else:
            match = _SAMPLE.match(line)
            assert match is not None, "bad sample line %r" % (line,)
            name, labelText, value = match.groups()
            assert name == current, "sample %s outside its family %s" % (name, current)
            labels = frozenset()
            if labelText:
                pairs = _LABEL.findall(labelText)
                assert ",".join('%s="%s"' % pair for pair in pairs) == labelText, labelText
                labels = frozenset(pairs)
            key = (name, labels)
            assert key not in samples, "duplicate sample %r" % (key,)
            samples[key] = float(value.replace("Inf", "inf"))
    return samples


def value(samples: Dict[Key, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# Format.


def test_formatValue():
    assert formatValue(3) == "3"
    assert formatValue(True) == "1"
    assert formatValue(0.25) == "0.25"
    assert formatValue(1.5e-05) == "1.5e-05"
    assert formatValue(float("inf")) == "+Inf"
    assert formatValue(float("-inf")) == "-Inf"
    assert formatValue(float("nan")) == "NaN"


def test_escaping():
    assert escapeLabelValue('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escapeHelp('a\\b"c\nd') == 'a\\\\b"c\\nd'
    out = Exposition()
    out.family("x_total", "counter", "Two\nlines.", [((("k", 'q"\n\\'),), 1)])
    out.family("empty", "gauge", "No samples.", [])
    out.single("none", "gauge", "Absent.", None)
    assert out.text() == '# HELP x_total Two\\nlines.\n# TYPE x_total counter\nx_total{k="q\\"\\n\\\\"} 1\n'
    assert parseExposition(out.text()) == {("x_total", frozenset([("k", 'q\\"\\n\\\\')])): 1.0}
    assert Exposition().text() == ""


def _tree(**services: object) -> service.MultiService:
    root = service.MultiService()
    for name, attributes in services.items():
        child = service.Service()
        child.__dict__.update(attributes)  # type: ignore[arg-type]
        child.setName(name)
        child.setServiceParent(root)
    return root


def test_collectWhatIsRunning():
    """
    Only running parts are reported; a manager still loading shows as
    presence_manager_ready 0 with no manager metrics.
    """
    core = SimpleNamespace(
        requestsByMethod={"SUBSCRIBE": 3, "other": 1},
        responsesSent={("SUBSCRIBE", 2): 2, ("SUBSCRIBE", 4): 1, ("other", 5): 1},
        responsesReceived={2: 5, 4: 1},
        counters={"requests": 4, "responses": 6, "retransmissions": 2, "malformed": 7, "sendErrors": 0},
        transactions=[1, 2],
        flows=[],
    )
    store = SimpleNamespace(
        batchCount=4, commitCount=4, replayCount=0, writeCount=9, lastBatchSize=3,
        lastCommitLatency=0.0125,
    )
    root = _tree(sip={"core": core}, manager={"manager": None}, store={"store": store})
    samples = parseExposition(collect(LiveObjects(root)))
    assert value(samples, "presence_sip_requests_received_total", method="SUBSCRIBE") == 3
    assert value(samples, "presence_sip_requests_received_total", method="other") == 1
    assert value(samples, "presence_sip_responses_sent_total", method="SUBSCRIBE", **{"class": "4xx"}) == 1
    assert value(samples, "presence_sip_responses_sent_total", method="other", **{"class": "5xx"}) == 1
    assert value(samples, "presence_sip_responses_received_total", **{"class": "2xx"}) == 5
    assert value(samples, "presence_sip_malformed_total") == 7
    assert value(samples, "presence_sip_retransmissions_total") == 2
    assert value(samples, "presence_sip_transactions") == 2
    assert value(samples, "presence_sip_flows") == 0
    assert value(samples, "presence_manager_ready") == 0
    assert value(samples, "presence_store_last_commit_latency_seconds") == 0.0125
    assert value(samples, "presence_store_writes_total") == 9
    assert not [key for key in samples if key[0] in ("presence_subscriptions", "presence_notify_sent_total")]
    assert collect(LiveObjects(_tree())) == ""


def test_servicePicklesConfigurationOnly():
    svc = MetricsService(Config(metricsEnabled=True))
    svc._listener = object()
    svc.address = object()
    assert not {"_listener", "address", "_reactor"} & set(svc.__getstate__())
    copy = pickle.loads(pickle.dumps(svc))
    assert copy.name == "metrics" and copy.config == svc.config
    assert copy._listener is None and copy.address is None


def test_defaultsAreOff():
    config = Config()
    assert config.metricsEnabled is False
    assert config.metricsListen == "tcp:9090:interface=127.0.0.1"


# The service, in this process.


class RawHTTP(protocol.Protocol):
    """
    An HTTP/1.1 client that keeps its connection open between requests,
    as Prometheus does.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: Optional[defer.Deferred] = None
        self.lost: defer.Deferred = defer.Deferred()

    def get(self, path: bytes) -> defer.Deferred:
        self.waiting = defer.Deferred()
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (path,))
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        if len(rest) >= length and self.waiting is not None:
            self.buffer = rest[length:]
            waiting, self.waiting = self.waiting, None
            waiting.callback((int(lines[0].split()[1]), headers, rest[:length]))

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


@pytest_twisted.inlineCallbacks
def test_serviceServesAndClosesKeptAliveConnections():
    """
    The endpoint answers /metrics with the exposition content type and 404
    elsewhere, on a connection kept alive; stopping the service closes that
    connection at once.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    store = SimpleNamespace(batchCount=3, commitCount=3, replayCount=0, writeCount=5,
                            lastBatchSize=2, lastCommitLatency=0.5)
    root = _tree(store={"store": store})
    metrics = MetricsService(Config(metricsEnabled=True, metricsListen="tcp:0:interface=127.0.0.1"))
    metrics.setServiceParent(root)
    root.startService()
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", metrics.address.port)
        client = yield connectProtocol(endpoint, RawHTTP())
        code, headers, body = yield client.get(b"/metrics")
        assert code == 200
        assert headers[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
        samples = parseExposition(body.decode("utf-8"))
        assert value(samples, "presence_store_batches_total") == 3
        assert value(samples, "presence_store_last_batch_size") == 2
        assert value(samples, "presence_store_last_commit_latency_seconds") == 0.5
        code, _, _ = yield client.get(b"/")
        assert code == 404
        code, _, _ = yield client.get(b"/metrics/more")
        assert code == 200  # a leaf: Prometheus never asks, nothing is exposed twice
        assert not client.lost.called
    finally:
        yield root.stopService()
    yield client.lost.addTimeout(5, reactor)


# twistd with real SIP traffic.

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
    '<tuple id="t1"><status><basic>open</basic></status></tuple></presence>\n'
)


def _scrape(port: int, path: str = "/metrics"):
    return urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10)


def test_scrapeAfterTraffic(tmp_path):
    """
    After SUBSCRIBE, PUBLISH, the NOTIFYs they cause, an OPTIONS, a refused
    SUBSCRIBE and an unknown method, a scrape of twistd's endpoint reports
    each by method and class, the live state and the store's work.
    """
    workdir = str(tmp_path)
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        f.write(
            "[manager]\nnotify_min_interval = 0\n"
            "[billing]\nno_auth_domains = example.test\n"
            "[metrics]\nenabled = yes\nlisten = tcp:0:interface=127.0.0.1\n"
        )
    server = ServerProcess(
        workdir,
        ["--config", config, "--listen", "udp:0:interface=127.0.0.1", "--domain", "example.test"],
    ).start("Subscription manager")
    try:
        line = server.waitFor("Metrics listening on")
        port = int(re.search(r"Metrics listening on 127\.0\.0\.1:(\d+) ", line).group(1))
        ua = UDPClient(server.ports["UDP"])
        try:
            bob = "sip:bob@example.test"
            ok = ua.request("SUBSCRIBE", bob, Event="presence", Expires="300",
                            fromURI="sip:alice@example.test")
            assert ok.code == 200
            ua.send(answer(ua.receiveMessage()))
            ua.send(newRequest("PUBLISH", bob, ua.port, body=PIDF.encode(), Event="presence",
                               Expires="600", Content_Type="application/pidf+xml", fromURI=bob))
            codes = []
            for _ in range(2):
                message = ua.receiveMessage()
                if hasattr(message, "method"):
                    ua.send(answer(message))
                else:
                    codes.append(message.code)
            assert codes == [200]
            assert ua.request("SUBSCRIBE", bob, Expires="300").code == 489
            assert ua.request("FROBNICATE", bob).code == 501
            # Last, on the same socket: once it is answered, the server has
            # read the NOTIFY answers sent before it.
            assert ua.request("OPTIONS", bob).code == 200
        finally:
            ua.close()

        response = _scrape(port)
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parseExposition(response.read().decode("utf-8"))
        requests = "presence_sip_requests_received_total"
        assert value(samples, requests, method="SUBSCRIBE") == 2
        assert value(samples, requests, method="PUBLISH") == 1
        assert value(samples, requests, method="OPTIONS") == 1
        assert value(samples, requests, method="other") == 1
        sent = "presence_sip_responses_sent_total"
        assert value(samples, sent, method="SUBSCRIBE", **{"class": "2xx"}) == 1
        assert value(samples, sent, method="SUBSCRIBE", **{"class": "4xx"}) == 1
        assert value(samples, sent, method="PUBLISH", **{"class": "2xx"}) == 1
        assert value(samples, sent, method="OPTIONS", **{"class": "2xx"}) == 1
        assert value(samples, sent, method="other", **{"class": "5xx"}) == 1
        assert value(samples, "presence_sip_responses_received_total", **{"class": "2xx"}) == 2
        assert value(samples, "presence_manager_ready") == 1
        assert value(samples, "presence_subscriptions") == 1
        assert value(samples, "presence_publications") == 1
        assert value(samples, "presence_presentities") == 1
        assert value(samples, "presence_notify_sent_total") == 2
        assert value(samples, "presence_notify_failed_total") == 0
        assert value(samples, "presence_manager_store_errors_total") == 0
        assert value(samples, "presence_overload_shed_total") == 0
        assert value(samples, "presence_store_pending_writes") == 0
        assert 0 <= value(samples, "presence_reactor_lag_seconds") < 1
        assert value(samples, "presence_store_commits_total") >= 2
        assert value(samples, "presence_store_writes_total") >= 2
        assert value(samples, "presence_store_batches_total") >= 2
        assert value(samples, "presence_store_last_batch_size") >= 1
        latency = value(samples, "presence_store_last_commit_latency_seconds")
        assert 0 < latency < 10 and not math.isnan(latency)

        with pytest.raises(urllib.error.HTTPError) as raised:
            _scrape(port, "/")
        assert raised.value.code == 404
        assert not [line for line in server.output if '"GET /metrics HTTP' in line], "access log written"
    finally:
        server.stopCleanly()


# The dispatching node and the cluster, driven at unit level.


def test_dispatcherMetrics():
    """
    A dispatcher's scrape: requests relayed by direction and method,
    responses relayed by class, 430, 503 and forged-route refusals, and
    each manager's health; no manager or cluster family.
    """
    from presence.sip.message import Response
    from tests.test_dispatcher import (
        Node, StreamPeer, UA, answerFrom, forwardedOnce, notify, subscribe,
    )

    node = Node(policy="round_robin")
    root = _tree(sip={"core": node.core}, dispatcher={"dispatcher": node.dispatcher})
    samples = parseExposition(collect(LiveObjects(root)))
    assert value(samples, "presence_dispatcher_managers_up") == 3
    for name in ("m1", "m2", "m3"):
        assert value(samples, "presence_dispatcher_manager_up", manager=name) == 1
        assert value(samples, "presence_dispatcher_manager_pings_total", manager=name) == 1
        assert value(samples, "presence_dispatcher_manager_ping_answers_total", manager=name) == 1
    assert value(samples, "presence_dispatcher_no_manager_total") == 0
    assert not [key for key in samples if key[0] == "presence_dispatcher_requests_relayed_total"]

    # A watcher over TCP: its SUBSCRIBE and the 200, a NOTIFY and its 200.
    peer = StreamPeer(node.core)
    peer.send(subscribe(transport="TCP"))
    forwarded, owner = forwardedOnce(node)
    recordRoute = forwarded.header("record-route") or ""
    answerFrom(node, owner, forwarded, 200)
    peer.received()
    node.receive(notify([recordRoute]), node.fromManager(owner))
    [relayed] = peer.received()
    peer.send(Response.forRequest(relayed, 200))
    node.takeNonPing()
    # The watcher leaves: the next NOTIFY is answered 430.
    peer.close()
    node.receive(notify([recordRoute]), node.fromManager(owner))
    node.takeNonPing()
    # A PUBLISH that its first manager answers 503, another 200; a
    # SUBSCRIBE left waiting; a forged route.
    node.receive(subscribe(method="PUBLISH", callId="pub-1"), UA)
    publish, first = forwardedOnce(node)
    answerFrom(node, first, publish, 503)
    publish, second = forwardedOnce(node)
    assert second != first
    answerFrom(node, second, publish, 200)
    node.takeNonPing()
    node.receive(subscribe(callId="waiting"), UA)
    forwardedOnce(node)
    forged = recordRoute.replace("m=" + owner, "m=" + ("m1" if owner != "m1" else "m2"))
    node.receive(subscribe(toTag="mgrtag", route=[forged], callId="forged"), UA)
    node.takeNonPing()

    samples = parseExposition(collect(LiveObjects(root)))
    relayedTotal = "presence_dispatcher_requests_relayed_total"
    assert value(samples, relayedTotal, direction="manager", method="SUBSCRIBE") == 2
    assert value(samples, relayedTotal, direction="manager", method="PUBLISH") == 2
    assert value(samples, relayedTotal, direction="user_agent", method="NOTIFY") == 1
    assert value(samples, "presence_dispatcher_responses_relayed_total", **{"class": "2xx"}) == 3
    assert value(samples, "presence_dispatcher_failovers_total") == 1
    assert value(samples, "presence_dispatcher_flow_failed_total") == 1
    assert value(samples, "presence_dispatcher_forged_routes_total") == 1
    inFlight = "presence_dispatcher_manager_in_flight"
    assert sum(value(samples, inFlight, manager=n) for n in ("m1", "m2", "m3")) == 1
    others = ("presence_manager", "presence_subscriptions", "presence_cluster", "presence_store")
    assert not [key for key in samples if key[0].startswith(others)]

    # One manager stops answering: out of rotation; then all of them: 503.
    node.advance(1.6, answering=["m1", "m2"])
    samples = parseExposition(collect(LiveObjects(root)))
    assert value(samples, "presence_dispatcher_managers_up") == 2
    assert value(samples, "presence_dispatcher_manager_up", manager="m3") == 0
    assert value(samples, "presence_dispatcher_manager_up", manager="m1") == 1
    node.advance(1.6)
    node.take()
    node.receive(subscribe(callId="late"), UA)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 503
    samples = parseExposition(collect(LiveObjects(root)))
    assert value(samples, "presence_dispatcher_managers_up") == 0
    # The waiting SUBSCRIBE failed over as its managers died, then found
    # none left, like the late one.
    assert value(samples, "presence_dispatcher_no_manager_total") == 2
    assert value(samples, "presence_dispatcher_responses_relayed_total", **{"class": "2xx"}) == 3
    node.dispatcher.stop()


def test_clusterMetrics():
    """
    A cluster manager's scrape: peers connected and each peer's link,
    updates replicated both ways, stale and duplicate ones ignored,
    resyncs, and the adoption of a dead peer's subscriptions.
    """
    from tests.test_cluster import Cluster, update, watch

    cluster = Cluster(("a", "b", "c"))
    try:
        cluster.linkAll()
        a, b, c = cluster["a"], cluster["b"], cluster["c"]
        root = _tree(cluster={"group": a.group})
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_cluster_peers_connected") == 2
        assert value(samples, "presence_cluster_peer_up", peer="b") == 1
        assert value(samples, "presence_cluster_resyncs_total") == 2
        assert value(samples, "presence_cluster_updates_sent_total") == 0
        assert not [key for key in samples if key[0].startswith(("presence_dispatcher", "presence_sip"))]

        watch(b, uri="sip:carol@example.test")
        a.harness.published()
        cluster.flush()
        now = a.clock.seconds()
        late = update(etag="late", expiresAt=now + 600, modifiedAt=now, origin="c")
        a.group.receive([late], "c")
        a.group.receive([late], "c")  # a duplicate
        a.group.receive([update(etag="old", expiresAt=now - 1, modifiedAt=now - 100, origin="c")], "c")
        b.crash()
        cluster.cut("a", "b")
        cluster.cut("b", "c")
        cluster.advance(11)

        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_cluster_peers_connected") == 1
        assert value(samples, "presence_cluster_peer_up", peer="b") == 0
        assert value(samples, "presence_cluster_peer_up", peer="c") == 1
        assert value(samples, "presence_cluster_updates_sent_total") == 2  # one publication, two peers
        assert value(samples, "presence_cluster_updates_received_total") == 3
        assert value(samples, "presence_cluster_updates_applied_total") == 1
        assert value(samples, "presence_cluster_updates_ignored_total") == 2
        assert value(samples, "presence_cluster_updates_refused_total") == 0
        assert value(samples, "presence_cluster_resync_pages_total") == 2
        assert value(samples, "presence_cluster_adoptions_total") == 1
        adopted = value(samples, "presence_cluster_subscriptions_adopted_total")
        assert adopted + c.group.counters["adopted"] == 1
        assert value(samples, "presence_cluster_tombstones") == 0
        samples = parseExposition(collect(LiveObjects(_tree(manager={"manager": a.manager}))))
        assert value(samples, "presence_notify_paced_waiting") == 0
        assert value(samples, "presence_notify_paced_total") == adopted
    finally:
        cluster.stop()


def test_adoptNotifyPacingMetrics():
    """
    While the NOTIFYs of an adoption are paced, the scrape shows how many
    adopted watchers still wait for theirs.
    """
    from tests.test_cluster import adoptionCluster, drive

    cluster = adoptionCluster(30, 10, presentities=1)
    try:
        a = cluster["a"]
        a.clock.advance(10)
        root = _tree(manager={"manager": a.manager})
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_notify_paced_waiting") == 29
        assert value(samples, "presence_notify_paced_total") == 1
        drive(a, a.clock.seconds() + 5)
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_notify_paced_waiting") == 0
        assert value(samples, "presence_notify_paced_total") == 30
    finally:
        cluster.stop()


@pytest_twisted.inlineCallbacks
def test_clusterLeaseMetrics():
    """
    A cluster manager's lease in the scrape: safe while renewals commit,
    fenced (and the failed writes counted) when they cannot, safe again
    once they do.
    """
    from twisted.internet.task import Clock

    from presence.store import MemoryStore
    from tests.test_cluster_lease import LeaseCluster

    db = Clock()
    db.advance(1_000_000)
    cluster = LeaseCluster(MemoryStore(clock=db), db)
    try:
        yield cluster.settle()
        cluster.linkAll()
        yield cluster.advance(2.0)
        b = cluster["b"]
        root = _tree(cluster={"group": b.group})
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_cluster_lease_safe") == 1
        assert value(samples, "presence_cluster_lease_registrations_total") == 1
        assert value(samples, "presence_cluster_lease_renewals_total") >= 2
        assert value(samples, "presence_cluster_fenced_total") == 0
        cluster.faults["b"].failing = True
        yield cluster.advance(4.0)
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_cluster_lease_safe") == 0
        assert value(samples, "presence_cluster_lease_failures_total") >= 1
        assert value(samples, "presence_cluster_fenced_total") == 1
        cluster.faults["b"].failing = False
        yield cluster.advance(1.0)
        samples = parseExposition(collect(LiveObjects(root)))
        assert value(samples, "presence_cluster_lease_safe") == 1
    finally:
        cluster.stop()
        yield cluster.settle()
