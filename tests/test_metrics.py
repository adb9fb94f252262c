"""
The Prometheus metrics endpoint: the exposition format, what it reports
after real SIP traffic to C{twistd -n presence}, and its service.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import platform
import re
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Dict, FrozenSet, List, Optional, Tuple

import pytest
import pytest_twisted
import twisted
from twisted.application import service
from twisted.internet.task import Clock
from twisted.internet import defer, protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parseOpenMetrics
from prometheus_client.parser import text_string_to_metric_families as parseText

from presence.admin.collectors import PresenceCollector
from presence.admin.console import LiveObjects
from presence.admin.metrics import MetricsService
from presence.admin.readiness import Readiness
from presence.config import Config
from presence.latency import LatencyHistogram
from presence.sip.transaction import TransactionLayer
from presence.version import version
from tests.serverprocess import ServerProcess
from tests.sipclient import UDPClient, answer, newRequest

Key = Tuple[str, FrozenSet[Tuple[str, str]]]

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def parseExposition(text: str, openMetrics: bool = False) -> Dict[Key, float]:
    """
    Parse a scrape with prometheus_client's parser (the strict OpenMetrics
    one, or the text format's), checking that no family is declared
    twice and no sample repeats.
    """
    samples: Dict[Key, float] = {}
    families: List[str] = []
    for family in (parseOpenMetrics if openMetrics else parseText)(text):
        assert family.name not in families, "family %s declared twice" % (family.name,)
        families.append(family.name)
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, "duplicate sample %r" % (key,)
            samples[key] = sample.value
    return samples


def value(samples: Dict[Key, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(root: service.MultiService) -> Dict[Key, float]:
    """
    Our families for the service tree C{root}, rendered by prometheus_client
    in both formats and parsed back: the same samples in each (so every
    test of a family also checks it is valid OpenMetrics).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PresenceCollector(LiveObjects(root)))
    text = parseExposition(generate_latest(registry).decode("utf-8"))
    strict = parseExposition(openmetrics.exposition.generate_latest(registry).decode("utf-8"), True)
    assert strict == text
    return text


def histogram(samples: Dict[Key, float], name: str, **labels: str) -> Tuple[float, float, Dict[str, float]]:
    """
    C{(count, sum, buckets)} of one histogram, after checking that its
    buckets are cumulative and end with +Inf at the count.
    """
    buckets = {
        dict(key[1])["le"]: v for key, v in samples.items()
        if key[0] == name + "_bucket" and set(labels.items()) <= key[1]
    }
    count = value(samples, name + "_count", **labels)
    ordered = [buckets[le] for le in sorted(buckets, key=float)]
    assert ordered == sorted(ordered) and buckets["+Inf"] == count
    return count, value(samples, name + "_sum", **labels), buckets


def _tree(**services: object) -> service.MultiService:
    root = service.MultiService()
    for name, attributes in services.items():
        child = service.Service()
        child.__dict__.update(attributes)  # type: ignore[arg-type]
        child.setName(name)
        child.setServiceParent(root)
    return root


def test_latencyHistogram():
    """
    A bound is inclusive (Prometheus's le), values above every bound count
    in +Inf, a negative duration counts as 0, and the buckets come out
    cumulative.
    """
    h = LatencyHistogram((0.01, 0.1))
    for seconds in (0.01, 0.05, 0.5, -1.0):
        h.observe(seconds)
    assert h.counts == [2, 1, 1]
    assert h.count == 4 and h.sum == pytest.approx(0.56)
    assert h.cumulative() == [(0.01, 2), (0.1, 3), (float("inf"), 4)]
    with pytest.raises(ValueError):
        LatencyHistogram((0.1, 0.01))


