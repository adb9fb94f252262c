"""
Cluster benchmark: the same loads through a dispatcher in front of three
managers linked by Perspective Broker (one PostgreSQL schema shared),
next to one all-in-one process on the same PostgreSQL.

Why: a cluster spreads subscriptions over managers, but every publication
is replicated to every manager, and every request and NOTIFY crosses the
dispatcher: what does that cost in throughput and in the delay from a
PUBLISH to its watchers' NOTIFYs?

Deployments (loopback addresses, as in the integration tests)::

    single   127.0.0.1       twistd presence (role all)
    cluster  127.0.0.2       twistd presence --role=dispatcher (policy --policy)
             127.0.0.3-5     twistd presence --role=manager, m1 m2 m3

Workloads:

C{subscribe}
    sipp C{subscribe.xml}: SUBSCRIBE -> 200 -> initial NOTIFY -> 200, a
    new presentity and watcher per call.
C{publish}
    sipp C{publish.xml}: an initial PUBLISH -> 200 per call, a new
    presentity per call, nobody watching (in the cluster each one is
    still replicated to the two other managers).
C{latency}
    Our own driver: C{--watchers} watchers on C{--presentities}
    presentities, subscribed through the front (spread over the managers);
    then PUBLISHes at C{--publish-rate} a second for C{--duration}
    seconds, each to a random presentity with a unique note.  Latency is
    from sending a PUBLISH to receiving each NOTIFY carrying its note, on
    the same host clock: the publisher's manager, replication to the
    others, and the dispatcher's relay all count.

For C{subscribe} and C{publish} the rate steps up through C{--rates};
a step passes with less than 1% failed calls and at least 90% of the
offered rate achieved, and each mode reports its highest passing rate.
Every step runs on a fresh deployment and a fresh schema.  Each step
also reports every process's CPU and the datagrams the kernel dropped on
each server's UDP socket (C{/proc/net/udp}): the dispatcher carries every
message of every manager, and a burst it cannot read at once overflows
its receive buffer.  That buffer is the product's own setting,
C{[sip] udp_receive_buffer} (default 4 MiB), and each step records the
size every process's log says the kernel granted.  C{--udp-rcvbuf BYTES}
writes another size into every server's configuration, 0 for the
kernel's default (about 208 KiB), to show what the buffer is worth.
Figures taken before the product had the setting had C{--udp-rcvbuf}
as a what-if patch of the servers' UDP sockets and the kernel's default
without it: an old run without the option compares with
C{--udp-rcvbuf 0} now.  The patch set plain
C{SO_RCVBUF}, which the kernel caps at C{net.core.rmem_max}; the product
forces the size past that cap when it may.

All processes share the machine: on two cores, a dispatcher and three
managers that each handle every publication cannot beat one process;
what the figures show is the cost of the hop and of replication, not the
scaling a cluster on separate hosts gets.

Run from the repository root::

    python bench/cluster_bench.py --duration 10 --json /tmp/cluster.json
    python bench/cluster_bench.py --workloads latency --publish-rate 100
    python bench/cluster_bench.py --udp-rcvbuf 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadtools import (  # noqa: E402
    DEFAULT_PG_URL,
    REPO,
    CPUMeter,
    Database,
    Server,
    SippRun,
    _dieWithParent,
    loadAverage,
    log,
    postgresAvailable,
    stopOnSignals,
    treeState,
)
from bench.samples import PIDF_NOTE  # noqa: E402
from presence.config import MAX_BYTE_SIZE, SCHEMA  # noqa: E402
from presence.sip.message import Request, Response  # noqa: E402
from presence.sip.parser import parseMessage  # noqa: E402

FRONT_SINGLE = "127.0.0.1"
DISPATCHER = "127.0.0.2"
MANAGERS = {"m1": "127.0.0.3", "m2": "127.0.0.4", "m3": "127.0.0.5"}
NO_AUTH = "[billing]\nno_auth_domains = example.test\n"
DEFAULT_RATES = {"subscribe": [100, 200, 300, 500, 750], "publish": [250, 500, 750, 1000, 1500]}
#: What every server asks for when C{--udp-rcvbuf} is not given.
PRODUCT_RCVBUF = SCHEMA["sip"]["udp_receive_buffer"][2]



def freeTCPPort(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udpDrops(addresses: Sequence[Tuple[str, int]]) -> Dict[str, int]:
    """
    Datagrams the kernel dropped on each of these UDP sockets (their
    receive buffer was full), from the C{drops} column of C{/proc/net/udp}.
    """
    wanted = {}
    for host, port in addresses:
        packed = "".join("%02X" % (int(part),) for part in reversed(host.split(".")))
        wanted["%s:%04X" % (packed, port)] = "%s:%d" % (host, port)
    result: Dict[str, int] = {}
    try:
        with open("/proc/net/udp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 12 and fields[1] in wanted:
                    result[wanted[fields[1]]] = int(fields[-1])
    except OSError:
        pass
    return result


def bufferSize(text: str) -> int:
    """
    C{--udp-rcvbuf}: a whole number of bytes the product's
    C{[sip] udp_receive_buffer} takes (0 to 1 GiB), checked here rather
    than by a server refusing its configuration.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number of bytes: %r" % (text,))
    if not 0 <= value <= MAX_BYTE_SIZE:
        raise argparse.ArgumentTypeError("must be 0 to %d bytes" % (MAX_BYTE_SIZE,))
    return value


