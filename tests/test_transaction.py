"""
Tests for L{presence.sip.transaction}: RFC 3261 §17 non-INVITE client and
server transactions, every timer driven by L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import Logger

from presence.sip.message import Message, Request, Response
from presence.sip.parser import parseMessage
from presence.sip.target import Target, TransportError
from presence.sip.transaction import (
    COMPLETED,
    PROCEEDING,
    TERMINATED,
    TRYING,
    ClientTransaction,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
    newBranch,
)

UDP_PEER = Target("UDP", "192.0.2.10", 5060)
TCP_PEER = Target("TCP", "192.0.2.10", 40000, flow="flow-1")


def makeRequest(
    method: str = "SUBSCRIBE",
    branch: Optional[str] = "z9hG4bK776asdhds",
    transport: str = "UDP",
    sentBy: str = "192.0.2.10:5060",
    uri: str = "sip:bob@example.test",
    fromTag: str = "1928301774",
    toTag: str = "",
    callId: str = "a84b4c76e66710@pc33.example.test",
    cseq: int = 314159,
) -> Request:
    """
    A request parsed from literal bytes, as the transports will give it.
    """
    branchParam = ";branch=" + branch if branch is not None else ""
    toParam = ";tag=" + toTag if toTag else ""
    data = (
        "%(method)s %(uri)s SIP/2.0\r\n"
        "Via: SIP/2.0/%(transport)s %(sentBy)s%(branch)s;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.test>;tag=%(fromTag)s\r\n"
        "To: <sip:bob@example.test>%(toParam)s\r\n"
        "Call-ID: %(callId)s\r\n"
        "CSeq: %(cseq)d %(method)s\r\n"
        "Event: presence\r\n"
        "Expires: 3600\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ) % dict(
        method=method,
        uri=uri,
        transport=transport,
        sentBy=sentBy,
        branch=branchParam,
        fromTag=fromTag,
        toParam=toParam,
        callId=callId,
        cseq=cseq,
    )
    request = parseMessage(data.encode("ascii"))
    assert isinstance(request, Request)
    return request


def makeNotify(branch: Optional[str] = None, transport: str = "UDP") -> Request:
    """
    A NOTIFY this node originates, with a fresh branch.
    """
    return makeRequest(
        "NOTIFY",
        branch=branch or newBranch(),
        transport=transport,
        sentBy="198.51.100.1:5060",
        uri="sip:alice@192.0.2.10:5060",
        cseq=2,
    )


class Recorder:
    """
    The C{send} callable: records C{(time, message, target)}, and raises
    L{TransportError} while C{failing} is set.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: List[Tuple[float, Message, Target]] = []
        self.failing = False

    def __call__(self, message: Message, target: Target) -> None:
        if self.failing:
            raise TransportError("flow closed")
        self.sent.append((self.clock.seconds(), message, target))

    def times(self) -> List[float]:
        return [t for t, _, _ in self.sent]

    def messages(self) -> List[Message]:
        return [m for _, m, _ in self.sent]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def send(clock: Clock) -> Recorder:
    return Recorder(clock)


@pytest.fixture
def layer(clock: Clock, send: Recorder):
    layer = TransactionLayer(clock, send)
    yield layer
    layer.stop()
    assert clock.getDelayedCalls() == []


def advanceTo(clock: Clock, when: float) -> None:
    clock.advance(when - clock.seconds())


def runUntil(clock: Clock, end: float) -> None:
    """
    Advance to C{end}, stopping exactly at each delayed call due on the way,
    so that the times C{Recorder} notes are the scheduled ones (advancing in
    fixed steps would note the end of the step, plus float drift).
    """
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= end]
        if not due:
            break
        clock.rightNow = max(clock.rightNow, min(due))
        clock.advance(0)
    clock.rightNow = max(clock.rightNow, end)
    clock.advance(0)


def result(transaction: ClientTransaction) -> Optional[Response]:
    """
    What the transaction's Deferred fired with so far, or L{None}.
    """
    fired: List[Response] = []
    transaction.deferred.addCallback(lambda r: fired.append(r) or r)
    return fired[0] if fired else None


# TimerSettings and newBranch


def test_timerDefaults() -> None:
    timers = TimerSettings()
    assert (timers.T1, timers.T2, timers.T4) == (0.5, 4.0, 5.0)


