"""
What SIP over WebSocket costs next to TCP: SUBSCRIBE+NOTIFY and PUBLISH
rates of one C{twistd -n presence} process under the same load over N TCP
connections and over N WebSocket connections, and the server's CPU per SIP
message on each.

sipp has no WebSocket, so the load comes from an asyncio client here (the
same client for both transports: only its framing differs, wsproto for
WebSocket, Content-Length for TCP).  Per transport, on a fresh server and
SQLite database (C{[billing] no_auth_domains = example.test}, NOTIFYs not
rate-limited):

C{subscribe}
    C{--subscriptions} SUBSCRIBEs spread over the connections, each watcher
    watching C{--watchers} presentities' worth of dialogs; one completes
    when its 200 and its first NOTIFY (answered 200) have arrived.  At most
    C{--window} are outstanding at once.
C{publish}
    C{--publishes} PUBLISHes over the presentities, round robin (the first
    of each initial, the others modifying it with SIP-If-Match), each
    changing the document, so each brings one NOTIFY per watcher; the step
    ends when every 200 and every NOTIFY has arrived.

Every step is bounded in count and in time (C{--max-seconds}).  Reported:
operations and NOTIFYs per second, and the server's CPU microseconds per
SIP message that crossed the transport (requests, responses, NOTIFYs and
their answers), the steadier figure on a shared machine; the difference
between WebSocket and TCP is the cost of the WebSocket layer.  The client
runs on the same machine and competes for its cores: rates are lower
bounds, the CPU per message is the server's own.

C{--micro} adds an in-process measure of the framing alone: one NOTIFY-size
message received through L{SIPWebSocketProtocol} (a masked text frame) and
through L{SIPStreamProtocol}, and one sent through each, with a core that
drops what it is given.

Run from the repository root::

    python bench/websocket_bench.py
    python bench/websocket_bench.py --connections 200 --subscriptions 8000 --publishes 8000 --micro
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadtools import CPUMeter, Server, loadAverage, log, treeState  # noqa: E402
from bench.samples import NOTIFY, PIDF_NOTE  # noqa: E402
from presence.sip.message import Request, Response  # noqa: E402
from presence.sip.parser import PING, StreamFramer, parseMessage  # noqa: E402

HOST = "127.0.0.1"
CONFIG = (
    "[manager]\nnotify_min_interval = 0\n"
    "[billing]\nno_auth_domains = example.test\n"
    "[registrar]\n"
)



class Connection:
    """
    One client connection, TCP or WebSocket, and what it is waiting for:
    Call-ID to the future of its response, and of a dialog's first NOTIFY.
    """

    def __init__(self, bench: LoadClient, transport: str, index: int) -> None:
        self.bench = bench
        self.transport = transport
        self.index = index
        self.reader: Any = None
        self.writer: Any = None
        self.ws: Any = None
        self.framer = StreamFramer()
        self.task: Optional[asyncio.Task] = None
        # Via and Contact: what a browser puts there, over WebSocket.
        self.host = "c%d.invalid" % (index,) if transport == "WS" else HOST
        self.port = 0

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        if self.transport == "TCP":
            self.port = self.writer.get_extra_info("sockname")[1]
        else:
            from wsproto import ConnectionType, WSConnection
            from wsproto.events import AcceptConnection
            from wsproto.events import Request as Upgrade

            self.ws = WSConnection(ConnectionType.CLIENT)
            self.writer.write(self.ws.send(Upgrade(host=HOST, target="/", subprotocols=["sip"])))
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("handshake refused")
                self.ws.receive_data(data)
                events = list(self.ws.events())
                if any(isinstance(e, AcceptConnection) for e in events):
                    break
        self.task = asyncio.ensure_future(self._read())

    def send(self, data: bytes) -> None:
        if self.ws is None:
            self.writer.write(data)
        else:
            from wsproto.events import TextMessage

            self.writer.write(self.ws.send(TextMessage(data=data.decode("utf-8"))))

    async def _read(self) -> None:
        from wsproto.events import BytesMessage, TextMessage

        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            if self.ws is None:
                for item in self.framer.dataReceived(data):
                    if item is not PING:
                        self.bench.received(self, parseMessage(item, stream=True))  # type: ignore[arg-type]
                continue
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.bench.received(self, parseMessage(event.data.encode("utf-8")))
                elif isinstance(event, BytesMessage):
                    self.bench.received(self, parseMessage(bytes(event.data)))

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


class LoadClient:
    """
    The load of one transport: connections, SUBSCRIBEs and PUBLISHes, and
    the counts of what came back.
    """

    def __init__(self, options: Any, transport: str) -> None:
        self.options = options
        self.transport = transport
        self.connections: List[Connection] = []
        self.responses: Dict[str, asyncio.Future] = {}
        self.firstNotify: Dict[str, asyncio.Future] = {}
        self.notifies = 0
        self.notifiesWanted = 0
        self.notified: Optional[asyncio.Future] = None
        self.messages = 0
        self.sequence = 0

    def received(self, connection: Connection, message: Any) -> None:
        self.messages += 1
        if isinstance(message, Response):
            future = self.responses.pop(message.callId + message.header("cseq"), None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if message.method != "NOTIFY":
            return
        connection.send(Response.forRequest(message, 200).toBytes())
        self.messages += 1
        first = self.firstNotify.pop(message.callId, None)
        if first is not None:
            first.set_result(message)
            return
        self.notifies += 1
        if self.notified is not None and self.notifies >= self.notifiesWanted and not self.notified.done():
            self.notified.set_result(None)

    def request(self, connection: Connection, method: str, uri: str, fromUser: str, **headers: str) -> Request:
        self.sequence += 1
        tag = "%x" % (self.sequence,)
        request = Request(method, uri)
        transport = connection.transport
        via = "SIP/2.0/%s %s%s;branch=z9hG4bKb%s;rport" % (
            transport, connection.host, ":%d" % (connection.port,) if connection.port else "", tag,
        )
        request.addHeader("Via", via)
        request.addHeader("Max-Forwards", "70")
        request.addHeader("From", "<sip:%s@example.test>;tag=%s" % (fromUser, tag))
        request.addHeader("To", "<%s>" % (uri,))
        request.addHeader("Call-ID", "%s-%s" % (tag, transport))
        request.addHeader("CSeq", "1 %s" % (method,))
        request.addHeader("Contact", "<sip:%s@%s;transport=%s>" % (fromUser, connection.host, transport.lower()))
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-"), value)
        return request

    async def transact(self, connection: Connection, request: Request, body: bytes = b"") -> Response:
        if body:
            request.body = body
        future = asyncio.get_running_loop().create_future()
        self.responses[request.callId + request.header("cseq")] = future
        connection.send(request.toBytes())
        self.messages += 1
        return await future

    async def openAll(self, port: int) -> None:
        self.connections = [Connection(self, self.transport, i) for i in range(self.options.connections)]
        await asyncio.gather(*(c.open(port) for c in self.connections))

    def closeAll(self) -> None:
        for connection in self.connections:
            connection.close()

    def presentities(self) -> int:
        return max(1, self.options.subscriptions // self.options.watchers)

    async def subscribeAll(self) -> int:
        """
        Every SUBSCRIBE, each done once answered and first notified.
        """
        window = asyncio.Semaphore(self.options.window)
        presentities = self.presentities()

        async def one(i: int) -> None:
            connection = self.connections[i % len(self.connections)]
            presentity = "p%d" % (i % presentities,)
            async with window:
                request = self.request(
                    connection, "SUBSCRIBE", "sip:%s@example.test" % (presentity,), "w%d" % (i,),
                    Event="presence", Accept="application/pidf+xml", Expires="3600",
                )
                first = asyncio.get_running_loop().create_future()
                self.firstNotify[request.callId] = first
                response = await self.transact(connection, request)
                if response.code != 200:
                    raise RuntimeError("SUBSCRIBE answered %d %s" % (response.code, response.reason))
                await first

        await asyncio.gather(*(one(i) for i in range(self.options.subscriptions)))
        return self.options.subscriptions

    async def publishAll(self) -> Tuple[int, int]:
        """
        Every PUBLISH, in rounds over the presentities; done when each is
        answered and every NOTIFY it caused has arrived.
        """
        presentities = self.presentities()
        watchers = [0] * presentities
        for i in range(self.options.subscriptions):
            watchers[i % presentities] += 1
        count = self.options.publishes
        self.notifies = 0
        self.notifiesWanted = sum(watchers[j % presentities] for j in range(count))
        self.notified = asyncio.get_running_loop().create_future()
        window = asyncio.Semaphore(self.options.window)

        async def series(j: int) -> None:
            connection = self.connections[j % len(self.connections)]
            name = "p%d" % (j,)
            etag = None
            for n in range(j, count, presentities):
                async with window:
                    headers: Dict[str, str] = {"Event": "presence", "Expires": "3600",
                                               "Content_Type": "application/pidf+xml"}
                    if etag is not None:
                        headers["SIP_If_Match"] = etag
                    request = self.request(connection, "PUBLISH", "sip:%s@example.test" % (name,), name, **headers)
                    response = await self.transact(connection, request, (PIDF_NOTE % ("sip:%s@example.test" % (name,), "n%d" % (n,))).encode())
                    if response.code != 200:
                        raise RuntimeError("PUBLISH answered %d %s" % (response.code, response.reason))
                    etag = response.header("sip-etag")

        await asyncio.gather(*(series(j) for j in range(min(presentities, count))))
        if self.notifiesWanted:
            await self.notified
        return count, self.notifiesWanted


def runTransport(options: Any, transport: str, workdir: str) -> Dict[str, Any]:
    """
    One fresh server, the subscribe step then the publish step over
    C{transport}.
    """
    database = "sqlite:///" + os.path.join(workdir, "presence-%s.sqlite" % (transport.lower(),))
    listen = "tcp:0:interface=%s" % (HOST,) if transport == "TCP" else "ws:0:interface=%s" % (HOST,)
    server = Server(workdir, database, python=options.python, config=CONFIG, extraArgs=["--listen", listen])
    result: Dict[str, Any] = {"transport": transport}
    try:
        server.start()
        match = server.find(r"%s [0-9.]+:(\d+)" % (transport,))
        if match is None:
            raise RuntimeError("no %s port in the start-up line:\n%s" % (transport, server.tail()))
        port = int(match.group(1))
        client = LoadClient(options, transport)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(client.openAll(port))
            for step, work in (("subscribe", client.subscribeAll), ("publish", client.publishAll)):
                client.messages = 0
                meter = CPUMeter(server.pid).start()
                started = time.monotonic()
                done = loop.run_until_complete(asyncio.wait_for(work(), options.max_seconds))
                elapsed = time.monotonic() - started
                cpu = meter.stop()
                figures: Dict[str, Any] = {
                    "seconds": round(elapsed, 2),
                    "sipMessages": client.messages,
                    "serverCpuPercent": cpu["cpuPercent"],
                    "hostBusyPercent": cpu["hostBusyPercent"],
                    "serverCpuMicrosPerMessage": round(cpu["cpuPercent"] / 100.0 * elapsed * 1e6 / max(1, client.messages), 1),
                }
                if step == "subscribe":
                    figures["subscribesPerSecond"] = round(done / elapsed, 1)
                else:
                    publishes, notifies = done
                    figures["publishesPerSecond"] = round(publishes / elapsed, 1)
                    figures["notifiesPerSecond"] = round(notifies / elapsed, 1)
                result[step] = figures
                log("%s %s: %s" % (transport, step, json.dumps(figures)))
        finally:
            client.closeAll()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
    finally:
        server.stop()
    return result


def micro(number: int) -> Dict[str, float]:
    """
    Nanoseconds per message of the framing alone: a typical NOTIFY
    (L{bench.samples.NOTIFY}) in and out through the WebSocket and the TCP protocol objects, with a
    core that drops every message and a transport that drops every byte.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import Request as Upgrade
    from wsproto.frame_protocol import FrameProtocol

    from presence.sip.core import SIPCore
    from presence.sip.transport import SIPStreamProtocol
    from presence.sip.websocket import SIPWebSocketFactory

    class NullTransport:
        def write(self, data: bytes) -> None:
            pass

        def getPeer(self) -> IPv4Address:
            return IPv4Address("TCP", HOST, 40000)

        def loseConnection(self) -> None:
            pass

    core = SIPCore(Clock())
    core.messageReceived = lambda message, source: None  # type: ignore[method-assign]
    notify = NOTIFY

    ws = SIPWebSocketFactory(core, "WS", core.limits).buildProtocol(None)
    ws.makeConnection(NullTransport())
    ws.dataReceived(WSConnection(ConnectionType.CLIENT).send(Upgrade(host=HOST, target="/", subprotocols=["sip"])))
    tcp = SIPStreamProtocol(core, "TCP", core.limits)
    tcp.makeConnection(NullTransport())
    # A browser's frame: text, masked.
    frame = bytes(FrameProtocol(client=True, extensions=[]).send_data(notify.decode("utf-8")))

    def timed(work: Any) -> float:
        for _ in range(number // 10):
            work()
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(number):
                work()
            best = min(best, (time.perf_counter() - started) / number * 1e9)
        return round(best, 0)

    result = {
        "messageBytes": len(notify),
        "receiveWebSocketNs": timed(lambda: ws.dataReceived(frame)),
        "receiveTcpNs": timed(lambda: tcp.dataReceived(notify)),
        "sendWebSocketNs": timed(lambda: ws.write(notify)),
        "sendTcpNs": timed(lambda: tcp.write(notify)),
    }
    ws.connectionLost(None)
    tcp.connectionLost(None)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="TCP,WS", help="comma-separated: TCP, WS")
    parser.add_argument("--connections", type=int, default=100, help="client connections per transport")
    parser.add_argument("--subscriptions", type=int, default=4000)
    parser.add_argument("--watchers", type=int, default=4, help="subscriptions per presentity")
    parser.add_argument("--publishes", type=int, default=4000)
    parser.add_argument("--window", type=int, default=200, help="transactions outstanding at most")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit of one step")
    parser.add_argument("--micro", action="store_true", help="also time the framing alone, in process")
    parser.add_argument("--micro-number", type=int, default=20000)
    parser.add_argument("--python", default=sys.executable, help="interpreter running the server (e.g. pypy3)")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    options = parser.parse_args(argv)
    report: Dict[str, Any] = {"tree": treeState(), "loadAverageBefore": loadAverage(), "options": vars(options)}
    workdir = tempfile.mkdtemp(prefix="presence-ws-bench-")
    try:
        for transport in options.transports.upper().split(","):
            report[transport] = runTransport(options, transport, workdir)
        if options.micro:
            report["micro"] = micro(options.micro_number)
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadAverageAfter"] = loadAverage()
    if "TCP" in report and "WS" in report:
        report["wsMinusTcpServerCpuMicrosPerMessage"] = {
            step: round(report["WS"][step]["serverCpuMicrosPerMessage"] - report["TCP"][step]["serverCpuMicrosPerMessage"], 1)
            for step in ("subscribe", "publish")
            if step in report["WS"] and step in report["TCP"]
        }
    text = json.dumps(report, indent=2)
    print(text)
    if options.json:
        with open(options.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