class Process(Server):
    """
    A L{Server} that waits for a line of our choosing (a dispatcher never
    says "Subscription manager ... ready").
    """

    def __init__(self, *args: Any, ready: str = "Subscription manager", **kwargs: Any) -> None:
        Server.__init__(self, *args, **kwargs)
        self.ready = ready

    def start(self, timeout: float = 120.0) -> float:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        import threading

        self.startedAt = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_dieWithParent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self.waitFor(self.ready, timeout) - self.startedAt


class Deployment:
    """
    One deployment under test: its processes, its schema, and the
    address user agents send to.
    """

    def __init__(self, mode: str, root: str, options: argparse.Namespace, tag: str) -> None:
        self.mode = mode
        self.options = options
        self.workdir = os.path.join(root, tag)
        os.makedirs(self.workdir, exist_ok=True)
        self.database = Database("postgresql", self.workdir, options.pg_url)
        self.processes: List[Process] = []
        self.front: Tuple[str, int] = ("", 0)

    def managerConfig(self) -> str:
        return "[manager]\nnotify_min_interval = 0\n" + NO_AUTH + self.sipConfig()

    def sipConfig(self) -> str:
        """
        The C{[sip]} section every server gets: C{--udp-rcvbuf} when given,
        else nothing (the product's default buffer).
        """
        if self.options.udp_rcvbuf is None:
            return ""
        return "[sip]\nudp_receive_buffer = %d\n" % (self.options.udp_rcvbuf,)

    def receiveBuffers(self) -> List[Optional[int]]:
        """
        The UDP receive buffer each process's log says the kernel granted,
        in bytes, in the order of L{processes}; L{None} when it logged
        none: asked for 0, it kept the kernel's default.
        """
        result: List[Optional[int]] = []
        for process in self.processes:
            m = process.find(r"receive buffer (\d+) bytes")
            result.append(int(m.group(1)) if m else None)
        return result

    def start(self) -> None:
        url = self.database.create()
        python = self.options.python
        if self.mode == "single":
            server = Process(
                self.workdir, url, python=python, host=FRONT_SINGLE, config=self.managerConfig(),
            )
            self.processes.append(server)
            server.start()
            self.front = (FRONT_SINGLE, server.port)
            return
        secrets = os.path.join(self.workdir, "cluster-secrets")
        with open(secrets, "w") as f:
            for name in MANAGERS:
                f.write("%s %s\n" % (name, os.urandom(16).hex()))
        os.chmod(secrets, 0o600)
        pbPorts = {name: freeTCPPort(host) for name, host in MANAGERS.items()}
        peers = " ".join("%s=tcp:%s:%d" % (n, MANAGERS[n], pbPorts[n]) for n in sorted(MANAGERS))
        managers = []
        for name, host in sorted(MANAGERS.items()):
            workdir = os.path.join(self.workdir, name)
            os.makedirs(workdir, exist_ok=True)
            config = self.managerConfig().replace("[manager]\n", "[manager]\nnode = %s\n" % (name,))
            config += (
                "[cluster]\nlisten = tcp:%d:interface=%s\npeers = %s\nsecret_file = %s\n"
                % (pbPorts[name], host, peers, secrets)
            )
            process = Process(
                workdir, url, python=python, host=host, config=config,
                extraArgs=["--role=manager", "--advertise", host], ready="Cluster node %s listening" % (name,),
            )
            process.start()
            managers.append((name, host, process))
            self.processes.append(process)
        for name, _, process in managers:
            for other in MANAGERS:
                if other != name:
                    process.waitFor("Resynchronised from %s" % (other,), 60)
        dispatcherDir = os.path.join(self.workdir, "dispatcher")
        os.makedirs(dispatcherDir, exist_ok=True)
        routeSecret = os.path.join(dispatcherDir, "route-secret")
        with open(routeSecret, "w") as f:
            f.write(os.urandom(16).hex())
        os.chmod(routeSecret, 0o600)
        config = "[dispatcher]\nmanagers = %s\npolicy = %s\nsecret_file = %s\n" % (
            " ".join("%s=udp:%s:%d" % (name, host, p.port) for name, host, p in managers),
            self.options.policy,
            routeSecret,
        ) + self.sipConfig()
        dispatcher = Process(
            dispatcherDir, url, python=python, host=DISPATCHER, config=config,
            extraArgs=["--role=dispatcher", "--advertise", DISPATCHER], ready="Dispatcher ready",
        )
        dispatcher.start()
        for name in MANAGERS:
            dispatcher.waitFor("Manager %s is up" % (name,), 30)
        self.processes.append(dispatcher)
        self.front = (DISPATCHER, dispatcher.port)

    def udpAddresses(self) -> List[Tuple[str, int]]:
        return [(p.host, p.port) for p in self.processes]

    def cpuMeters(self) -> List[CPUMeter]:
        return [CPUMeter(p.pid).start() for p in self.processes]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.database.drop()