def test_collectWhatIsRunning():
    """
    Only running parts are reported; a manager still loading shows as
    presence_manager_ready 0 with no manager metrics; the build info is
    always there.
    """
    transactions = TransactionLayer(Clock(), lambda message, target: None)
    transactions.answerTimes["SUBSCRIBE"].observe(0.003)
    transactions.answerTimes["SUBSCRIBE"].observe(0.2)
    core = SimpleNamespace(
        requestsByMethod={"SUBSCRIBE": 3, "other": 1},
        responsesSent={("SUBSCRIBE", 2): 2, ("SUBSCRIBE", 4): 1, ("other", 5): 1},
        responsesReceived={2: 5, 4: 1},
        counters={"requests": 4, "responses": 6, "retransmissions": 2, "malformed": 7, "sendErrors": 0},
        transactions=transactions,
        flows=[],
        intake=SimpleNamespace(counters={"accepted": 10, "refused": 3, "dropped": 2, "episodes": 1}),
    )
    commits = LatencyHistogram()
    commits.observe(0.0125)
    store = SimpleNamespace(
        batchCount=4, commitCount=4, replayCount=0, writeCount=9, lastBatchSize=3,
        lastCommitLatency=0.0125, commitLatency=commits,
    )
    root = _tree(sip={"core": core}, manager={"manager": None}, store={"store": store})
    samples = scrape(root)
    assert value(samples, "presence_sip_requests_received_total", method="SUBSCRIBE") == 3
    assert value(samples, "presence_sip_requests_received_total", method="other") == 1
    assert value(samples, "presence_sip_responses_sent_total", method="SUBSCRIBE", **{"class": "4xx"}) == 1
    assert value(samples, "presence_sip_responses_sent_total", method="other", **{"class": "5xx"}) == 1
    assert value(samples, "presence_sip_responses_received_total", **{"class": "2xx"}) == 5
    assert value(samples, "presence_sip_malformed_total") == 7
    assert value(samples, "presence_sip_retransmissions_total") == 2
    assert value(samples, "presence_sip_intake_total", outcome="served") == 10
    assert value(samples, "presence_sip_intake_total", outcome="dropped") == 2
    assert value(samples, "presence_sip_intake_episodes_total") == 1
    assert value(samples, "presence_sip_transactions") == 0
    count, total, buckets = histogram(samples, "presence_sip_request_duration_seconds", method="SUBSCRIBE")
    assert (count, buckets["0.005"], buckets["0.25"]) == (2, 1, 2) and total == pytest.approx(0.203)
    assert histogram(samples, "presence_sip_request_duration_seconds", method="PUBLISH")[0] == 0
    assert histogram(samples, "presence_store_commit_duration_seconds")[:2] == (1, 0.0125)
    assert value(samples, "presence_sip_flows") == 0
    assert value(samples, "presence_manager_ready") == 0
    assert value(samples, "presence_store_last_commit_latency_seconds") == 0.0125
    assert value(samples, "presence_store_writes_total") == 9
    assert not [key for key in samples if key[0] in ("presence_subscriptions", "presence_notify_sent_total")]
    info = {
        "version": version,
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "twisted_version": twisted.__version__,
    }
    assert scrape(_tree()) == {("presence_build_info", frozenset(info.items())): 1.0}


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

    def get(self, path: bytes, accept: Optional[bytes] = None) -> defer.Deferred:
        self.waiting = defer.Deferred()
        extra = b"Accept: %s\r\n" % (accept,) if accept else b""
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (path, extra))
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


