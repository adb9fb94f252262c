"""
RFC 3261 §17 non-INVITE transactions, client and server, without I/O.

The transaction layer sits between the transports and the transaction user
(TU: the dispatcher, the subscription manager).  It makes an unreliable
datagram exchange reliable: a client transaction retransmits its request
over UDP until a response comes (Timer E) and gives up after 64*T1 (Timer
F); a server transaction hands each request to the TU exactly once and
answers retransmissions of the request with the last response it sent, for
64*T1 after the final one (Timer J).

Nothing here touches a socket or the global reactor: a L{TransactionLayer}
is given an C{IReactorTime} for its timers and a C{send(message, target)}
callable, so tests drive every timer with L{twisted.internet.task.Clock}.

Memory is what matters at scale: at 5,000 requests/s over UDP about 160,000
completed server transactions are waiting out Timer J at any moment.  A
completed transaction is therefore reduced to a small L{_Lingering} record
(key, serialised final response, source; about 550 bytes in all) and the
request is let go; the records of one timer wait in a FIFO queue served by a single delayed call
(L{_ExpiryQueue}), not one C{callLater} each.

Client transactions (a NOTIFY for every change a watcher hears of) arm
Timer F and their first Timer E the same way (L{_TimerQueue}): both have
one delay for every transaction, and a delayed call each, created and
then cancelled by nearly every response, cost as much CPU as parsing the
response.  Only later retransmissions, with their growing intervals, use
a delayed call of their own.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Any, Callable, Deque, Dict, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from presence.latency import LatencyHistogram
from presence.sip.headers import MAGIC_COOKIE, HeaderError
from presence.sip.message import Message, Request, Response
from presence.sip.parser import ParseError, parseMessage
from presence.sip.randomness import randomBytes
from presence.sip.target import Target, TransportError

TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
TERMINATED = "Terminated"

Send = Callable[[Message, Target], None]

#: The methods whose answer times L{TransactionLayer.answerTimes} keeps: a
#: fixed set, so the metrics' label set is bounded.
TIMED_METHODS = ("SUBSCRIBE", "PUBLISH", "REGISTER")

# Separates the parts of a transaction key.  The parser refuses NUL in a
# message head, so no header value can contain it and forge another key.
_SEP = "\x00"

# Slack when comparing a deadline with the clock: a delayed call scheduled
# for C{deadline - now} seconds may fire one rounding error early.
_EPSILON = 1e-6


class TimerSettings:
    """
    The RFC 3261 timer values (§17.1.1.1, table 4), in seconds.

    T1 is the round-trip estimate: retransmissions start at T1, and Timers
    F and J last 64*T1.  T2 caps the retransmission interval of a non-INVITE
    request.  T4 is how long a message may linger in the network (Timer K).

    @ivar resolution: how late, at most, a Timer J or K expiry may be
        processed when expiries crowd together.  Those timers only bound how
        long retransmissions are absorbed, so processing them in batches is
        harmless and saves a delayed call per transaction.
    """

    __slots__ = ("T1", "T2", "T4", "resolution")

    def __init__(
        self, T1: float = 0.5, T2: float = 4.0, T4: float = 5.0, resolution: float = 0.5
    ) -> None:
        if not (T1 > 0 and T2 >= T1 and T4 >= 0 and resolution > 0):
            raise ValueError("need T1 > 0, T2 >= T1, T4 >= 0 and resolution > 0")
        self.T1 = T1
        self.T2 = T2
        self.T4 = T4
        self.resolution = resolution

    def __repr__(self) -> str:
        return "<TimerSettings T1=%g T2=%g T4=%g resolution=%g>" % (
            self.T1,
            self.T2,
            self.T4,
            self.resolution,
        )


def newBranch() -> str:
    """
    A fresh Via branch for a request this node originates: the RFC 3261
    magic cookie and 80 random bits.

    Random rather than a counter because responses are matched on branch
    alone (§17.1.3): a watcher who saw one of our NOTIFY branches could
    otherwise predict the others and forge, say, a 481 that ends another
    watcher's subscription.  The bytes are C{os.urandom} output, buffered
    (L{randomBytes}) and safe across C{fork}.
    """
    return MAGIC_COOKIE + randomBytes(10).hex()


def serverKey(request: Request) -> str:
    """
    The key that matches C{request} and its retransmissions to one server
    transaction (RFC 3261 §17.2.3).

    With the magic cookie in the top Via branch: branch, sent-by and method.
    Without it (an RFC 2543 client): Request-URI, To tag, From tag, Call-ID,
    CSeq and the whole top Via, compared as normalised text.

    @raise HeaderError: when the top Via, CSeq, From or To cannot be parsed.
    """
    via = request.topVia()
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        host, port = via.sentBy()
        return _SEP.join((branch, host, str(port), request.method))
    cseq = request.cseq()
    return _SEP.join(
        (
            "2543",
            request.uri,
            request.toAddr().tag or "",
            request.fromAddr().tag or "",
            request.callId or "",
            str(cseq.number),
            cseq.method,
            str(via),
        )
    )


class _Lingering:
    """
    A completed transaction reduced to what absorbing retransmissions needs.

    @ivar key: the transaction key, or L{None} once the transaction is
        terminated (the mark that L{ServerTransaction.state} and
        L{ClientTransaction.state} read).
    @ivar response: for a server transaction, the final response as bytes
        (about 380 bytes against 1.9 KB for the L{Response} object of a
        typical 200 to SUBSCRIBE); L{None} for a client.
    @ivar source: for a server transaction, where responses go.
    @ivar deadline: when Timer J or K expires, in reactor seconds.
    """

    __slots__ = ("key", "response", "source", "deadline")

    def __init__(
        self, key: str, response: Optional[bytes] = None, source: Optional[Target] = None
    ) -> None:
        self.key: Optional[str] = key
        self.response = response
        self.source = source
        self.deadline = 0.0

    def kill(self) -> None:
        """
        Mark the transaction terminated and free what it held.
        """
        self.key = None
        self.response = None
        self.source = None


class _FifoTimers:
    """
    One timer of a fixed delay for many entries: entries expire in the
    order they were added, so a FIFO queue and one delayed call for its
    head do the work of one delayed call per entry.  When expiries crowd
    together they are processed at most every C{resolution} seconds, so
    under load the queue costs a few delayed calls per second whatever the
    rate; an isolated expiry is processed exactly on time.

    Entries have a C{deadline} slot (set here) and a C{kill()} method (on
    L{stop}); subclasses say what a due entry does (L{_due}).
    """

    __slots__ = ("_reactor", "_delay", "_resolution", "_queue", "_call")

    def __init__(self, reactor: IReactorTime, delay: float, resolution: float) -> None:
        self._reactor = reactor
        self._delay = delay
        self._resolution = resolution
        self._queue: Deque[Any] = deque()
        self._call: Optional[IDelayedCall] = None

    def _push(self, entry: Any) -> None:
        entry.deadline = self._reactor.seconds() + self._delay
        self._queue.append(entry)
        if self._call is None:
            self._call = self._reactor.callLater(self._delay, self._expire)

    def _due(self, entry: Any) -> None:
        raise NotImplementedError()

    def _expire(self) -> None:
        self._call = None
        now = self._reactor.seconds()
        limit = now + _EPSILON
        queue = self._queue
        while queue and queue[0].deadline <= limit:
            self._due(queue.popleft())
        if not queue:
            return
        delay = max(queue[0].deadline - now, self._resolution)
        call = self._call
        if call is None:
            self._call = self._reactor.callLater(delay, self._expire)
        elif call.getTime() > now + delay:
            # An entry pushed by a due one (a timed-out NOTIFY sends the
            # next) scheduled the call a whole delay from now, past the
            # head still waiting.
            call.reset(delay)

    def stop(self) -> None:
        """
        Cancel the delayed call and kill every waiting entry.
        """
        if self._call is not None:
            self._call.cancel()
            self._call = None
        for entry in self._queue:
            entry.kill()
        self._queue.clear()


class _ExpiryQueue(_FifoTimers):
    """
    Timer J or K for every completed transaction that is waiting it out in
    C{table} (the layer's server or client transactions by key).
    """

    __slots__ = ("_table",)

    def __init__(self, reactor: IReactorTime, delay: float, resolution: float, table: Dict[str, Any]) -> None:
        _FifoTimers.__init__(self, reactor, delay, resolution)
        self._table = table

    def add(self, record: _Lingering) -> None:
        """
        Start the timer for C{record}, which is in the table under its key.
        """
        self._push(record)

    def _due(self, record: _Lingering) -> None:
        key = record.key
        if key is not None:
            if self._table.get(key) is record:
                del self._table[key]
            record.kill()


#: How late, at most, a crowd of client timers (E, F) may be processed.
_CLIENT_RESOLUTION = 0.01


class _Armed:
    """
    One client transaction waiting on a L{_TimerQueue}.  Cancelling only
    disarms the entry (and lets the transaction go); the queue drops it
    when its time comes, or at once when no armed entry is left.
    """

    __slots__ = ("deadline", "fire", "queue")

    def __init__(self, fire: Callable[[], None], queue: _TimerQueue) -> None:
        self.deadline = 0.0
        self.fire: Optional[Callable[[], None]] = fire
        self.queue = queue

    def cancel(self) -> None:
        if self.fire is not None:
            self.fire = None
            self.queue._disarmed()

    def kill(self) -> None:
        self.fire = None


class _TimerQueue(_FifoTimers):
    """
    One client timer of a fixed delay (Timer F, the first Timer E) for
    every client transaction, processed at most every
    L{_CLIENT_RESOLUTION} seconds.
    """

    __slots__ = ("_armed",)

    log = Logger()

    def __init__(self, reactor: IReactorTime, delay: float) -> None:
        _FifoTimers.__init__(self, reactor, delay, _CLIENT_RESOLUTION)
        # Entries still armed: at 0 the queue empties and its delayed
        # call goes, so an idle layer leaves no timer behind.
        self._armed = 0

    def arm(self, fire: Callable[[], None]) -> _Armed:
        """
        Call C{fire()} after the delay unless the returned entry is
        cancelled first.
        """
        entry = _Armed(fire, self)
        self._armed += 1
        self._push(entry)
        return entry

    def _due(self, entry: _Armed) -> None:
        fire = entry.fire
        if fire is None:
            return
        entry.fire = None
        self._armed -= 1
        try:
            fire()
        except Exception:
            self.log.failure("Client transaction timer failed")
        if not self._armed:
            self._queue.clear()

    def _disarmed(self) -> None:
        self._armed -= 1
        if not self._armed:
            self.stop()

    def stop(self) -> None:
        """
        Cancel the delayed call and disarm every entry.
        """
        _FifoTimers.stop(self)
        self._armed = 0


class ServerTransaction:
    """
    A non-INVITE server transaction (RFC 3261 §17.2.2): the TU's handle on
    one received request, through which it sends the responses.

    @ivar request: the request that created the transaction.
    @ivar source: where it came from, and where responses go.
    @ivar onTransportError: called with the L{TransportError} when a
        response cannot be sent; the transaction is then terminated.
    """

    log = Logger()

    __slots__ = (
        "_layer",
        "request",
        "source",
        "_key",
        "_state",
        "_last",
        "_record",
        "onTransportError",
        "started",
    )

    def __init__(self, layer: TransactionLayer, request: Request, source: Target, key: str) -> None:
        self._layer = layer
        self.request = request
        self.source = source
        self.started = layer._reactor.seconds()
        self._key = key
        self._state = TRYING
        self._last: Optional[Response] = None
        self._record: Optional[_Lingering] = None
        self.onTransportError: Optional[Callable[[TransportError], None]] = None

    @property
    def state(self) -> str:
        """
        C{"Trying"}, C{"Proceeding"}, C{"Completed"} or C{"Terminated"}.
        """
        record = self._record
        if record is not None and record.key is None:
            return TERMINATED
        return self._state

    def __repr__(self) -> str:
        return "<ServerTransaction %s %s>" % (self.request.method, self.state)

    def respond(self, response: Response) -> None:
        """
        Send a provisional or final response to C{source}.

        A final response moves the transaction to Completed, where it answers
        retransmissions of the request until Timer J (64*T1 over UDP, none
        over TCP and TLS) ends it.  A response after the final one is a TU
        bug: it is logged and dropped.  Never raises L{TransportError}: see
        L{onTransportError}.
        """
        state = self.state
        if state == COMPLETED or state == TERMINATED:
            self.log.warn(
                "Dropping {code} response to {method}: transaction is {state}",
                code=response.code,
                method=self.request.method,
                state=state,
            )
            return
        try:
            self._layer._send(response, self.source)
        except TransportError as e:
            self._transportFailed(e)
            return
        if response.code < 200:
            self._state = PROCEEDING
            self._last = response
        else:
            self._last = None
            self._layer._serverCompleted(self, response)

    def _requestRetransmitted(self) -> None:
        """
        The request came again: resend the last provisional response, if
        any (§17.2.2); in Trying the retransmission is simply absorbed.
        """
        last = self._last
        if last is None:
            return
        try:
            self._layer._send(last, self.source)
        except TransportError as e:
            self._transportFailed(e)

    def _transportFailed(self, error: TransportError) -> None:
        self.log.debug(
            "Transport error sending response to {source}: {error}",
            source=self.source,
            error=error,
        )
        self._terminate()
        hook = self.onTransportError
        if hook is not None:
            try:
                hook(error)
            except Exception:
                self.log.failure("onTransportError hook failed")

    def _terminate(self) -> None:
        servers = self._layer._servers
        if servers.get(self._key) is self:
            del servers[self._key]
        self._state = TERMINATED
        self._last = None


class ClientTransaction:
    """
    A non-INVITE client transaction (RFC 3261 §17.1.2): one request sent by
    the TU, retransmitted over UDP until a final response or Timer F.

    @ivar request: the request, carrying its top Via and branch.
    @ivar target: where it is sent.
    @ivar deferred: fires with the final L{Response}: the real one, a
        synthesised 408 when Timer F fires, or a synthesised 503 when the
        transport fails (§8.1.3.1).  It never errbacks, unless the TU
        cancels it, which abandons the transaction.
    @ivar onProvisional: called with each provisional response, if set.
    """

    log = Logger()

    __slots__ = (
        "_layer",
        "request",
        "target",
        "_key",
        "_state",
        "_record",
        "deferred",
        "onProvisional",
        "_timerE",
        "_timerF",
        "_interval",
    )

    def __init__(self, layer: TransactionLayer, request: Request, target: Target, key: str) -> None:
        self._layer = layer
        self.request = request
        self.target = target
        self._key = key
        self._state = TRYING
        self._record: Optional[_Lingering] = None
        # The canceller holds the layer and key, not self: no reference
        # cycle, so a finished transaction is freed by reference counting.
        self.deferred: Deferred[Response] = Deferred(partial(layer._abandon, key))
        self.onProvisional: Optional[Callable[[Response], None]] = None
        # Delayed calls or _Armed entries: either has cancel().
        self._timerE: Any = None
        self._timerF: Any = None
        self._interval = 0.0

    @property
    def state(self) -> str:
        """
        C{"Trying"}, C{"Proceeding"}, C{"Completed"} or C{"Terminated"}.
        """
        record = self._record
        if record is not None and record.key is None:
            return TERMINATED
        return self._state

    def __repr__(self) -> str:
        return "<ClientTransaction %s %s>" % (self.request.method, self.state)

    def _start(self) -> None:
        if not self._transmit():
            return
        layer = self._layer
        self._timerF = layer._timerF.arm(self._timedOut)
        if not self.target.reliable:
            self._interval = layer.timers.T1
            self._timerE = layer._timerE.arm(self._retransmit)

    def _transmit(self) -> bool:
        """
        Hand the request to the transport; on a transport error, end the
        transaction with a 503.  Return whether it was sent.
        """
        try:
            self._layer._send(self.request, self.target)
        except TransportError as e:
            self.log.debug(
                "Transport error sending {method} to {target}: {error}",
                method=self.request.method,
                target=self.target,
                error=e,
            )
            self._end(Response.forRequest(self.request, 503))
            return False
        return True

    def _retransmit(self) -> None:
        """
        Timer E: resend, then wait twice as long, up to T2; in Proceeding,
        wait T2 (§17.1.2.2).
        """
        self._timerE = None
        if not self._transmit():
            return
        T2 = self._layer.timers.T2
        if self._state == TRYING:
            self._interval = min(self._interval * 2, T2)
        else:
            self._interval = T2
        self._timerE = self._layer._reactor.callLater(self._interval, self._retransmit)

    def _timedOut(self) -> None:
        """
        Timer F: no final response in 64*T1; the TU gets a 408.
        """
        self._timerF = None
        self.log.debug(
            "{method} to {target} timed out", method=self.request.method, target=self.target
        )
        self._end(Response.forRequest(self.request, 408))

    def _responseReceived(self, response: Response) -> None:
        if response.code < 200:
            self._state = PROCEEDING
            hook = self.onProvisional
            if hook is not None:
                try:
                    hook(response)
                except Exception:
                    self.log.failure("onProvisional hook failed")
            return
        self._cancelTimers()
        layer = self._layer
        if self.target.reliable:
            del layer._clients[self._key]
            self._state = TERMINATED
        else:
            self._state = COMPLETED
            record = _Lingering(self._key)
            self._record = record
            layer._clients[self._key] = record
            layer._timerK.add(record)
        self.deferred.callback(response)

    def _end(self, response: Response) -> None:
        """
        Terminate at once and give the TU C{response} (synthesised).
        """
        self._terminate()
        self.deferred.callback(response)

    def _terminate(self) -> None:
        self._cancelTimers()
        clients = self._layer._clients
        if clients.get(self._key) is self:
            del clients[self._key]
        self._state = TERMINATED

    def _cancelTimers(self) -> None:
        if self._timerE is not None:
            self._timerE.cancel()
            self._timerE = None
        if self._timerF is not None:
            self._timerF.cancel()
            self._timerF = None


class TransactionLayer:
    """
    The non-INVITE transaction layer of one SIP node: matches incoming
    messages to transactions, runs their timers and sends through C{send}.

    One layer serves every transport.  ACK is left to the caller, and so is
    what a CANCEL means for the request it cancels.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, send: Send, timers: Optional[TimerSettings] = None
    ) -> None:
        """
        @param reactor: the clock for every timer.
        @param send: C{send(message, target)}; may raise L{TransportError}.
        @param timers: T1, T2 and T4; RFC 3261 defaults if L{None}.
        """
        self._reactor = reactor
        self._send = send
        self.timers = timers if timers is not None else TimerSettings()
        self._servers: Dict[str, Union[ServerTransaction, _Lingering]] = {}
        self._clients: Dict[str, Union[ClientTransaction, _Lingering]] = {}
        resolution = self.timers.resolution
        self._timerJ = _ExpiryQueue(reactor, 64 * self.timers.T1, resolution, self._servers)
        self._timerK = _ExpiryQueue(reactor, self.timers.T4, resolution, self._clients)
        self._timerE = _TimerQueue(reactor, self.timers.T1)
        self._timerF = _TimerQueue(reactor, 64 * self.timers.T1)
        #: Method to the seconds from a request's arrival to its final
        #: response (the dispatcher's relayed ones included), for the
        #: methods whose answer waits for real work.
        self.answerTimes: Dict[str, LatencyHistogram] = {method: LatencyHistogram() for method in TIMED_METHODS}

    def __len__(self) -> int:
        """
        The number of live transactions, server and client, Completed ones
        included.
        """
        return len(self._servers) + len(self._clients)

    def requestReceived(self, request: Request, source: Target) -> Optional[ServerTransaction]:
        """
        Match a request from the network to a server transaction.

        A CANCEL gets a server transaction of its own, as RFC 3261 §9.2
        says; the key includes the method, so it never matches the request
        it cancels.  Finding that request is the caller's business.

        @return: a new L{ServerTransaction} for a new request, which the
            caller hands to the TU; L{None} for a retransmission, which the
            transaction has answered with its last response, if any.
        @raise ValueError: for ACK, which has no non-INVITE transaction.
        @raise HeaderError: when the headers matching needs are malformed;
            no response can be addressed then, so the caller drops it.
        """
        if request.method == "ACK":
            raise ValueError("ACK does not belong to a non-INVITE transaction")
        key = serverKey(request)
        entry = self._servers.get(key)
        if entry is None:
            transaction = ServerTransaction(self, request, source, key)
            self._servers[key] = transaction
            return transaction
        if type(entry) is _Lingering:
            self._resendFinal(entry)
        else:
            entry._requestRetransmitted()
        return None

    def hasServer(self, branch: str, host: str, port: int, method: str) -> bool:
        """
        Whether a server transaction (live or lingering) matches a request
        with this RFC 3261 top Via branch, sent-by and method: what
        L{serverKey} would say, for a caller that has not parsed it.
        """
        return _SEP.join((branch, host.lower(), str(port), method)) in self._servers

    def responseReceived(self, response: Response, source: Target) -> bool:
        """
        Match a response from the network to a client transaction by its
        top Via branch and CSeq method (§17.1.3) and process it.  C{source}
        plays no part in matching, as the RFC says.

        @return: whether a transaction took it (a retransmission absorbed in
            Completed counts); L{False} leaves a stray response to the
            caller.
        """
        try:
            branch = response.topVia().branch
            method = response.cseq().method
        except HeaderError:
            return False
        if not branch:
            return False
        entry = self._clients.get(branch + _SEP + method)
        if entry is None:
            return False
        if type(entry) is not _Lingering:
            entry._responseReceived(response)
        return True

    def sendRequest(self, request: Request, target: Target) -> ClientTransaction:
        """
        Start a client transaction: send C{request} to C{target} and
        retransmit it as needed.

        @param request: carries its top Via with a unique branch, see
            L{newBranch}.
        @raise ValueError: when the top Via has no branch, or the branch is
            in use by a live client transaction for the same method.
        @raise HeaderError: when the top Via is malformed.
        """
        branch = request.topVia().branch
        if not branch:
            raise ValueError("The top Via has no branch; use newBranch()")
        key = branch + _SEP + request.method
        if key in self._clients:
            raise ValueError("Branch %r is already in use" % (branch,))
        transaction = ClientTransaction(self, request, target, key)
        self._clients[key] = transaction
        transaction._start()
        return transaction

    def stop(self) -> None:
        """
        Cancel every timer and drop every transaction, for shutdown and
        tests.  Pending client Deferreds are left unfired, so that no TU
        callback starts new work during shutdown.
        """
        for table in (self._servers, self._clients):
            for entry in list(table.values()):
                if type(entry) is _Lingering:
                    entry.kill()
                else:
                    entry._terminate()
            table.clear()
        self._timerJ.stop()
        self._timerK.stop()
        self._timerE.stop()
        self._timerF.stop()

    def _abandon(self, key: str, deferred: Deferred[Response]) -> None:
        """
        The TU cancelled a client transaction's Deferred: stop
        retransmitting and forget the transaction.
        """
        entry = self._clients.get(key)
        if entry is not None and type(entry) is not _Lingering:
            entry._terminate()

    def _serverCompleted(self, transaction: ServerTransaction, response: Response) -> None:
        """
        C{transaction} sent its final response: keep only a lingering
        record until Timer J, or nothing over a reliable transport.
        """
        timed = self.answerTimes.get(transaction.request.method)
        if timed is not None:
            timed.observe(self._reactor.seconds() - transaction.started)
        key = transaction._key
        servers = self._servers
        if transaction.source.reliable or servers.get(key) is not transaction:
            transaction._terminate()
            return
        transaction._state = COMPLETED
        record = _Lingering(key, response.toBytes(), transaction.source)
        transaction._record = record
        servers[key] = record
        self._timerJ.add(record)

    def _resendFinal(self, record: _Lingering) -> None:
        """
        A request came again after the final response: send it again.  The
        response was kept as bytes; rebuilding it costs a parse, but only
        for the rare retransmission.
        """
        data = record.response
        source = record.source
        assert data is not None and source is not None
        try:
            response: Optional[Message] = parseMessage(data)
        except ParseError as e:
            response = e.partial
        if not isinstance(response, Response):
            self.log.warn("Cannot resend a final response that does not parse")
            return
        try:
            self._send(response, source)
        except TransportError as e:
            self.log.debug(
                "Transport error resending response to {source}: {error}",
                source=source,
                error=e,
            )
            if record.key is not None and self._servers.get(record.key) is record:
                del self._servers[record.key]
            record.kill()
