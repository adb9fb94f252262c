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