@defer.inlineCallbacks
def _listen(root: service.MultiService):
    """
    Start C{root} with a metrics listener on a free loopback port; return
    a L{RawHTTP} client connected to it.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    metrics = MetricsService(Config(metricsEnabled=True, metricsListen="tcp:0:interface=127.0.0.1"))
    metrics.setServiceParent(root)
    root.startService()
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", metrics.address.port)
        client = yield connectProtocol(endpoint, RawHTTP())
    except BaseException:
        yield root.stopService()
        raise
    return client


@defer.inlineCallbacks
def _stop(root: service.MultiService, client: RawHTTP):
    """
    Stop C{root}: its listener closes the client's connection at once.
    """
    from twisted.internet import reactor

    yield root.stopService()
    yield client.lost.addTimeout(5, reactor)


@pytest_twisted.inlineCallbacks
def test_serviceServesAndClosesKeptAliveConnections():
    """
    The listener answers /metrics in the format the Accept header asks
    for (the text format by default, OpenMetrics when asked), with the
    process's own metrics; /health and /ready; 404 elsewhere; all on one
    connection kept alive, which stopping the service closes at once.
    """
    store = SimpleNamespace(batchCount=3, commitCount=3, replayCount=0, writeCount=5,
                            lastBatchSize=2, lastCommitLatency=0.5)
    root = _tree(store={"store": store})
    client = yield _listen(root)
    try:
        code, headers, body = yield client.get(b"/metrics")
        assert code == 200
        assert headers[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
        samples = parseExposition(body.decode("utf-8"))
        assert value(samples, "presence_store_batches_total") == 3
        assert value(samples, "presence_store_last_batch_size") == 2
        assert value(samples, "presence_store_last_commit_latency_seconds") == 0.5
        assert value(samples, "python_info", implementation=platform.python_implementation(),
                     major=str(sys.version_info[0]), minor=str(sys.version_info[1]),
                     patchlevel=str(sys.version_info[2]), version=platform.python_version()) == 1
        if sys.platform.startswith("linux"):
            assert value(samples, "process_resident_memory_bytes") > 0
            assert value(samples, "process_open_fds") > 0

        # What Prometheus sends by default.
        accept = (b"application/openmetrics-text;version=1.0.0;q=0.5,"
                  b"application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1")
        code, headers, body = yield client.get(b"/metrics", accept)
        assert code == 200
        assert headers[b"content-type"].startswith(b"application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert body.endswith(b"# EOF\n")
        openSamples = parseExposition(body.decode("utf-8"), openMetrics=True)
        assert value(openSamples, "presence_store_batches_total") == 3
        assert ("presence_build_info", frozenset([("version", version)])) not in openSamples
        assert [key for key in openSamples if key[0] == "presence_build_info" and ("version", version) in key[1]]

        code, headers, body = yield client.get(b"/health")
        assert (code, body) == (200, b"live\n")
        code, headers, body = yield client.get(b"/ready")
        assert (code, body) == (200, b"ready\n")  # a store without a database to ask
        code, _, body = yield client.get(b"/")
        assert code == 404 and b"/metrics, /health and /ready" in body
        code, _, _ = yield client.get(b"/metrics/more")
        assert code == 200  # a leaf: Prometheus never asks, nothing is exposed twice
        assert not client.lost.called
    finally:
        yield _stop(root, client)


# Readiness.


class FailingStore:
    """
    A store whose database cannot be reached: reads fail as SQLStore's do.
    """

    def runRead(self, fn):
        return defer.fail(ConnectionRefusedError("connection refused"))


class SilentStore:
    """
    A store whose database never answers.
    """

    def __init__(self):
        self.reads = []

    def runRead(self, fn):
        self.reads.append(defer.Deferred())
        return self.reads[-1]


def _manager(draining: bool = False) -> SimpleNamespace:
    """
    What the collectors read of a subscription manager (its
    L{presence.interfaces.ISubscriptionManager}).
    """
    sizes = {"subscriptions": 0, "dialogs": 0, "publications": 0, "presentities": 0, "pacedWaiting": 0}
    return SimpleNamespace(sizes=lambda: sizes, counters={}, notifyCounters={},
                           publishToNotify=LatencyHistogram(), overload=None, gate=None,
                           authorizer=None, draining=draining)


def _ready(root, clock=None):
    results = []
    Readiness(LiveObjects(root), clock or Clock()).check().addCallback(results.append)
    return results


@pytest_twisted.inlineCallbacks
def test_notReadyOverHTTP():
    """
    /ready answers 503 with one line per reason while a part cannot serve;
    /health still answers 200.
    """
    root = _tree(manager={"manager": None}, store={"store": FailingStore()})
    client = yield _listen(root)
    try:
        code, headers, body = yield client.get(b"/ready")
        assert code == 503 and headers[b"content-type"] == b"text/plain; charset=utf-8"
        assert body == (b"not ready: the subscription manager is loading\n"
                        b"not ready: the database cannot be reached: connection refused\n")
        code, _, body = yield client.get(b"/health")
        assert (code, body) == (200, b"live\n")
    finally:
        yield _stop(root, client)


def test_drainingManager():
    """
    A draining manager shows in its families, and a dispatcher's view of
    each manager says whether it drains.
    """
    assert value(scrape(_tree(manager={"manager": _manager(draining=True)})), "presence_manager_draining") == 1
    assert value(scrape(_tree(manager={"manager": _manager()})), "presence_manager_draining") == 0
    managers = [SimpleNamespace(name="m1", up=True, draining=True, inFlight=0, pings=3, answers=3)]
    dispatcher = SimpleNamespace(requestsRelayed={}, responsesRelayed={}, counters={}, managers=managers)
    samples = scrape(_tree(dispatcher={"dispatcher": dispatcher}))
    assert value(samples, "presence_dispatcher_manager_draining", manager="m1") == 1
    assert value(samples, "presence_dispatcher_manager_up", manager="m1") == 1


def test_readyWhenEveryPartServes():
    lease = SimpleNamespace(holding=True)
    dispatcher = SimpleNamespace(managers=[SimpleNamespace(up=False, draining=False),
                                           SimpleNamespace(up=True, draining=False)])
    root = _tree(manager={"manager": _manager()}, cluster={"group": SimpleNamespace(lease=lease)},
                 dispatcher={"dispatcher": dispatcher}, store={"store": SimpleNamespace()})
    assert _ready(root) == [[]]
    # A cluster without a lease configured has none to hold.
    assert _ready(_tree(cluster={"group": SimpleNamespace(lease=None)})) == [[]]


@pytest.mark.parametrize(
    "services, reason",
    [
        ({"manager": {"manager": None}}, "the subscription manager is loading"),
        ({"store": {"store": None}}, "the store has not started"),
        ({"store": {"store": FailingStore()}}, "the database cannot be reached: connection refused"),
        ({"cluster": {"group": None}}, "the cluster has not started"),
        ({"cluster": {"group": SimpleNamespace(lease=SimpleNamespace(holding=False))}},
         "this manager's lease is not held (fenced: NOTIFYs are held back)"),
        ({"dispatcher": {"dispatcher": SimpleNamespace(managers=[SimpleNamespace(up=False, draining=False),
                                                                  SimpleNamespace(up=True, draining=True)])}},
         "no subscription manager is in rotation (all down or draining)"),
        ({"manager": {"manager": _manager(draining=True)}},
         "the subscription manager is draining (presence-admin live resume)"),
        ({"billing": {"authorizer": SimpleNamespace(loaded=False)}}, "the accounts are not loaded yet"),
    ],
    ids=["loading", "store", "database", "cluster", "fenced", "dispatcher", "draining", "accounts"],
)
def test_notReady(services, reason):
    assert _ready(_tree(**services)) == [[reason]]


def test_readyProbeTimesOutAndIsShared():
    """
    Checks made while the database is silent share one query, and each
    gives up after the probe's timeout; the next check asks again once the
    query has come back.
    """
    clock = Clock()
    store = SilentStore()
    readiness = Readiness(LiveObjects(_tree(store={"store": store})), clock)
    results = []
    readiness.check().addCallback(results.append)
    clock.advance(1)
    readiness.check().addCallback(results.append)
    assert len(store.reads) == 1 and results == []
    clock.advance(1)
    assert results == [["the database did not answer within 2 s"]]
    store.reads[0].callback(1)
    assert results[1:] == [[]] and not clock.getDelayedCalls()
    readiness.check().addCallback(results.append)
    assert len(store.reads) == 2


class Relay:
    """
    A loopback TCP relay to C{host:port} that a test can cut: it stops
    listening and closes both sides of every relayed connection.
    """

    def __init__(self, reactor, host: str, port: int) -> None:
        from twisted.protocols import portforward

        from presence.admin.listening import Listener

        relay = self
        self.reactor = reactor
        self.open: set = set()
        self._idle: List[defer.Deferred] = []
        self._listener: Optional[Listener] = None
        self.port = 0

        class Client(portforward.ProxyClient):
            def connectionMade(self):
                relay.open.add(self)
                portforward.ProxyClient.connectionMade(self)

            def connectionLost(self, reason):
                portforward.ProxyClient.connectionLost(self, reason)
                relay.open.discard(self)
                if not relay.open:
                    waiters, relay._idle = relay._idle, []
                    for waiter in waiters:
                        waiter.callback(None)

        class ClientFactory(portforward.ProxyClientFactory):
            protocol = Client

        class Server(portforward.ProxyServer):
            clientProtocolFactory = ClientFactory

        self.factory = portforward.ProxyFactory(host, port)
        self.factory.protocol = Server

    def listen(self) -> int:
        from presence.admin.listening import Listener

        self._listener = Listener(self.reactor, "tcp:%d:interface=127.0.0.1" % (self.port,), self.factory)
        self.port = self._listener.listen().port
        return self.port

    @defer.inlineCallbacks
    def cut(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            yield listener.stop()
        if self.open:
            waiter = defer.Deferred()
            self._idle.append(waiter)
            yield waiter


@pytest_twisted.inlineCallbacks
def test_readyFollowsTheRealDatabase():
    """
    A real store on PostgreSQL, reached through a loopback TCP relay that
    the test cuts: /ready's check is ready, then not while the database
    cannot be reached, then ready again once it can.
    """
    import sqlalchemy
    from twisted.internet import reactor

    from presence.store import SQLStore
    from tests.conftest import POSTGRES_URL, postgresSchema

    with postgresSchema("ready") as url:
        target = sqlalchemy.engine.make_url(POSTGRES_URL)
        relay = Relay(reactor, target.host, target.port or 5432)
        port = relay.listen()
        hostPort = "%s:%d" % (target.host, target.port or 5432)
        assert hostPort in url
        store = SQLStore(url.replace(hostPort, "127.0.0.1:%d" % (port,), 1), reactor=reactor)
        yield store.start()
        try:
            readiness = Readiness(LiveObjects(_tree(store={"store": store})), reactor)
            assert (yield readiness.check()) == []
            yield relay.cut()
            reasons = yield readiness.check()
            assert len(reasons) == 1 and reasons[0].startswith("the database cannot be reached: "), reasons
            relay.listen()
            assert (yield readiness.check()) == []
        finally:
            yield store.stop()
            yield relay.cut()


# twistd with real SIP traffic.

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
    '<tuple id="t1"><status><basic>open</basic></status></tuple></presence>\n'
)


def _scrape(port: int, path: str = "/metrics", **headers: str):
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), headers=headers)
    return urllib.request.urlopen(request, timeout=10)


def test_scrapeAfterTraffic(tmp_path):
    """
    After SUBSCRIBE, PUBLISH, the NOTIFYs they cause, an OPTIONS, a refused
    SUBSCRIBE and an unknown method, a scrape of twistd's endpoint reports
    each by method and class, the live state and the store's work; the
    latency histograms of answers, commits and PUBLISH-to-NOTIFY have moved;
    the OpenMetrics rendering (gzipped, as asked) says the same; the
    process is live and ready.
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
        assert _scrape(port, "/health").read() == b"live\n"
        assert _scrape(port, "/ready").read() == b"ready\n"
        before = parseExposition(_scrape(port).read().decode("utf-8"))
        answers = "presence_sip_request_duration_seconds"
        assert histogram(before, answers, method="SUBSCRIBE")[0] == 0
        assert histogram(before, "presence_publish_to_notify_seconds")[0] == 0
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
        # The manager service's registrar reports too (nothing registered).
        assert value(samples, "presence_registrar_bindings") == 0
        assert value(samples, "presence_registrar_registers_total") == 0
        assert value(samples, "presence_store_pending_writes") == 0
        assert 0 <= value(samples, "presence_reactor_lag_seconds") < 1
        assert value(samples, "presence_store_commits_total") >= 2
        assert value(samples, "presence_store_writes_total") >= 2
        assert value(samples, "presence_store_batches_total") >= 2
        assert value(samples, "presence_store_last_batch_size") >= 1
        latency = value(samples, "presence_store_last_commit_latency_seconds")
        assert 0 < latency < 10 and not math.isnan(latency)
        count, total, _ = histogram(samples, answers, method="SUBSCRIBE")
        assert count == 2 and 0 < total < 20  # the 200 and the 489
        count, total, _ = histogram(samples, answers, method="PUBLISH")
        assert count == 1 and 0 < total < 10
        count, total, _ = histogram(samples, "presence_publish_to_notify_seconds")
        assert count == 1 and 0 < total < 10  # one NOTIFY carried the PUBLISH
        count, total, _ = histogram(samples, "presence_store_commit_duration_seconds")
        assert count == value(samples, "presence_store_commits_total") and 0 < total < 20
        info = [dict(key[1]) for key in samples if key[0] == "presence_build_info"]
        assert [labels["version"] for labels in info] == [version]
        assert value(samples, "process_cpu_seconds_total") > 0

        response = _scrape(port, Accept="application/openmetrics-text; version=1.0.0", **{"Accept-Encoding": "gzip"})
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert response.headers["Content-Encoding"] == "gzip"
        openSamples = parseExposition(gzip.decompress(response.read()).decode("utf-8"), openMetrics=True)
        assert histogram(openSamples, answers, method="PUBLISH")[0] == 1
        assert value(openSamples, "presence_sip_requests_received_total", method="PUBLISH") == 1

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
    samples = scrape(root)
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

    samples = scrape(root)
    relayedTotal = "presence_dispatcher_requests_relayed_total"
    assert value(samples, relayedTotal, direction="manager", method="SUBSCRIBE") == 2
    assert value(samples, relayedTotal, direction="manager", method="PUBLISH") == 2
    assert value(samples, relayedTotal, direction="user_agent", method="NOTIFY") == 1
    assert value(samples, "presence_dispatcher_responses_relayed_total", **{"class": "2xx"}) == 3
    assert value(samples, "presence_dispatcher_failovers_total") == 1
    # The PUBLISH's relayed 200 is its one final answer, after the failover.
    assert histogram(samples, "presence_sip_request_duration_seconds", method="PUBLISH")[0] == 1
    assert value(samples, "presence_dispatcher_flow_failed_total") == 1
    assert value(samples, "presence_dispatcher_forged_routes_total") == 1
    inFlight = "presence_dispatcher_manager_in_flight"
    assert sum(value(samples, inFlight, manager=n) for n in ("m1", "m2", "m3")) == 1
    others = ("presence_manager", "presence_subscriptions", "presence_cluster", "presence_store")
    assert not [key for key in samples if key[0].startswith(others)]

    # One manager stops answering: out of rotation; then all of them: 503.
    node.advance(1.6, answering=["m1", "m2"])
    samples = scrape(root)
    assert value(samples, "presence_dispatcher_managers_up") == 2
    assert value(samples, "presence_dispatcher_manager_up", manager="m3") == 0
    assert value(samples, "presence_dispatcher_manager_up", manager="m1") == 1
    node.advance(1.6)
    node.take()
    node.receive(subscribe(callId="late"), UA)
    [(response, _, _)] = node.takeNonPing()
    assert response.code == 503
    samples = scrape(root)
    assert value(samples, "presence_dispatcher_managers_up") == 0
    # The waiting SUBSCRIBE failed over as its managers died, then found
    # none left, like the late one.
    assert value(samples, "presence_dispatcher_no_manager_total") == 2
    assert value(samples, "presence_dispatcher_responses_relayed_total", **{"class": "2xx"}) == 3
    node.dispatcher.stop()