# The latency driver.


class LatencyDriver:
    """
    Watchers and a publisher on one UDP socket each: subscribe, then
    publish on a schedule and time every NOTIFY that carries a note.
    """

    def __init__(self, front: Tuple[str, int]) -> None:
        self.front = front
        self.watchers = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.publisher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (self.watchers, self.publisher):
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sentAt: Dict[str, float] = {}
        self.latencies: List[float] = []
        self.subscribed = 0
        self.subscribedIds: Set[str] = set()
        self.published = 0
        self.publishFailed = 0
        self.notifies = 0

    def close(self) -> None:
        self.watchers.close()
        self.publisher.close()

    def _request(self, method: str, uri: str, sock: socket.socket, fromURI: str, body: bytes = b"", **headers: str) -> Request:
        port = sock.getsockname()[1]
        token = os.urandom(6).hex()
        request = Request(method, uri)
        request.addHeader("Via", "SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s;rport" % (port, token))
        request.addHeader("Max-Forwards", "70")
        request.addHeader("From", "<%s>;tag=%s" % (fromURI, token[:8]))
        request.addHeader("To", "<%s>" % (uri,))
        request.addHeader("Call-ID", token + "@127.0.0.1")
        request.addHeader("CSeq", "1 %s" % (method,))
        request.addHeader("Contact", "<sip:x@127.0.0.1:%d>" % (port,))
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-"), value)
        request.body = body
        return request

    def subscribeAll(self, watchers: int, presentities: int, timeout: float = 60.0) -> None:
        """
        Subscribe the watchers, 25 every 20 ms, and send again (as a UA's
        Timer E would) those not answered within a second.
        """
        pending: Dict[str, bytes] = {}
        for i in range(watchers):
            request = self._request(
                "SUBSCRIBE", "sip:lat%d@example.test" % (i % presentities,), self.watchers,
                "sip:watcher%d@example.test" % (i,), Event="presence", Expires="3600",
                Accept="application/pidf+xml",
            )
            pending[request.callId or ""] = request.toBytes()
            self.watchers.sendto(pending[request.callId or ""], self.front)
            if i % 25 == 24:
                self.pump(0.02)
        deadline = time.monotonic() + timeout
        while self.subscribed < watchers and time.monotonic() < deadline:
            resend = time.monotonic() + 1.0
            while time.monotonic() < resend and self.subscribed < watchers:
                self.pump(0.1)
            for callId, data in pending.items():
                if callId not in self.subscribedIds:
                    self.watchers.sendto(data, self.front)

    def pump(self, timeout: float) -> None:
        """
        Read both sockets until neither has anything for C{timeout}.
        """
        while True:
            ready = select.select([self.watchers, self.publisher], [], [], timeout)[0]
            if not ready:
                return
            for sock in ready:
                data, source = sock.recvfrom(65535)
                now = time.monotonic()
                message = parseMessage(data)
                if isinstance(message, Request):
                    sock.sendto(Response.forRequest(message, 200).toBytes(), source)
                    if message.method != "NOTIFY":
                        continue
                    self.notifies += 1
                    body = (message.body or b"").decode("utf-8", "replace")
                    start = body.find("<note>")
                    if start >= 0:
                        note = body[start + 6:body.find("</note>", start)]
                        sentAt = self.sentAt.get(note)
                        if sentAt is not None:
                            self.latencies.append(now - sentAt)
                elif isinstance(message, Response) and message.code >= 200:
                    method = message.cseq().method
                    if method == "SUBSCRIBE" and message.code == 200:
                        if message.callId not in self.subscribedIds:
                            self.subscribedIds.add(message.callId or "")
                            self.subscribed += 1
                    elif method == "PUBLISH":
                        if message.code == 200:
                            self.published += 1
                        else:
                            self.publishFailed += 1
                timeout = 0

    def publishLoad(self, rate: float, duration: float, presentities: int) -> float:
        """
        PUBLISH at C{rate} a second for C{duration} seconds.

        @return: the achieved sending rate.
        """
        began = time.monotonic()
        count = 0
        while True:
            now = time.monotonic()
            if now - began >= duration:
                break
            due = int((now - began) * rate) + 1
            while count < due:
                note = "n%d" % (count,)
                aor = "sip:lat%d@example.test" % (random.randrange(presentities),)
                request = self._request(
                    "PUBLISH", aor, self.publisher, aor, body=(PIDF_NOTE % (aor, note)).encode(),
                    Event="presence", Expires="600", Content_Type="application/pidf+xml",
                )
                self.sentAt[note] = time.monotonic()
                self.publisher.sendto(request.toBytes(), self.front)
                count += 1
            self.pump(0.001)
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            self.pump(0.2)
        return count / duration


