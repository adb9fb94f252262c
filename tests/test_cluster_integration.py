"""
A cluster of real processes on loopback, sharing one PostgreSQL schema
(created and dropped by each test): a dispatcher and three managers
linked by Perspective Broker.

Layout::

    127.0.0.1  the user agents (one UDP socket playing them all, and a
               TCP connection of their own for those that use TCP)
    127.0.0.2  the dispatcher (round robin), on UDP and TCP
    127.0.0.3  manager m1 \\
    127.0.0.4  manager m2  } SIP over UDP (and TCP when the dispatcher
    127.0.0.5  manager m3 /  reaches them over TCP), PB on a TCP port

What they show: a publisher on one manager and watchers on the two
others are all notified; a manager killed with SIGKILL under load loses
no acknowledged subscription, its watchers are notified after the next
publication (by the manager that adopted them, CSeq still increasing);
restarted, it rejoins the cluster and catches up.  A manager whose PB
links are cut (they go through L{Relay}s the test controls) but which
keeps the database and the dispatcher keeps its lease: its watchers are
not adopted, and get one NOTIFY per publication, from it alone.
Adoption works across transports: a watcher over its own TCP connection
to the dispatcher is notified by the adopter over that same connection,
and so is one over UDP when the dispatcher reaches the managers over
TCP.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import sqlalchemy as sa

from presence.sip.headers import NameAddr
from presence.sip.message import Request, Response
from presence.sip.parser import StreamFramer, parseMessage
from presence.sip.uri import SipURI
from tests.conftest import postgresSchema, skipOrFail
from tests.serverprocess import ServerProcess
from tests.sipclient import answer, newRequest

DISPATCHER = "127.0.0.2"
MANAGERS = {"m1": "127.0.0.3", "m2": "127.0.0.4", "m3": "127.0.0.5"}
NAMES = sorted(MANAGERS)

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="t1"><status><basic>%s</basic></status><note>%s</note></tuple></presence>'
)

SECRETS = "".join("%s %s\n" % (name, os.urandom(16).hex()) for name in NAMES)


def _freePort(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _loopbackUsable() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((DISPATCHER, 0))
        return True
    except OSError:
        return False


@pytest.fixture
def database() -> Iterator[str]:
    with postgresSchema("cluster") as url:
        yield url


class Relay:
    """
    A TCP relay on 127.0.0.1 run by a thread of the test: one manager's
    PB link to one peer goes through it, so that the test can cut it
    (every connection closed, new ones closed at once) and heal it.
    """

    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._drop = threading.Event()
        self._dropped = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if self._drop.is_set():
                self._closeAll()
                self._drop.clear()
                self._dropped.set()
            sockets = [self.listener] + [s for pair in self._pairs for s in pair]
            readable = select.select(sockets, [], [], 0.05)[0]
            for s in readable:
                if s is self.listener:
                    self._accept()
                    continue
                pair = next((p for p in self._pairs if s in p), None)
                if pair is None:
                    continue
                other = pair[1] if s is pair[0] else pair[0]
                try:
                    data = s.recv(65536)
                    if data:
                        other.sendall(data)
                except OSError:
                    data = b""
                if not data:
                    self._close(pair)
        self._closeAll()
        self.listener.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        if not self.open:
            conn.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            conn.close()
            return
        self._pairs.append((conn, upstream))

    def _close(self, pair: Tuple[socket.socket, socket.socket]) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
        for s in pair:
            s.close()

    def _closeAll(self) -> None:
        for pair in list(self._pairs):
            self._close(pair)

    def cut(self) -> None:
        """
        Close every connection through the relay, and each new one.
        """
        self.open = False
        self._dropped.clear()
        self._drop.set()
        assert self._dropped.wait(5), "the relay did not cut its connections"

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)


class Cluster:
    """
    The processes, and how to (re)start a manager on the same ports.

    @ivar relays: C{(manager, peer)} to the L{Relay} the manager's link
        to that peer goes through, when the cluster was built with them.
    """

    def __init__(self, workdir: str, database: str, relays: bool = False, transport: str = "udp") -> None:
        """
        @param transport: how the dispatcher reaches the managers,
            C{"udp"} or C{"tcp"} (its C{[dispatcher] managers} entries).
        """
        self.workdir = workdir
        self.database = database
        self.transport = transport
        self.managers: Dict[str, ServerProcess] = {}
        self.sipPorts: Dict[str, int] = {}
        self.pbPorts = {name: _freePort(MANAGERS[name]) for name in NAMES}
        self.relays: Dict[Tuple[str, str], Relay] = {}
        if relays:
            for name in NAMES:
                for peer in NAMES:
                    if peer != name:
                        self.relays[(name, peer)] = Relay((MANAGERS[peer], self.pbPorts[peer]))
        self.dispatcher: Optional[ServerProcess] = None
        self.secretFile = os.path.join(workdir, "cluster-secrets")
        with open(self.secretFile, "w") as f:
            f.write(SECRETS)
        os.chmod(self.secretFile, 0o600)
        # The dispatcher's secret: it signs its routes, and its notices of
        # closed connections, which the managers check.
        self.routeSecret = os.path.join(workdir, "route-secret")
        with open(self.routeSecret, "w") as f:
            f.write("cluster integration route secret\n")
        os.chmod(self.routeSecret, 0o600)

    def startManager(self, name: str) -> ServerProcess:
        host = MANAGERS[name]
        config = os.path.join(self.workdir, name + ".ini")
        peers = " ".join(
            "%s=tcp:127.0.0.1:%d" % (n, self.relays[(name, n)].port)
            if (name, n) in self.relays
            else "%s=tcp:%s:%d" % (n, MANAGERS[n], self.pbPorts[n])
            for n in NAMES
        )
        with open(config, "w") as f:
            # These user agents do not authenticate: example.test is
            # trusted here (authentication is billing's test).
            f.write(
                "[manager]\nnode = %s\nnotify_min_interval = 0\n"
                "[billing]\nno_auth_domains = example.test\n"
                "[cluster]\nlisten = tcp:%d:interface=%s\npeers = %s\nsecret_file = %s\n"
                "adopt_after = 2\nping_interval = 0.5\nretry_delay = 0.2\n"
                "lease_time = 3\nlease_interval = 0.5\n[control]\nsocket = %s\n"
                "[dispatcher]\nsecret_file = %s\n"
                % (name, self.pbPorts[name], host, peers, self.secretFile, self.controlSocket(name), self.routeSecret)
            )
        port = self.sipPorts.get(name, 0)
        listen = ["--listen", "udp:%d:interface=%s" % (port, host)]
        if self.transport == "tcp":
            # Port 0 takes the UDP port for TCP too.
            listen += ["--listen", "tcp:%d:interface=%s" % (port, host)]
        process = ServerProcess(
            self.workdir,
            [
                "--role=manager",
                "--config", config,
                "--database", self.database,
            ] + listen + [
                "--advertise", host,
                "--domain", "example.test",
            ],
        ).start("Cluster node %s listening" % (name,))
        self.managers[name] = process
        self.sipPorts[name] = process.ports["UDP"]
        return process

    def startDispatcher(self, listen: Sequence[str] = (), policy: str = "round_robin") -> ServerProcess:
        """
        @param listen: more listen specs, beside UDP and TCP.
        @param policy: its C{[dispatcher] policy}.
        """
        config = os.path.join(self.workdir, "dispatcher.ini")
        managers = " ".join(
            "%s=%s:%s:%d" % (n, self.transport, MANAGERS[n], self.sipPorts[n]) for n in NAMES
        )
        with open(config, "w") as f:
            f.write(
                "[dispatcher]\nmanagers = %s\npolicy = %s\nping_interval = 0.5\n"
                "dead_after = 1.5\nsecret_file = %s\n[control]\nsocket = %s\n"
                % (managers, policy, self.routeSecret, self.controlSocket("dispatcher"))
            )
        process = ServerProcess(
            self.workdir,
            ["--role=dispatcher", "--config", config, "--listen", "udp:0:interface=" + DISPATCHER,
             "--listen", "tcp:0:interface=" + DISPATCHER, "--advertise", DISPATCHER]
            + [arg for spec in listen for arg in ("--listen", spec)],
        ).start("Dispatcher ready")
        for name in NAMES:
            process.waitFor("Manager %s is up" % (name,))
        self.dispatcher = process
        return process

    def controlSocket(self, name: str) -> str:
        """
        The control channel of process C{name} (a manager, or
        C{"dispatcher"}), for C{presence-admin live}.
        """
        return os.path.join(self.workdir, name + ".control")

    def owners(self) -> Dict[Tuple[str, str], str]:
        """
        (Call-ID, our tag) of every stored subscription, to its owner.
        """
        engine = sa.create_engine(self.database)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT call_id, local_tag, owner FROM subscriptions"))
                return {(row[0], row[1]): row[2] for row in rows}
        finally:
            engine.dispose()

    def kill(self, name: str) -> None:
        """
        SIGKILL manager C{name}.
        """
        process = self.managers.pop(name)
        assert process.stop(signal.SIGKILL) == -signal.SIGKILL

    def isolate(self, name: str) -> None:
        """
        Cut every PB link of manager C{name}, both ways; it keeps the
        database and the dispatcher.
        """
        for (first, second), relay in self.relays.items():
            if name in (first, second):
                relay.cut()

    def heal(self) -> None:
        for relay in self.relays.values():
            relay.heal()

    def stop(self) -> List[str]:
        problems = []
        for relay in self.relays.values():
            relay.close()
        processes = ([self.dispatcher] if self.dispatcher else []) + list(self.managers.values())
        for process in processes:
            try:
                process.stopCleanly()
            except AssertionError as e:
                problems.append(str(e)[-3000:])
        return problems


def _startCluster(
    tmp_path: Any,
    database: str,
    relays: bool = False,
    transport: str = "udp",
    listen: Sequence[str] = (),
    policy: str = "round_robin",
) -> Iterator[Cluster]:
    if not _loopbackUsable():
        skipOrFail("cannot bind 127.0.0.2: the loopback interface does not answer for 127/8")
    cluster = Cluster(str(tmp_path), database, relays, transport)
    try:
        for name in NAMES:
            cluster.startManager(name)
        for name in NAMES:
            for peer in NAMES:
                if peer != name:
                    cluster.managers[name].waitFor("Resynchronised from %s" % (peer,))
        cluster.startDispatcher(listen, policy)
        yield cluster
    finally:
        problems = cluster.stop()
        assert not problems, problems


@pytest.fixture
def cluster(tmp_path, database):
    yield from _startCluster(tmp_path, database)


@pytest.fixture
def relayedCluster(tmp_path, database):
    yield from _startCluster(tmp_path, database, relays=True)


@pytest.fixture
def transportCluster(request, tmp_path, database):
    """
    A cluster whose dispatcher reaches the managers over
    C{request.param} (C{"udp"} or C{"tcp"}).
    """
    yield from _startCluster(tmp_path, database, transport=request.param)


Dialog = Tuple[str, str]


class Agents:
    """
    One UDP socket on 127.0.0.1 playing any number of user agents: it
    sends requests, answers every NOTIFY 200 at once, and files what
    comes back by dialog.

    @ivar ok: Call-ID to the 200 that answered its SUBSCRIBE or PUBLISH.
    @ivar notifies: dialog (Call-ID, the manager's tag) to the NOTIFYs
        received, one per CSeq.
    """

    def __init__(self, dispatcherPort: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.sock.getsockname()[1]
        self.dispatcher = (DISPATCHER, dispatcherPort)
        self.requests: Dict[str, Request] = {}
        self.ok: Dict[str, Response] = {}
        self.failed: Dict[str, int] = {}
        self.answers: Dict[Tuple[str, int], int] = {}
        self.notifies: Dict[Dialog, Dict[int, Request]] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, request: Request, to: Optional[Tuple[str, int]] = None) -> None:
        self.requests[request.callId or ""] = request
        self.sock.sendto(request.toBytes(), to or self.dispatcher)

    def subscribe(self, presentity: str, watcher: str, to: Optional[Tuple[str, int]] = None) -> str:
        request = newRequest(
            "SUBSCRIBE", presentity, self.port, Event="presence", Expires="600",
            Accept="application/pidf+xml", fromURI=watcher,
        )
        self.send(request, to)
        return request.callId or ""

    def refresh(self, callId: str, cseq: int) -> None:
        """
        Refresh the subscription C{callId} in its dialog, as a user agent
        does: to the 200's Contact, along its Record-Route.
        """
        subscribe, ok = self.requests[callId], self.ok[callId]
        request = newRequest(
            "SUBSCRIBE", NameAddr.fromString(ok.header("contact") or "").uri, self.port,
            Event="presence", Expires="600", fromURI=subscribe.fromAddr().uri,
        )
        request.setHeader("Call-ID", callId)
        request.setHeader("From", subscribe.header("from") or "")
        request.setHeader("To", ok.header("to") or "")
        request.setHeader("CSeq", "%d SUBSCRIBE" % (cseq,))
        for value in ok.headerValues("record-route"):
            request.addHeader("Route", value)
        self.sock.sendto(request.toBytes(), self.dispatcher)

    def publish(self, presentity: str, basic: str, note: str, to: Optional[Tuple[str, int]] = None) -> str:
        request = newRequest(
            "PUBLISH", presentity, self.port, body=(PIDF % (presentity, basic, note)).encode(),
            Event="presence", Expires="600", Content_Type="application/pidf+xml", fromURI=presentity,
        )
        self.send(request, to)
        return request.callId or ""

    def pump(self, timeout: float) -> int:
        """
        Handle what arrives until nothing has for C{timeout} seconds.
        """
        count = 0
        while select.select([self.sock], [], [], timeout)[0]:
            data, source = self.sock.recvfrom(65535)
            count += 1
            message = parseMessage(data)
            if isinstance(message, Request):
                self.sock.sendto(answer(message).toBytes(), source)
                if message.method == "NOTIFY":
                    key = (message.callId or "", message.fromAddr().tag or "")
                    self.notifies.setdefault(key, {})[message.cseq().number] = message
            elif message.callId in self.requests and message.code >= 200:
                number = message.cseq().number
                self.answers[(message.callId or "", number)] = message.code
                if number != 1:
                    continue
                if message.code == 200:
                    self.ok[message.callId or ""] = message
                else:
                    self.failed[message.callId or ""] = message.code
        return count

    def waitUntil(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for " + what)
            self.pump(0.05)

    def dialogOf(self, callId: str) -> Dialog:
        return (callId, self.ok[callId].toAddr().tag or "")

    def managerOf(self, callId: str) -> str:
        route = self.ok[callId].header("record-route") or ""
        return SipURI.fromString(NameAddr.fromString(route).uri).params["m"] or ""

    def latest(self, dialog: Dialog) -> Optional[Request]:
        sent = self.notifies.get(dialog, {})
        return sent[max(sent)] if sent else None

    def withNote(self, dialog: Dialog, note: str) -> List[Request]:
        return [n for n in self.notifies.get(dialog, {}).values() if note.encode() in (n.body or b"")]


def test_publisherOnOneManagerWatchersOnTheOtherTwo(cluster):
    """
    Two watchers subscribe through the round-robin dispatcher and land on
    two managers; the presentity publishes straight to the third: both
    watchers are notified, through the dispatcher.
    """
    agents = Agents(cluster.dispatcher.ports["UDP"])
    try:
        presentity = "sip:carol@example.test"
        first = agents.subscribe(presentity, "sip:w1@example.test")
        second = agents.subscribe(presentity, "sip:w2@example.test")
        agents.waitUntil(lambda: first in agents.ok and second in agents.ok, 10, "both 200s")
        homes = {agents.managerOf(first), agents.managerOf(second)}
        assert len(homes) == 2, homes
        [third] = sorted(set(NAMES) - homes)
        dialogs = [agents.dialogOf(first), agents.dialogOf(second)]
        agents.waitUntil(lambda: all(agents.latest(d) is not None for d in dialogs), 10, "initial NOTIFYs")
        published = agents.publish(presentity, "open", "hello-from-" + third, (MANAGERS[third], cluster.sipPorts[third]))
        agents.waitUntil(lambda: published in agents.ok, 10, "PUBLISH 200")
        agents.waitUntil(
            lambda: all(agents.withNote(d, "hello-from-" + third) for d in dialogs), 10, "NOTIFYs of the publication"
        )
        for dialog in dialogs:
            [notify] = agents.withNote(dialog, "hello-from-" + third)
            assert notify.topVia().host == DISPATCHER
            assert b"<basic>open</basic>" in notify.body
    finally:
        agents.close()


def test_killedManagerAdoptedAndRestartedCatchesUp(cluster):
    """
    Watchers subscribe through the dispatcher while one manager is killed
    with SIGKILL.  Every subscription answered 200 is stored and adopted
    by a survivor; after the next publication every one of their watchers
    is notified, with a CSeq above any it saw.  The killed manager,
    restarted, rejoins, catches up and notifies no adopted watcher twice.
    """
    agents = Agents(cluster.dispatcher.ports["UDP"])
    victim = "m2"
    presentities = ["sip:p%d@example.test" % (i,) for i in range(5)]
    try:
        sent = 0

        def batch() -> None:
            nonlocal sent
            for _ in range(25):
                agents.subscribe(presentities[sent % 5], "sip:w%d@example.test" % (sent,))
                sent += 1
            agents.pump(0.02)

        def victimAnswered() -> int:
            return len([c for c in agents.ok if agents.managerOf(c) == victim])

        # Load: SUBSCRIBEs in batches; the victim dies with a batch in
        # flight once it has answered 40, and the load goes on.
        deadline = time.monotonic() + 30
        while victimAnswered() < 40:
            assert time.monotonic() < deadline, "the victim answered %d" % (victimAnswered(),)
            batch()
        batch()
        cluster.kill(victim)
        for _ in range(4):
            batch()
        agents.pump(3.0)
        acknowledged = [callId for callId in agents.ok if agents.requests[callId].method == "SUBSCRIBE"]
        assert len(acknowledged) >= 150, (len(acknowledged), agents.failed)
        dialogs = {callId: agents.dialogOf(callId) for callId in acknowledged}
        onVictim = [callId for callId in acknowledged if agents.managerOf(callId) == victim]
        assert len(onVictim) >= 30, len(onVictim)

        # Nothing acknowledged is lost, and the victim's are adopted.
        cluster.dispatcher.waitFor("Manager %s is down" % (victim,))
        deadline = time.monotonic() + 15
        while True:
            owners = cluster.owners()
            stillVictims = [d for d in dialogs.values() if owners.get(d) == victim]
            if not stillVictims:
                break
            assert time.monotonic() < deadline, "%d subscriptions not adopted" % (len(stillVictims),)
            agents.pump(0.2)
        missing = [d for d in dialogs.values() if d not in owners]
        assert not missing, "%d acknowledged subscriptions lost" % (len(missing),)
        agents.pump(0.5)
        before = {callId: max(agents.notifies.get(dialogs[callId], {0: None})) for callId in acknowledged}

        # The next publication reaches every watcher, the victim's included.
        for presentity in presentities:
            agents.publish(presentity, "open", "after-kill")
        agents.waitUntil(
            lambda: all(agents.withNote(dialogs[c], "after-kill") for c in acknowledged),
            20,
            "every watcher notified after the kill",
        )
        for callId in acknowledged:
            [notify] = agents.withNote(dialogs[callId], "after-kill")
            assert notify.cseq().number > before[callId], callId
            assert notify.topVia().host == DISPATCHER

        # The victim's dialogs are refreshed through the dispatcher, which
        # sends them to any live manager: the adopter serves them, or has
        # them handed over to whichever got them.
        refreshed = onVictim[:10]
        for callId in refreshed:
            agents.refresh(callId, 2)
        agents.waitUntil(lambda: all((c, 2) in agents.answers for c in refreshed), 10, "refreshes answered")
        assert [agents.answers[(c, 2)] for c in refreshed] == [200] * len(refreshed)

        # Restarted, the victim rejoins and catches up.
        start = len(cluster.dispatcher.output)
        restarted = cluster.startManager(victim)
        for peer in NAMES:
            if peer != victim:
                restarted.waitFor("Resynchronised from %s" % (peer,))
        assert "Loaded 0 subscriptions" in restarted.log()
        _waitAfter(cluster.dispatcher, "Manager %s is up" % (victim,), start)
        direct = (MANAGERS[victim], cluster.sipPorts[victim])
        fresh = agents.subscribe(presentities[0], "sip:fresh@example.test", direct)
        agents.waitUntil(lambda: fresh in agents.ok, 10, "direct SUBSCRIBE to the restarted manager")
        freshDialog = agents.dialogOf(fresh)
        agents.waitUntil(lambda: bool(agents.withNote(freshDialog, "after-kill")), 10, "its state")

        # The dispatcher sends the victim its old dialogs again, now owned
        # by a survivor: it has them handed over and serves them.
        for callId in refreshed:
            agents.refresh(callId, 3)
        agents.waitUntil(lambda: all((c, 3) in agents.answers for c in refreshed), 10, "refreshes answered")
        assert [agents.answers[(c, 3)] for c in refreshed] == [200] * len(refreshed)
        owners = cluster.owners()
        assert set(owners[dialogs[c]] for c in refreshed) == {victim}

        # One more publication on another manager: everyone notified once.
        for presentity in presentities:
            agents.publish(presentity, "closed", "after-restart", (MANAGERS["m1"], cluster.sipPorts["m1"]))
        everyone = list(dialogs.values()) + [freshDialog]
        agents.waitUntil(lambda: all(agents.withNote(d, "after-restart") for d in everyone), 20, "last NOTIFYs")
        agents.pump(1.0)
        for dialog in everyone:
            assert len(agents.withNote(dialog, "after-restart")) == 1, dialog
    finally:
        agents.close()


def _waitAfter(process: ServerProcess, text: str, start: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    with process._changed:
        while True:
            for line in process.output[start:]:
                if text in line:
                    return line
            if process._eof:
                raise AssertionError("process exited before %r:\n%s" % (text, process.log()))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for %r:\n%s" % (text, process.log()))
            process._changed.wait(remaining)


def test_partitionedManagerKeepsItsWatchers(relayedCluster):
    """
    m2's PB links are cut both ways while it keeps the database and the
    dispatcher.  m1 and m3 (a quorum) find its lease live and do not
    adopt its watchers; a publication m2 takes reaches each of them
    exactly once, from m2.  Healed, the cluster resynchronises and the
    next publication, taken by m1, again reaches every watcher once.
    """
    cluster = relayedCluster
    victim = "m2"
    agents = Agents(cluster.dispatcher.ports["UDP"])
    presentity = "sip:dana@example.test"
    try:
        calls = [agents.subscribe(presentity, "sip:w%d@example.test" % (i,)) for i in range(6)]
        agents.waitUntil(lambda: all(c in agents.ok for c in calls), 10, "every 200")
        dialogs = {c: agents.dialogOf(c) for c in calls}
        agents.waitUntil(lambda: all(agents.latest(d) is not None for d in dialogs.values()), 10, "initial NOTIFYs")
        onVictim = [c for c in calls if agents.managerOf(c) == victim]
        assert onVictim, [agents.managerOf(c) for c in calls]

        starts = {name: len(process.output) for name, process in cluster.managers.items()}
        cluster.isolate(victim)
        for name in NAMES:
            if name != victim:
                _waitAfter(cluster.managers[name], "Cluster peer %s is down" % (victim,), starts[name])
                # adopt_after (2s), then the lease is found live.
                _waitAfter(
                    cluster.managers[name], "Not adopting the subscriptions of %s: unreachable, but its lease is live"
                    % (victim,), starts[name],
                )
        # Past a second attempt of each survivor.
        agents.pump(4.0)
        owners = cluster.owners()
        assert all(owners[dialogs[c]] == victim for c in onVictim), owners
        victimLog = "\n".join(cluster.managers[victim].output[starts[victim]:])
        assert "NOTIFYs held back" not in victimLog, victimLog

        direct = (MANAGERS[victim], cluster.sipPorts[victim])
        published = agents.publish(presentity, "open", "while-partitioned", direct)
        agents.waitUntil(lambda: published in agents.ok, 10, "PUBLISH 200 at the partitioned manager")
        agents.waitUntil(
            lambda: all(agents.withNote(dialogs[c], "while-partitioned") for c in onVictim), 10,
            "its watchers notified",
        )
        agents.pump(1.0)
        for callId in onVictim:
            assert len(agents.withNote(dialogs[callId], "while-partitioned")) == 1, callId

        start = len(cluster.managers["m1"].output)
        cluster.heal()
        _waitAfter(cluster.managers["m1"], "Resynchronised from %s" % (victim,), start, 15.0)
        published = agents.publish(presentity, "closed", "after-heal", (MANAGERS["m1"], cluster.sipPorts["m1"]))
        agents.waitUntil(lambda: published in agents.ok, 10, "PUBLISH 200 at m1")
        agents.waitUntil(
            lambda: all(agents.withNote(d, "after-heal") for d in dialogs.values()), 15, "every watcher notified"
        )
        agents.pump(1.0)
        for callId, dialog in dialogs.items():
            assert len(agents.withNote(dialog, "after-heal")) == 1, callId
            # One manager notified each watcher, all along.
            contacts = set(n.header("contact") for n in agents.notifies[dialog].values())
            assert len(contacts) == 1, (callId, contacts)
        owners = cluster.owners()
        assert all(owners[dialogs[c]] == victim for c in onVictim), owners
    finally:
        agents.close()


class TCPWatcher:
    """
    One user agent with its own TCP connection from 127.0.0.1 to the
    dispatcher: it subscribes over it, answers every NOTIFY that comes
    down it 200, and files them by CSeq.  The connection is never
    re-opened: a NOTIFY that arrives came over the flow the SUBSCRIBE
    created.
    """

    def __init__(self, dispatcherPort: int) -> None:
        self.sock = socket.create_connection((DISPATCHER, dispatcherPort), timeout=5, source_address=("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.closed = False
        self.ok: Optional[Response] = None
        self.notifies: Dict[int, Request] = {}

    def close(self) -> None:
        self.sock.close()

    def subscribe(self, presentity: str, watcher: str) -> Request:
        request = newRequest(
            "SUBSCRIBE", presentity, self.port, transport="TCP", Event="presence", Expires="600",
            Accept="application/pidf+xml", fromURI=watcher,
        )
        self.sock.sendall(request.toBytes())
        return request

    def pump(self, timeout: float) -> None:
        """
        Handle what arrives until nothing has for C{timeout} seconds.
        """
        while not self.closed and select.select([self.sock], [], [], timeout)[0]:
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                return
            for item in self.framer.dataReceived(data):
                if not isinstance(item, bytes):
                    continue  # a keep-alive
                message = parseMessage(item, stream=True)
                if isinstance(message, Request):
                    self.sock.sendall(answer(message).toBytes())
                    if message.method == "NOTIFY":
                        self.notifies[message.cseq().number] = message
                elif message.code >= 200 and message.cseq().method == "SUBSCRIBE":
                    self.ok = message

    def waitUntil(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert not self.closed, "the dispatcher closed the watcher's connection"
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for " + what)
            self.pump(0.05)

    def withNote(self, note: str) -> List[Request]:
        return [n for n in self.notifies.values() if note.encode() in (n.body or b"")]


@pytest.mark.parametrize(
    "transportCluster,watcherTransport",
    [("udp", "tcp"), ("tcp", "udp"), ("tcp", "tcp")],
    indirect=["transportCluster"],
)
def test_adoptionAcrossTransports(transportCluster, watcherTransport):
    """
    A watcher subscribes through the dispatcher over C{watcherTransport}
    (TCP: a connection of its own), the dispatcher reaching the managers
    over the other transport (or TCP too); its manager is killed with
    SIGKILL.  A survivor adopts the subscription once the lease has run
    out and notifies the watcher over the same flow (the same TCP
    connection), CSeq above any it saw; so does the NOTIFY of the next
    publication, with its state.
    """
    cluster = transportCluster
    agents = Agents(cluster.dispatcher.ports["UDP"])
    tcp: Optional[TCPWatcher] = None
    presentity = "sip:erin@example.test"
    watcher = "sip:tw@example.test"
    try:
        if watcherTransport == "tcp":
            tcp = TCPWatcher(cluster.dispatcher.ports["TCP"])
            request = tcp.subscribe(presentity, watcher)
            callId = request.callId or ""
            tcp.waitUntil(lambda: tcp.ok is not None and bool(tcp.notifies), 10, "200 and the first NOTIFY")
            ok = tcp.ok
            assert ok is not None and ok.code == 200, ok
            notifies = tcp.notifies
        else:
            callId = agents.subscribe(presentity, watcher)
            agents.waitUntil(lambda: callId in agents.ok, 10, "200")
            ok = agents.ok[callId]
            dialog = agents.dialogOf(callId)
            agents.waitUntil(lambda: agents.latest(dialog) is not None, 10, "the first NOTIFY")
            notifies = agents.notifies[dialog]
        route = NameAddr.fromString(ok.header("record-route") or "").uri
        params = SipURI.fromString(route).params
        assert params["t"] == watcherTransport, route
        victim = params["m"] or ""
        dialogKey = (callId, ok.toAddr().tag or "")
        first = max(notifies)

        def pump(timeout: float) -> None:
            agents.pump(timeout)
            if tcp is not None:
                tcp.pump(timeout)

        cluster.kill(victim)
        deadline = time.monotonic() + 15
        while cluster.owners().get(dialogKey) == victim:
            assert time.monotonic() < deadline, "the subscription was not adopted"
            pump(0.2)
        adopter = cluster.owners().get(dialogKey)
        assert adopter in NAMES and adopter != victim, "the subscription was lost (%s)" % (adopter,)

        def notified(after: int, note: str = "") -> bool:
            pump(0.05)
            return any(cseq > after and note.encode() in (n.body or b"") for cseq, n in notifies.items())

        # The adopter's NOTIFY of the current state (adopt_notify_rate).
        deadline = time.monotonic() + 10
        while not notified(first):
            assert time.monotonic() < deadline, "no NOTIFY from the adopter"
        adopted = max(notifies)
        assert notifies[adopted].header("contact") != notifies[first].header("contact")

        published = agents.publish(presentity, "open", "after-adoption")
        agents.waitUntil(lambda: published in agents.ok, 10, "PUBLISH 200")
        deadline = time.monotonic() + 10
        while not notified(adopted, "after-adoption"):
            assert time.monotonic() < deadline, "no NOTIFY of the publication"
        [notify] = [n for n in notifies.values() if b"after-adoption" in (n.body or b"")]
        assert notify.cseq().number > adopted > first
        assert b"<basic>open</basic>" in (notify.body or b"")
        via = notify.topVia()
        assert (via.transport.upper(), via.host) == (watcherTransport.upper(), DISPATCHER)
        if tcp is not None:
            assert not tcp.closed
    finally:
        agents.close()
        if tcp is not None:
            tcp.close()