def test_timerSettingsRefusesNonsense() -> None:
    with pytest.raises(ValueError):
        TimerSettings(T1=0)
    with pytest.raises(ValueError):
        TimerSettings(T1=2.0, T2=1.0)


def test_newBranchHasCookieAndIsUnique() -> None:
    branches = [newBranch() for _ in range(10000)]
    assert len(set(branches)) == len(branches)
    for branch in branches[:100]:
        assert re.match(r"^z9hG4bK[0-9a-f]{20}$", branch)


# Server transactions


def test_newRequestMakesServerTransaction(layer: TransactionLayer, send: Recorder) -> None:
    request = makeRequest()
    transaction = layer.requestReceived(request, UDP_PEER)
    assert isinstance(transaction, ServerTransaction)
    assert transaction.request is request
    assert transaction.source is UDP_PEER
    assert transaction.state == TRYING
    assert len(layer) == 1
    assert send.sent == []


def test_retransmissionInTryingIsAbsorbed(layer: TransactionLayer, send: Recorder) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert send.sent == []
    assert transaction.state == TRYING
    assert len(layer) == 1


def test_retransmissionInProceedingResendsLastProvisional(
    layer: TransactionLayer, send: Recorder
) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    first = Response.forRequest(transaction.request, 100)
    second = Response.forRequest(transaction.request, 183, toTag="x")
    transaction.respond(first)
    transaction.respond(second)
    assert transaction.state == PROCEEDING
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert send.messages() == [first, second, second]
    assert [target for _, _, target in send.sent] == [UDP_PEER] * 3


def test_retransmissionInCompletedResendsFinal(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    final = Response.forRequest(
        transaction.request, 200, toTag="abc", headers=[("Expires", "3600")]
    )
    transaction.respond(final)
    assert transaction.state == COMPLETED
    clock.advance(10)
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert len(send.sent) == 3
    assert send.sent[0][1] is final
    for _, resent, target in send.sent[1:]:
        assert isinstance(resent, Response)
        assert resent.toBytes() == final.toBytes()
        assert target is UDP_PEER
    assert len(layer) == 1


def test_finalResponseAfterProvisional(layer: TransactionLayer, send: Recorder) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 100))
    transaction.respond(Response.forRequest(transaction.request, 202, toTag="t"))
    assert transaction.state == COMPLETED
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    codes = [m.code for m in send.messages() if isinstance(m, Response)]
    assert codes == [100, 202, 202]