def percentilesMs(values: Sequence[float]) -> Dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return round(1000.0 * ordered[min(n - 1, int(q * n))], 2)

    return {"n": n, "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(1000.0 * ordered[-1], 2)}


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.root = tempfile.mkdtemp(prefix="cluster-bench-")
        self.results: List[Dict[str, Any]] = []

    def rates(self, workload: str) -> List[float]:
        if self.options.rates:
            return [float(r) for r in self.options.rates.split(",") if r]
        return [float(r) for r in DEFAULT_RATES[workload]]

    def sippStep(self, mode: str, workload: str, rate: float) -> Dict[str, Any]:
        tag = "%s-%s-%d" % (mode, workload, rate)
        deployment = Deployment(mode, self.root, self.options, tag)
        sipp: Optional[SippRun] = None
        try:
            deployment.start()
            duration = self.options.duration
            sipp = SippRun(
                "%s.xml" % (workload,), deployment.front, rate, int(rate * duration),
                timeout=duration * 2 + 20, service="%s%s%dx" % (mode[:2], workload[:3], rate),
                limit=max(200, int(rate * 3)),
            )
            load = loadAverage()
            meters = deployment.cpuMeters()
            drops = udpDrops(deployment.udpAddresses())
            sipp.start()
            sipp.wait()
            cpu = [meter.stop() for meter in meters]
            after = udpDrops(deployment.udpAddresses())
            summary = sipp.summary()
        finally:
            if sipp is not None:
                sipp.cleanup()
            deployment.stop()
        result: Dict[str, Any] = {"mode": mode, "workload": workload, "rate": rate, "loadAverageBefore": load}
        result.update(summary)
        result["processCpuPercent"] = [c["cpuPercent"] for c in cpu]
        result["hostBusyPercent"] = cpu[0]["hostBusyPercent"] if cpu else None
        result["udpDrops"] = {key: after.get(key, 0) - drops.get(key, 0) for key in after}
        result["udpReceiveBuffer"] = deployment.receiveBuffers()
        failed = summary.get("failedPercent")
        result["passed"] = bool(
            summary.get("calls") and failed is not None and failed < 1.0 and summary["achievedRate"] >= 0.9 * rate
        )
        return result

    def latencyRun(self, mode: str) -> Dict[str, Any]:
        options = self.options
        deployment = Deployment(mode, self.root, options, "%s-latency" % (mode,))
        driver: Optional[LatencyDriver] = None
        try:
            deployment.start()
            driver = LatencyDriver(deployment.front)
            driver.subscribeAll(options.watchers, options.presentities)
            driver.pump(1.0)
            driver.latencies = []
            driver.notifies = 0
            meters = deployment.cpuMeters()
            drops = udpDrops(deployment.udpAddresses())
            began = time.monotonic()
            achieved = driver.publishLoad(options.publish_rate, options.duration, options.presentities)
            elapsed = time.monotonic() - began
            cpu = [meter.stop() for meter in meters]
            after = udpDrops(deployment.udpAddresses())
            expected = driver.published * options.watchers / options.presentities
            return {
                "mode": mode,
                "workload": "latency",
                "watchers": options.watchers,
                "presentities": options.presentities,
                "subscribed": driver.subscribed,
                "publishRate": options.publish_rate,
                "publishRateSent": round(achieved, 1),
                "published": driver.published,
                "publishFailed": driver.publishFailed,
                "notifiesTimed": len(driver.latencies),
                "notifiesExpected": int(expected),
                "notifyRate": round(len(driver.latencies) / elapsed, 1),
                "latencyMs": percentilesMs(driver.latencies),
                "processCpuPercent": [c["cpuPercent"] for c in cpu],
                "hostBusyPercent": cpu[0]["hostBusyPercent"] if cpu else None,
                "udpDrops": {key: after.get(key, 0) - drops.get(key, 0) for key in after},
                "udpReceiveBuffer": deployment.receiveBuffers(),
            }
        finally:
            if driver is not None:
                driver.close()
            deployment.stop()

    def run(self) -> None:
        options = self.options
        for workload in options.workloads.split(","):
            for mode in options.modes.split(","):
                if workload == "latency":
                    log("%s latency: %d watchers on %d presentities, %s PUBLISH/s" % (
                        mode, options.watchers, options.presentities, options.publish_rate))
                    result = self.latencyRun(mode)
                    self.results.append(result)
                    log("  -> %s, cpu %s, udp drops %s" % (
                        json.dumps(result["latencyMs"]), result["processCpuPercent"], result["udpDrops"]))
                    continue
                for rate in self.rates(workload):
                    log("%s %s at %s/s" % (mode, workload, rate))
                    result = self.sippStep(mode, workload, rate)
                    self.results.append(result)
                    log("  -> achieved %s/s, failed %s%%, rtd1 %s, cpu %s, udp drops %s, %s" % (
                        result.get("achievedRate"), result.get("failedPercent"), result.get("rtd1"),
                        result.get("processCpuPercent"), result.get("udpDrops"),
                        "passed" if result["passed"] else "FAILED"))
                    if not result["passed"] and not options.keep_going:
                        break

    def report(self) -> Dict[str, Any]:
        best: Dict[str, Dict[str, Any]] = {}
        for r in self.results:
            if r["workload"] in ("subscribe", "publish") and r["passed"]:
                key = "%s/%s" % (r["workload"], r["mode"])
                if key not in best or r["rate"] > best[key]["rate"]:
                    best[key] = {"rate": r["rate"], "achievedRate": r["achievedRate"], "rtd1": r.get("rtd1")}
        return {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "tree": treeState(),
            "options": vars(self.options),
            "udpReceiveBufferAsked": (
                PRODUCT_RCVBUF if self.options.udp_rcvbuf is None else self.options.udp_rcvbuf
            ),
            "bestPassing": best,
            "results": self.results,
        }

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="subscribe,publish,latency")
    parser.add_argument("--modes", default="single,cluster")
    parser.add_argument("--rates", default="", help="comma-separated sipp rates (default per workload)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--policy", default="round_robin", choices=["round_robin", "least_loaded", "hash"])
    parser.add_argument("--watchers", type=int, default=300)
    parser.add_argument("--presentities", type=int, default=100)
    parser.add_argument("--publish-rate", type=float, default=100.0)
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument(
        "--udp-rcvbuf", type=bufferSize, default=None, metavar="BYTES",
        help="every server's [sip] udp_receive_buffer, in bytes; 0: the kernel's default "
        "(default: the product's, %d)" % (PRODUCT_RCVBUF,),
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", default="")
    options = parser.parse_args(argv)
    problem = postgresAvailable(options.pg_url)
    if problem is not None:
        raise SystemExit("PostgreSQL is needed: " + problem)
    stopOnSignals()
    bench = Bench(options)
    try:
        bench.run()
    finally:
        bench.cleanup()
    report = bench.report()
    text = json.dumps(report, indent=2, sort_keys=True)
    if options.json:
        with open(options.json, "w") as f:
            f.write(text)
    print(json.dumps(report["bestPassing"], indent=2, sort_keys=True))
    for r in report["results"]:
        if r["workload"] == "latency":
            print("%-8s latency: %s, %s NOTIFY/s timed of %s expected" % (
                r["mode"], r["latencyMs"], r["notifyRate"], r["notifiesExpected"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