def test_dispatcherFlowCloseMetrics():
    """
    A dispatcher's notices of closed connections: one sent when a
    connection that carried a REGISTER closes, and its flow counted lost
    when the manager refuses it.
    """
    from tests.test_dispatcher import Node, StreamPeer, answerFrom
    from tests.test_flowclose import notices, registerOver

    node = Node(managers="m1=udp:10.0.0.1:5060")
    root = _tree(sip={"core": node.core}, dispatcher={"dispatcher": node.dispatcher})
    names = ("notices_sent", "flows_notified", "flows_lost")

    def closing() -> List[float]:
        samples = scrape(root)
        return [value(samples, "presence_dispatcher_flow_close_%s_total" % (name,)) for name in names]

    assert closing() == [0, 0, 0]
    peer = StreamPeer(node.core)
    registerOver(node, peer)
    peer.close()
    node.clock.advance(0)
    [(request, name)] = notices(node)
    assert closing() == [1, 1, 0]
    answerFrom(node, name, request, 403)
    assert closing() == [1, 1, 1]
    node.dispatcher.stop()


def test_registrarMetrics():
    """
    A registrar's scrape: live bindings and AORs, and its counters moving
    with REGISTERs, a dispatcher's notice of a closed connection (a good
    one and a forged one), an un-REGISTER and expiry.
    """
    from tests.registrarharness import RegistrarHarness, register
    from tests.test_dispatcher import BOOT, SECRET
    from tests.test_flowclose import notice, relayed, sendNotice

    h = RegistrarHarness(noticeSecret=SECRET)
    root = _tree(sip={"core": h.core}, manager={"manager": h.manager, "registrar": h.registrar})

    def registrar() -> Dict[str, float]:
        return {
            key[0][len("presence_registrar_"):]: v for key, v in scrape(root).items()
            if key[0].startswith("presence_registrar_")
        }

    zero = dict.fromkeys(
        ["registers_total", "bindings_added_total", "bindings_refreshed_total", "bindings_removed_total",
         "bindings_expired_total", "bindings_flow_closed_total", "flow_notices_accepted_total",
         "flow_notices_refused_total", "store_errors_total", "billing_errors_total"],
        0.0,
    )
    assert registrar() == dict(zero, bindings=0, aors=0)
    h.registered(relayed(token="f1a"))
    carol = "sip:carol@example.test"
    h.registered(register(carol, contacts=["<sip:carol@192.0.2.20>"], Expires="60"))
    h.registered(register(carol, contacts=["<sip:carol@192.0.2.20>"], cseq=2, Expires="60"))
    h.registered(register(carol, contacts=["<sip:carol@192.0.2.21>"], cseq=3, callId="carol-2"))
    assert registrar() == dict(
        zero, bindings=3, aors=2, registers_total=4, bindings_added_total=3, bindings_refreshed_total=1
    )
    assert sendNotice(h, notice([BOOT + ".f1a"])).code == 200
    forged = notice([BOOT + ".f2b"])
    forged.setHeader("Closed-Flow-Auth", "0" * 24)
    assert sendNotice(h, forged).code == 403
    h.registered(register(carol, contacts=["<sip:carol@192.0.2.21>"], cseq=4, callId="carol-2", Expires="0"))
    h.clock.advance(61)
    assert registrar() == dict(
        zero, bindings=0, aors=0, registers_total=5, bindings_added_total=3, bindings_refreshed_total=1,
        bindings_removed_total=1, bindings_expired_total=1, bindings_flow_closed_total=1,
        flow_notices_accepted_total=1, flow_notices_refused_total=1,
    )
    h.stop()


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
        samples = scrape(root)
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

        samples = scrape(root)
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
        samples = scrape(_tree(manager={"manager": a.manager}))
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
        samples = scrape(root)
        assert value(samples, "presence_notify_paced_waiting") == 29
        assert value(samples, "presence_notify_paced_total") == 1
        drive(a, a.clock.seconds() + 5)
        samples = scrape(root)
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
        samples = scrape(root)
        assert value(samples, "presence_cluster_lease_safe") == 1
        assert value(samples, "presence_cluster_lease_registrations_total") == 1
        assert value(samples, "presence_cluster_lease_renewals_total") >= 2
        assert value(samples, "presence_cluster_fenced_total") == 0
        cluster.faults["b"].failing = True
        yield cluster.advance(4.0)
        samples = scrape(root)
        assert value(samples, "presence_cluster_lease_safe") == 0
        assert value(samples, "presence_cluster_lease_failures_total") >= 1
        assert value(samples, "presence_cluster_fenced_total") == 1
        cluster.faults["b"].failing = False
        yield cluster.advance(1.0)
        samples = scrape(root)
        assert value(samples, "presence_cluster_lease_safe") == 1
    finally:
        cluster.stop()
        yield cluster.settle()