def test_respondAfterFinalIsIgnoredAndLogged(
    layer: TransactionLayer, send: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list = []
    monkeypatch.setattr(ServerTransaction, "log", Logger(observer=events.append))
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    transaction.respond(Response.forRequest(transaction.request, 500))
    transaction.respond(Response.forRequest(transaction.request, 100))
    assert [m.code for m in send.messages() if isinstance(m, Response)] == [200]
    assert [e["code"] for e in events] == [500, 100]
    # The retransmission still gets the first final response.
    layer.requestReceived(makeRequest(), UDP_PEER)
    assert [m.code for m in send.messages() if isinstance(m, Response)] == [200, 200]


def test_timerJOverUDP(layer: TransactionLayer, send: Recorder, clock: Clock) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    clock.advance(1)
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    advanceTo(clock, 1 + 32 - 0.01)
    assert transaction.state == COMPLETED
    assert len(layer) == 1
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert len(send.sent) == 2
    advanceTo(clock, 1 + 32)
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    # Forgotten: the same request is now a new transaction.
    again = layer.requestReceived(makeRequest(), UDP_PEER)
    assert isinstance(again, ServerTransaction) and again is not transaction
    assert len(send.sent) == 2


@pytest.mark.parametrize("source", [TCP_PEER, Target("TLS", "192.0.2.10", 40001, "f2")])
def test_timerJIsZeroOverReliableTransports(
    layer: TransactionLayer, send: Recorder, clock: Clock, source: Target
) -> None:
    request = makeRequest(transport=source.transport)
    transaction = layer.requestReceived(request, source)
    assert transaction is not None
    transaction.respond(Response.forRequest(request, 200, toTag="t"))
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    again = layer.requestReceived(makeRequest(transport=source.transport), source)
    assert isinstance(again, ServerTransaction)
    assert len(send.sent) == 1


def test_timerJExpiriesShareOneDelayedCall(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    """
    Completions close together expire in batches, at most C{resolution}
    late, with one delayed call for all of them.
    """
    first = layer.requestReceived(makeRequest(branch="z9hG4bK1"), UDP_PEER)
    second = layer.requestReceived(makeRequest(branch="z9hG4bK2"), UDP_PEER)
    third = layer.requestReceived(makeRequest(branch="z9hG4bK3"), UDP_PEER)
    assert first is not None and second is not None and third is not None
    first.respond(Response.forRequest(first.request, 200, toTag="t"))
    clock.advance(0.1)
    second.respond(Response.forRequest(second.request, 200, toTag="t"))
    clock.advance(0.9)
    third.respond(Response.forRequest(third.request, 200, toTag="t"))
    assert len(clock.getDelayedCalls()) == 1
    advanceTo(clock, 32.0)
    assert (first.state, second.state, third.state) == (TERMINATED, COMPLETED, COMPLETED)
    advanceTo(clock, 32.49)
    assert second.state == COMPLETED
    advanceTo(clock, 32.5)
    assert (second.state, third.state) == (TERMINATED, COMPLETED)
    assert len(layer) == 1
    advanceTo(clock, 32.99)
    assert third.state == COMPLETED
    advanceTo(clock, 33.0)
    assert third.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_completedServerTransactionLetsTheRequestGo(layer: TransactionLayer) -> None:
    """
    What the layer keeps after the final response holds no reference to
    the request (it is what makes 160,000 completed transactions cheap).
    """
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    (record,) = layer._servers.values()
    assert record is not transaction
    assert not hasattr(record, "__dict__")
    assert all(getattr(record, name) is not transaction.request for name in record.__slots__)


def test_sameBranchOtherMethodIsAnotherTransaction(layer: TransactionLayer) -> None:
    assert layer.requestReceived(makeRequest("SUBSCRIBE"), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest("PUBLISH"), UDP_PEER) is not None
    assert len(layer) == 2


def test_sameBranchOtherSentByIsAnotherTransaction(layer: TransactionLayer) -> None:
    assert layer.requestReceived(makeRequest(sentBy="192.0.2.10:5060"), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest(sentBy="192.0.2.11:5060"), UDP_PEER) is not None
    # sent-by with the default port written out is the same sent-by.
    assert layer.requestReceived(makeRequest(sentBy="192.0.2.11"), UDP_PEER) is None
    assert len(layer) == 2


def test_otherBranchIsAnotherTransaction(layer: TransactionLayer) -> None:
    assert layer.requestReceived(makeRequest(branch="z9hG4bKone"), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest(branch="z9hG4bKtwo"), UDP_PEER) is not None
    assert len(layer) == 2


def test_cookieMatchingIgnoresOtherHeaders(layer: TransactionLayer) -> None:
    """
    With the magic cookie only branch, sent-by and method count: a
    retransmission whose From tag was (oddly) rewritten still matches.
    """
    assert layer.requestReceived(makeRequest(), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest(fromTag="other", cseq=7), UDP_PEER) is None


@pytest.mark.parametrize(
    "change",
    [
        {"uri": "sip:carol@example.test"},
        {"fromTag": "999"},
        {"toTag": "abc"},
        {"callId": "other@pc33.example.test"},
        {"cseq": 314160},
        {"method": "PUBLISH"},
        {"sentBy": "192.0.2.11:5060"},
        {"branch": "oldbranch2"},
        {"transport": "TCP"},
    ],
)
def test_rfc2543Matching(layer: TransactionLayer, send: Recorder, change: dict) -> None:
    """
    Without the magic cookie, Request-URI, To tag, From tag, Call-ID, CSeq
    and the top Via must all be equal (§17.2.3).
    """
    transaction = layer.requestReceived(makeRequest(branch="oldbranch1"), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    assert layer.requestReceived(makeRequest(branch="oldbranch1"), UDP_PEER) is None
    assert len(send.sent) == 2
    fields = {"branch": "oldbranch1"}
    fields.update(change)
    assert layer.requestReceived(makeRequest(**fields), UDP_PEER) is not None
    assert len(send.sent) == 2
    assert len(layer) == 2


def test_rfc2543MatchingWithoutBranch(layer: TransactionLayer) -> None:
    assert layer.requestReceived(makeRequest(branch=None), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest(branch=None), UDP_PEER) is None
    assert layer.requestReceived(makeRequest(branch=None, cseq=1), UDP_PEER) is not None


def test_rfc2543KeyNeverMatchesCookieKey(layer: TransactionLayer) -> None:
    assert layer.requestReceived(makeRequest(branch="z9hG4bKsame"), UDP_PEER) is not None
    assert layer.requestReceived(makeRequest(branch="z9hG4bksame"), UDP_PEER) is not None
    assert len(layer) == 2


def test_ackIsRefused(layer: TransactionLayer) -> None:
    with pytest.raises(ValueError):
        layer.requestReceived(makeRequest("ACK"), UDP_PEER)
    assert len(layer) == 0


def test_cancelIsItsOwnTransaction(layer: TransactionLayer, send: Recorder) -> None:
    """
    A CANCEL shares the branch of the request it cancels but is a separate
    non-INVITE transaction (RFC 3261 §9.2), with its own retransmissions.
    """
    original = layer.requestReceived(makeRequest("SUBSCRIBE"), UDP_PEER)
    cancel = layer.requestReceived(makeRequest("CANCEL"), UDP_PEER)
    assert isinstance(original, ServerTransaction)
    assert isinstance(cancel, ServerTransaction) and cancel is not original
    cancel.respond(Response.forRequest(cancel.request, 481))
    assert layer.requestReceived(makeRequest("CANCEL"), UDP_PEER) is None
    assert [m.code for m in send.messages() if isinstance(m, Response)] == [481, 481]
    assert original.state == TRYING
    assert len(layer) == 2


def test_transportErrorOnResponseTerminates(layer: TransactionLayer, send: Recorder) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    errors: List[TransportError] = []
    transaction.onTransportError = errors.append
    send.failing = True
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    assert transaction.state == TERMINATED
    assert len(errors) == 1 and isinstance(errors[0], TransportError)
    assert len(layer) == 0
    # Terminated: later responses are dropped, not sent.
    send.failing = False
    transaction.respond(Response.forRequest(transaction.request, 500))
    assert send.sent == []


def test_transportErrorResendingProvisionalTerminates(
    layer: TransactionLayer, send: Recorder
) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 100))
    send.failing = True
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert transaction.state == TERMINATED
    assert len(layer) == 0


def test_transportErrorResendingFinalForgetsTransaction(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    transaction = layer.requestReceived(makeRequest(), UDP_PEER)
    assert transaction is not None
    transaction.respond(Response.forRequest(transaction.request, 200, toTag="t"))
    send.failing = True
    assert layer.requestReceived(makeRequest(), UDP_PEER) is None
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    clock.advance(32)
    assert clock.getDelayedCalls() == []


# Client transactions


def test_timerEScheduleOverUDP(layer: TransactionLayer, send: Recorder, clock: Clock) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    assert transaction.state == TRYING
    assert transaction.request is request and transaction.target is UDP_PEER
    runUntil(clock, 31.9)
    times = send.times()
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    assert gaps == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert all(m is request for m in send.messages())
    assert all(t is UDP_PEER for _, _, t in send.sent)
    assert result(transaction) is None


def test_noRetransmissionOverTCP(layer: TransactionLayer, send: Recorder, clock: Clock) -> None:
    transaction = layer.sendRequest(makeNotify(transport="TCP"), TCP_PEER)
    clock.advance(31.9)
    assert len(send.sent) == 1
    assert len(clock.getDelayedCalls()) == 1  # Timer F only
    assert transaction.state == TRYING


@pytest.mark.parametrize("target", [UDP_PEER, TCP_PEER])
def test_timerFSynthesises408(
    layer: TransactionLayer, send: Recorder, clock: Clock, target: Target
) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, target)
    clock.advance(32 - 0.001)
    assert result(transaction) is None
    assert transaction.state == TRYING
    clock.advance(0.001)
    response = result(transaction)
    assert response is not None and response.code == 408
    assert response.callId == request.callId
    assert response.header("cseq") == request.header("cseq")
    assert response.topVia().branch == request.topVia().branch
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    # A late response finds nothing.
    assert layer.responseReceived(Response.forRequest(request, 200), target) is False


def test_provisionalMovesToProceedingAndRetransmitsAtT2(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    provisionals: List[Response] = []
    transaction.onProvisional = provisionals.append
    runUntil(clock, 0.75)  # one retransmission, at 0.5; the next is due at 1.5
    trying = Response.forRequest(request, 100)
    assert layer.responseReceived(trying, UDP_PEER) is True
    assert transaction.state == PROCEEDING
    assert provisionals == [trying]
    runUntil(clock, 31.9)
    times = send.times()
    # Timer E set in Trying fires at 1.5 and is then reset to T2 (§17.1.2.2).
    assert [round(t, 6) for t in times] == [0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert result(transaction) is None
    clock.advance(0.1)
    response = result(transaction)
    assert response is not None and response.code == 408


def test_finalResponseCompletesThenTimerK(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    clock.advance(1)
    final = Response.forRequest(request, 200, toTag="w")
    assert layer.responseReceived(final, UDP_PEER) is True
    assert result(transaction) is final
    assert transaction.state == COMPLETED
    assert len(layer) == 1
    sentBefore = len(send.sent)
    # Retransmitted finals are absorbed, not given to the TU again.
    clock.advance(2)
    assert layer.responseReceived(Response.forRequest(request, 200, toTag="w"), UDP_PEER) is True
    assert layer.responseReceived(Response.forRequest(request, 100), UDP_PEER) is True
    assert len(send.sent) == sentBefore  # no more retransmissions
    assert result(transaction) is final
    advanceTo(clock, 1 + 5 - 0.01)
    assert transaction.state == COMPLETED and len(layer) == 1
    advanceTo(clock, 1 + 5)
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    assert layer.responseReceived(Response.forRequest(request, 200, toTag="w"), UDP_PEER) is False


def test_finalResponseOverTCPTerminatesAtOnce(
    layer: TransactionLayer, clock: Clock
) -> None:
    request = makeNotify(transport="TCP")
    transaction = layer.sendRequest(request, TCP_PEER)
    final = Response.forRequest(request, 481)
    assert layer.responseReceived(final, TCP_PEER) is True
    assert result(transaction) is final
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    assert layer.responseReceived(Response.forRequest(request, 481), TCP_PEER) is False


def test_finalResponseInProceeding(layer: TransactionLayer, clock: Clock) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    layer.responseReceived(Response.forRequest(request, 100), UDP_PEER)
    clock.advance(3)
    final = Response.forRequest(request, 200, toTag="w")
    layer.responseReceived(final, UDP_PEER)
    assert result(transaction) is final
    assert transaction.state == COMPLETED


def test_transportErrorGives503AtOnce(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    send.failing = True
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    response = result(transaction)
    assert response is not None and response.code == 503
    assert response.callId == request.callId
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_transportErrorOnRetransmissionGives503(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    transaction = layer.sendRequest(makeNotify(), UDP_PEER)
    clock.advance(0.4)
    send.failing = True
    assert result(transaction) is None
    clock.advance(0.1)
    response = result(transaction)
    assert response is not None and response.code == 503
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_unmatchedResponses(layer: TransactionLayer) -> None:
    request = makeNotify(branch="z9hG4bKmine")
    transaction = layer.sendRequest(request, UDP_PEER)
    other = Response.forRequest(makeNotify(branch="z9hG4bKother"), 200)
    assert layer.responseReceived(other, UDP_PEER) is False
    wrongMethod = Response.forRequest(request, 200)
    wrongMethod.setHeader("CSeq", "2 SUBSCRIBE")
    assert layer.responseReceived(wrongMethod, UDP_PEER) is False
    noBranch = Response.forRequest(request, 200)
    noBranch.setHeader("Via", "SIP/2.0/UDP 198.51.100.1:5060")
    assert layer.responseReceived(noBranch, UDP_PEER) is False
    badVia = Response.forRequest(request, 200)
    badVia.setHeader("Via", "garbage")
    assert layer.responseReceived(badVia, UDP_PEER) is False
    noVia = Response.forRequest(request, 200)
    noVia.removeHeader("Via")
    assert layer.responseReceived(noVia, UDP_PEER) is False
    assert result(transaction) is None
    assert transaction.state == TRYING


def test_responseParsedFromBytesMatches(layer: TransactionLayer) -> None:
    request = makeNotify(branch="z9hG4bKwire")
    transaction = layer.sendRequest(request, UDP_PEER)
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKwire;received=203.0.113.5\r\n"
        b"From: <sip:alice@example.test>;tag=1928301774\r\n"
        b"To: <sip:bob@example.test>;tag=w\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
        b"CSeq: 2 NOTIFY\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    response = parseMessage(data)
    assert isinstance(response, Response)
    assert layer.responseReceived(response, UDP_PEER) is True
    assert result(transaction) is response


def test_sendRequestNeedsAFreshBranch(layer: TransactionLayer) -> None:
    with pytest.raises(ValueError):
        layer.sendRequest(makeRequest("NOTIFY", branch=None), UDP_PEER)
    layer.sendRequest(makeNotify(branch="z9hG4bKdup"), UDP_PEER)
    with pytest.raises(ValueError):
        layer.sendRequest(makeNotify(branch="z9hG4bKdup"), UDP_PEER)
    assert len(layer) == 1


def test_cancellingTheDeferredAbandonsTheTransaction(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)
    failures: list = []
    transaction.deferred.addErrback(failures.append)
    transaction.deferred.cancel()
    assert failures and failures[0].check(CancelledError)
    assert transaction.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []
    assert layer.responseReceived(Response.forRequest(request, 200), UDP_PEER) is False


def test_failingProvisionalHookIsLogged(
    layer: TransactionLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list = []
    monkeypatch.setattr(ClientTransaction, "log", Logger(observer=events.append))
    request = makeNotify()
    transaction = layer.sendRequest(request, UDP_PEER)

    def hook(response: Response) -> None:
        raise RuntimeError("TU bug")

    transaction.onProvisional = hook
    assert layer.responseReceived(Response.forRequest(request, 100), UDP_PEER) is True
    assert transaction.state == PROCEEDING
    assert len(events) == 1 and events[0]["log_failure"].check(RuntimeError)
    layer.responseReceived(Response.forRequest(request, 200), UDP_PEER)
    assert transaction.state == COMPLETED


# Configuration, accounting, shutdown


def test_configurableTimers(clock: Clock, send: Recorder) -> None:
    layer = TransactionLayer(clock, send, TimerSettings(T1=0.1, T2=0.4, T4=1.0, resolution=0.05))
    client = layer.sendRequest(makeNotify(), UDP_PEER)
    server = layer.requestReceived(makeRequest(), UDP_PEER)
    assert server is not None
    server.respond(Response.forRequest(server.request, 200, toTag="t"))
    runUntil(clock, 6.35)
    clientTimes = [t for t, m, _ in send.sent if isinstance(m, Request)]
    gaps = [round(b - a, 6) for a, b in zip(clientTimes, clientTimes[1:])]
    assert gaps[:4] == [0.1, 0.2, 0.4, 0.4]
    assert set(gaps[3:]) == {0.4}
    assert result(client) is None and server.state == COMPLETED
    advanceTo(clock, 6.4)  # Timers F and J: 64*T1
    response = result(client)
    assert response is not None and response.code == 408
    assert server.state == TERMINATED
    # Timer K: T4
    second = layer.sendRequest(makeNotify(), UDP_PEER)
    layer.responseReceived(Response.forRequest(second.request, 200), UDP_PEER)
    clock.advance(0.99)
    assert second.state == COMPLETED
    clock.advance(0.01)
    assert second.state == TERMINATED
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_lenCountsServerAndClientTransactions(
    layer: TransactionLayer, clock: Clock
) -> None:
    assert len(layer) == 0
    trying = layer.requestReceived(makeRequest(branch="z9hG4bKa"), UDP_PEER)
    completed = layer.requestReceived(makeRequest(branch="z9hG4bKb"), UDP_PEER)
    assert trying is not None and completed is not None
    completed.respond(Response.forRequest(completed.request, 200, toTag="t"))
    client = layer.sendRequest(makeNotify(), UDP_PEER)
    done = layer.sendRequest(makeNotify(), UDP_PEER)
    layer.responseReceived(Response.forRequest(done.request, 200), UDP_PEER)
    assert len(layer) == 4
    clock.advance(5)  # Timer K ends "done"
    assert len(layer) == 3
    clock.advance(27)  # Timers F and J end "client" and "completed"
    assert len(layer) == 1
    assert client.state == TERMINATED and completed.state == TERMINATED
    trying.respond(Response.forRequest(trying.request, 200, toTag="t"))
    assert len(layer) == 1
    clock.advance(32)
    assert len(layer) == 0


def test_stopLeavesNothingBehind(layer: TransactionLayer, send: Recorder, clock: Clock) -> None:
    trying = layer.requestReceived(makeRequest(branch="z9hG4bKa"), UDP_PEER)
    completed = layer.requestReceived(makeRequest(branch="z9hG4bKb"), UDP_PEER)
    assert trying is not None and completed is not None
    completed.respond(Response.forRequest(completed.request, 200, toTag="t"))
    client = layer.sendRequest(makeNotify(), UDP_PEER)
    done = layer.sendRequest(makeNotify(), UDP_PEER)
    layer.responseReceived(Response.forRequest(done.request, 200), UDP_PEER)
    assert clock.getDelayedCalls() != []
    layer.stop()
    assert clock.getDelayedCalls() == []
    assert len(layer) == 0
    assert {t.state for t in (trying, completed, client, done)} == {TERMINATED}
    sent = len(send.sent)
    trying.respond(Response.forRequest(trying.request, 200, toTag="t"))
    assert len(send.sent) == sent
    assert result(client) is None
    # The layer still works after stop().
    assert layer.requestReceived(makeRequest(branch="z9hG4bKa"), UDP_PEER) is not None


def test_clientTimersOfManyTransactions(layer: TransactionLayer, send: Recorder, clock: Clock) -> None:
    """
    Client transactions started at different times share the Timer E and
    F queues: each retransmits and times out on its own schedule, one
    answered stops only its own timers, and once none waits no delayed
    call is left (Timer K aside).
    """
    requests = []
    for start in (0.0, 0.2, 0.4):
        advanceTo(clock, start)
        request = makeNotify()
        requests.append((request, layer.sendRequest(request, UDP_PEER)))
    (second, secondTx) = requests[1]
    advanceTo(clock, 0.3)
    assert layer.responseReceived(Response.forRequest(second, 200, toTag="w"), UDP_PEER) is True
    runUntil(clock, 1.0)
    byRequest = {id(r): [t for t, m, _ in send.sent if m is r] for r, _ in requests}
    assert byRequest[id(requests[0][0])] == [0.0, 0.5]
    assert byRequest[id(second)] == [0.2]
    assert byRequest[id(requests[2][0])] == [0.4, 0.9]
    runUntil(clock, 32.3)
    assert result(requests[0][1]).code == 408
    assert requests[2][1].state != TERMINATED
    layer.responseReceived(Response.forRequest(requests[2][0], 200, toTag="w"), UDP_PEER)
    advanceTo(clock, 40)
    assert len(layer) == 0
    assert clock.getDelayedCalls() == []


def test_timerFOfATransactionStartedByATimeout(
    layer: TransactionLayer, send: Recorder, clock: Clock
) -> None:
    """
    A transaction started while another times out (a manager sends the
    next NOTIFY when one times out) does not delay the timeout of one
    already waiting behind it.
    """
    first = makeNotify()
    waiting = makeNotify()
    started: List[ClientTransaction] = []

    def timedOut(response: Response) -> None:
        started.append(layer.sendRequest(makeNotify(), UDP_PEER))

    layer.sendRequest(first, UDP_PEER).deferred.addCallback(timedOut)
    advanceTo(clock, 0.5)
    waitingTx = layer.sendRequest(waiting, UDP_PEER)
    runUntil(clock, 32.0)
    assert len(started) == 1 and result(waitingTx) is None
    runUntil(clock, 32.5)
    response = result(waitingTx)
    assert response is not None and response.code == 408
    runUntil(clock, 64.0)
    assert result(started[0]).code == 408
    advanceTo(clock, 80)
    assert len(layer) == 0 and clock.getDelayedCalls() == []
