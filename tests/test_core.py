"""
Unit tests of the SIP core: what it answers itself, how it stamps and
routes, and that nothing a peer sends escapes it.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from presence.sip.core import SIPCore
from presence.sip.message import Request
from presence.sip.parser import parseMessage
from presence.sip.target import Target
from tests.harness import FakeNetwork

SOURCE = Target("UDP", "198.51.100.7", 40000)


def makeCore():
    clock = Clock()
    core = SIPCore(clock, advertisedHost="192.0.2.1")
    network = FakeNetwork()
    core.udp = network  # type: ignore[assignment]
    core.ports = {"UDP": 5060}
    return core, network


def send(core, text: str, source: Target = SOURCE) -> None:
    core.messageReceived(parseMessage(text.replace("\n", "\r\n").encode()), source)


def options(method: str = "OPTIONS", uri: str = "sip:192.0.2.1", via: str = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport", extra: str = "") -> str:
    return (
        "%s %s SIP/2.0\nVia: %s\nMax-Forwards: 70\nFrom: <sip:a@example.test>;tag=1\n"
        "To: <sip:b@example.test>\nCall-ID: c1\nCSeq: 1 %s\n%sContent-Length: 0\n\n"
        % (method, uri, via, method, extra)
    )


def test_optionsAnswered():
    core, network = makeCore()
    core.allowEvents = ["presence"]
    send(core, options())
    [(response, host, port)] = network.sent
    assert response.code == 200
    assert response.header("allow-events") == "presence"
    assert "OPTIONS" in response.headerValues("allow")
    assert response.toAddr().tag
    assert (host, port) == ("198.51.100.7", 40000)
    via = response.topVia()
    assert via.params["received"] == "198.51.100.7" and via.params["rport"] == "40000"


def test_withoutRportToViaPort():
    core, network = makeCore()
    send(core, options(via="SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKabc"))
    [(_, host, port)] = network.sent
    assert (host, port) == ("198.51.100.7", 5070)


def test_spoofedReceivedIgnored():
    """
    A client's own received= cannot aim our response at a third party.
    """
    core, network = makeCore()
    send(core, options(via="SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bKabc;received=203.0.113.9"))
    [(_, host, _)] = network.sent
    assert host == "198.51.100.7"


def test_refusals():
    core, network = makeCore()
    cases = [
        (options("INVITE"), 405),
        (options("FROB"), 501),
        (options("CANCEL"), 481),
        (options("MESSAGE", extra="Max-Forwards: 0\n").replace("Max-Forwards: 70\n", ""), 483),
        (options(uri="tel:+1555"), 416),
        (options(uri="sip:@@"), 400),
        (options(extra="Require: 100rel\n"), 420),
    ]
    for i, (text, code) in enumerate(cases):
        send(core, text.replace("branch=z9hG4bKabc", "branch=z9hG4bK%d" % i))
    assert [m.code for m, _, _ in network.sent] == [code for _, code in cases]
    assert network.sent[-1][0].header("unsupported") == "100rel"
    assert "OPTIONS" in network.sent[0][0].headerValues("allow")


def test_ackAbsorbed():
    core, network = makeCore()
    send(core, options("ACK"))
    assert network.sent == []


def test_handlerSeesRequestOnce():
    core, network = makeCore()
    seen = []

    def handler(request, tx):
        seen.append(request)
        core.respond(tx, 200)

    core.addHandler("PUBLISH", handler)
    text = options("PUBLISH")
    send(core, text)
    send(core, text)
    assert len(seen) == 1
    assert [m.code for m, _, _ in network.sent] == [200, 200]
    assert "PUBLISH" in core.allowed()


def test_handlerErrorNeverEscapes():
    core, network = makeCore()

    def handler(request, tx):
        raise RuntimeError("boom")

    core.addHandler("PUBLISH", handler)
    send(core, options("PUBLISH"))
    send(core, options())
    assert [m.code for m, _, _ in network.sent][-1] == 200


def test_badViaAnswered400():
    core, network = makeCore()
    send(core, options(via="SIP/2.0/UDP"))
    [(response, host, _)] = network.sent
    assert response.code == 400 and host == "198.51.100.7"


def test_malformedAnsweredOrDropped():
    core, network = makeCore()
    from presence.sip.parser import ParseError

    try:
        parseMessage(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: abc\r\n\r\n")
    except ParseError as e:
        core.badMessage(e, SOURCE)
    [(response, host, port)] = network.sent
    assert response.code == 400 and response.reason == "Bad Content-Length"
    assert (host, port) == ("198.51.100.7", 5060)
    core.badMessage(ParseError(None, "Empty message"), SOURCE)
    assert len(network.sent) == 1
    assert core.counters["malformed"] == 2


def test_sendRequestAddsVia():
    core, network = makeCore()
    request = Request("NOTIFY", "sip:w@198.51.100.7:40000")
    for name, value in [("From", "<sip:b@example.test>;tag=x"), ("To", "<sip:w@example.test>;tag=y"),
                        ("Call-ID", "n1"), ("CSeq", "1 NOTIFY"), ("Max-Forwards", "70")]:
        request.addHeader(name, value)
    tx = core.sendRequest(request, SOURCE)
    [(sent, host, port)] = network.sent
    via = sent.topVia()
    assert via.host == "192.0.2.1" and via.port == 5060 and via.branch.startswith("z9hG4bK")
    assert (host, port) == ("198.51.100.7", 40000)
    results = []
    tx.deferred.addCallback(results.append)
    response = "SIP/2.0 200 OK\nVia: %s\nFrom: <sip:b@example.test>;tag=x\nTo: <sip:w@example.test>;tag=y\nCall-ID: n1\nCSeq: 1 NOTIFY\nContent-Length: 0\n\n" % (sent.header("via"),)
    send(core, response)
    assert [r.code for r in results] == [200]
    core.transactions.stop()


def test_tcpFlowClosedFailsFast():
    core, network = makeCore()
    request = Request("NOTIFY", "sip:w@198.51.100.7")
    for name, value in [("From", "<sip:b@example.test>;tag=x"), ("To", "<sip:w@example.test>;tag=y"),
                        ("Call-ID", "n1"), ("CSeq", "1 NOTIFY"), ("Max-Forwards", "70")]:
        request.addHeader(name, value)
    tx = core.sendRequest(request, Target("TCP", "198.51.100.7", 5060, "f99"))
    results = []
    tx.deferred.addCallback(results.append)
    assert [r.code for r in results] == [503]
    core.transactions.stop()


def test_flowTokensDifferAcrossRuns():
    """
    Each flow table (one per run of the server) numbers its connections
    from its own random start: a token stored by an earlier run, with a
    subscription reloaded from the store, names no connection of this
    run, so a NOTIFY for it fails rather than reaching whoever connected
    first.  The tokens keep the form the dispatcher's routes carry.
    """
    import re

    from presence.sip.transport import FlowTable

    earlier, now = FlowTable(), FlowTable()
    first = earlier.add(object())  # type: ignore[arg-type]
    token = now.add(object())  # type: ignore[arg-type]
    assert now.add(object()) != token  # type: ignore[arg-type]
    assert now.get(first) is None
    for t in (first, token):
        assert re.match(r"f[0-9a-f]{1,16}\Z", t)
