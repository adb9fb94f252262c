"""
Real clients: two baresip instances (Debian's baresip 1.0.0) against a real
C{twistd -n presence}, over UDP and over TCP.

Each baresip runs headless with only the modules presence needs -- no
audio, no video, no console: C{account} and C{uuid} (loaded, used, then
unloaded), C{contact}, C{presence}, C{menu} (for C{reginfo}) and
C{ctrl_tcp}, through which the test drives it (netstrings of JSON
commands, RFC-less but documented in baresip's modules/ctrl_tcp).  Both
accounts register with digest authentication; alice watches bob (a
C{;presence=p2p} contact); bob goes online and offline with the
C{presence_online} and C{presence_offline} commands (PUBLISH), and alice's
own C{contacts} output must show each change.  Then the same without
publication: bob's registration alone makes him Online, and its end
(un-REGISTER, or over TCP his connection dying with the process) Offline.

Every wait is bounded and waits on something (a line of output, a reply
on the control socket), never a blind sleep.

What baresip's Debian build imposes, found here:
  - libre 1.1's digest knows MD5 only and gives up when any challenge
    names another algorithm, even after an MD5 one: the server's default
    challenges per User-Agent (presence.billing.quirks) offer it MD5
    alone, so it logs in with the shipped C{etc/presence.ini} unchanged.
  - baresip listens for TLS on the SIP port + 1 even without a
    certificate: each instance gets two free ports.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest

from tests.conftest import requireTool
from tests.serverprocess import REPO, ServerProcess, endProcess
from tests.test_billing_integration import presenceAdmin

READY = "Subscription manager"
PASSWORD = "secret"
TIMEOUT = 20.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _freePorts(count: int) -> int:
    """
    A port P such that P .. P+count-1 are free for TCP and UDP on
    127.0.0.1 now (baresip takes UDP and TCP on P, TLS on P+1).
    """
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError("no free ports")


class Baresip:
    """
    One headless baresip process and its control connection.

    @ivar output: what it printed so far.
    @ivar events: the ctrl_tcp events received so far.
    """

    def __init__(self, executable: str, workdir: str, user: str, transport: str, serverPort: int,
                 contacts: List[str], pubint: int = 60, extra: str = "", modules: Sequence[str] = ()) -> None:
        self.executable = executable
        self.user = user
        self.home = os.path.join(workdir, user)
        os.makedirs(self.home, exist_ok=True)
        self.sipPort = _freePorts(2)
        self.ctrlPort = _freePorts(1)
        self.process: Optional[subprocess.Popen] = None
        self.output: List[str] = []
        self.events: List[Dict[str, Any]] = []
        self._changed = threading.Condition()
        self._eof = False
        self._sock: Optional[socket.socket] = None
        self._buffer = b""
        lower = transport.lower()
        with open(os.path.join(self.home, "config"), "w") as f:
            f.write(config(self.sipPort, self.ctrlPort, modules))
        with open(os.path.join(self.home, "accounts"), "w") as f:
            f.write(accountLine(user, lower, serverPort, pubint, extra) + "\n")
        with open(os.path.join(self.home, "contacts"), "w") as f:
            f.write("".join(line + "\n" for line in contacts))

    # The process.

    def start(self) -> Baresip:
        self.process = subprocess.Popen(
            [self.executable, "-f", self.home],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.waitOutput("baresip is ready.")
        self._sock = socket.create_connection(("127.0.0.1", self.ctrlPort), timeout=TIMEOUT)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.output.append(_ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def waitOutput(self, text: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.output:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError("%s: no %r; output:\n%s" % (self.user, text, self.log()))
                self._changed.wait(remaining)

    def log(self) -> str:
        return "\n".join(self.output[-80:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """
        End the process (SIGTERM: baresip un-registers and un-publishes
        first; SIGKILL: it dies at once) and wait for it.
        """
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process is None:
            return
        endProcess(self.process, sig)
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process = None

    # The control connection (modules/ctrl_tcp: netstrings of JSON).

    def command(self, command: str, params: str = "") -> str:
        """
        Run a command; return its output text.  Events that arrive
        meanwhile are kept in L{events}.
        """
        assert self._sock is not None
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._sock.sendall(b"%d:%s," % (len(body), body))
        deadline = time.monotonic() + TIMEOUT
        while True:
            for message in self._messages():
                if message.get("response"):
                    assert message.get("ok"), (command, message)
                    return _ANSI.sub("", message.get("data", ""))
                self.events.append(message)
            if not self._receive(deadline - time.monotonic()):
                raise AssertionError("%s: no answer to %r" % (self.user, command))

    def _receive(self, timeout: float) -> bool:
        """
        Wait up to C{timeout} for control data; whether some came.
        """
        assert self._sock is not None
        if timeout <= 0:
            return False
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if not readable:
            return False
        data = self._sock.recv(65536)
        if not data:
            raise AssertionError("%s closed its control connection:\n%s" % (self.user, self.log()))
        self._buffer += data
        return True

    def _messages(self) -> List[Dict[str, Any]]:
        messages = []
        while b":" in self._buffer:
            length, _, rest = self._buffer.partition(b":")
            size = int(length)
            if len(rest) < size + 1:
                break
            messages.append(json.loads(rest[:size]))
            self._buffer = rest[size + 1:]
        return messages

    def waitUntil(self, command: str, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """
        Run C{command} until its output satisfies C{predicate}; between
        tries, wait for the next control event (or a short while).
        """
        deadline = time.monotonic() + timeout
        while True:
            out = self.command(command)
            if predicate(out):
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("%s: %r never satisfied; last output:\n%s\nlog:\n%s"
                                     % (self.user, command, out, self.log()))
            if self._receive(min(0.2, remaining)):
                for message in self._messages():
                    self.events.append(message)

    def waitEvent(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = TIMEOUT) -> Dict[str, Any]:
        """
        Wait for a ctrl_tcp event (a UA event such as C{MWI_NOTIFY}, with
        its C{param}) satisfying C{predicate}, among those received so far
        or coming.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.events[seen:]:
                if predicate(message):
                    return message
            seen = len(self.events)
            if not self._receive(deadline - time.monotonic()):
                raise AssertionError("%s: no such event among %r\nlog:\n%s" % (self.user, self.events, self.log()))
            self.events.extend(self._messages())

    def registered(self) -> str:
        """
        Wait until reginfo shows the account registered (OK).
        """
        return self.waitUntil("reginfo", lambda out: bool(re.search(r"sip:%s@example.test\s+OK" % (self.user,), out)))

    def statusOf(self, out: str, name: str) -> Optional[str]:
        """
        The presence status a C{contacts} output shows for C{name}.
        """
        for line in out.splitlines():
            if "<sip:%s@example.test>" % (name,) in line:
                words = line.replace(">", " ").split()
                for word in words:
                    if word in ("Online", "Offline", "Busy", "Unknown"):
                        return word
        return None

    def waitStatus(self, name: str, status: str) -> None:
        self.waitUntil("contacts", lambda out: self.statusOf(out, name) == status)


def config(sipPort: int, ctrlPort: int, modules: Sequence[str] = ()) -> str:
    """
    The tested baresip configuration: presence modules only, and the
    application modules named in C{modules} (C{"mwi"}).
    """
    return "".join("module_app\t\t%s.so\n" % (name,) for name in modules) + (
        "poll_method\t\tepoll\n"
        "sip_listen\t\t127.0.0.1:%d\n"
        "module_path\t\t/usr/lib/baresip/modules\n"
        "module_tmp\t\tuuid.so\n"
        "module_tmp\t\taccount.so\n"
        "module_app\t\tcontact.so\n"
        "module_app\t\tmenu.so\n"
        "module_app\t\tpresence.so\n"
        "module_app\t\tctrl_tcp.so\n"
        "ctrl_tcp_listen\t\t127.0.0.1:%d\n" % (sipPort, ctrlPort)
    )


def accountLine(user: str, transport: str, serverPort: int, pubint: int, extra: str = "") -> str:
    """
    The tested baresip account: registration and publication through the
    server as outbound proxy, digest password.
    """
    return '<sip:%s@example.test;transport=%s>;auth_pass=%s;outbound="sip:127.0.0.1:%d;transport=%s";regint=60;pubint=%d%s' % (
        user, transport, PASSWORD, serverPort, transport, pubint, extra
    )


@pytest.fixture
def baresip() -> str:
    return requireTool("baresip")


def _serve(workdir: str, baresip: str, configPath: str) -> Any:
    """
    A server on C{configPath}, listening on free loopback ports, with
    accounts alice and bob (password "secret"); C{client(...)} starts a
    baresip against it.
    """
    database = "sqlite:///%s" % (os.path.join(workdir, "presence.sqlite"),)
    presenceAdmin(database, "initdb")
    for user in ("alice", "bob"):
        presenceAdmin(database, "account", "add", "%s@example.test" % (user,), "--customer", "acme",
                      "--password-file", "-", password=PASSWORD)
    process = ServerProcess(
        workdir,
        [
            "--config", configPath,
            "--database", database,
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--domain", "example.test",
        ],
    ).start(READY)
    started: List[Baresip] = []

    def client(user: str, transport: str, contacts: List[str], **kw: Any) -> Baresip:
        agent = Baresip(baresip, workdir, user, transport, process.ports[transport], contacts, **kw)
        started.append(agent)
        return agent.start()

    process.client = client  # type: ignore[attr-defined]
    process.started = started  # type: ignore[attr-defined]
    return process


def _stop(process: Any) -> None:
    for agent in process.started:
        agent.stop()
    process.stopCleanly()


@pytest.fixture
def server(tmp_path: Any, baresip: str) -> Any:
    """
    A server with the default digest challenges, NOTIFYs without rate
    control, an event per request and keep-alive in its log.
    """
    configPath = os.path.join(str(tmp_path), "presence.ini")
    with open(configPath, "w") as f:
        f.write(
            "[manager]\nnotify_min_interval = 0\n"
            "[registrar]\nflow_timer = 2\n"
            "[log]\nrequests = yes\nlevel = debug\n"
        )
    process = _serve(str(tmp_path), baresip, configPath)
    yield process
    _stop(process)


@pytest.fixture
def shippedServer(tmp_path: Any, baresip: str) -> Any:
    """
    A server on the shipped etc/presence.ini as it is; only where it
    listens, its database and its domain come from the command line.
    """
    process = _serve(str(tmp_path), baresip, os.path.join(REPO, "etc", "presence.ini"))
    yield process
    _stop(process)


ALICE_CONTACTS = ['"Bob" <sip:bob@example.test>;presence=p2p']
BOB_CONTACTS = ['"Alice" <sip:alice@example.test>;presence=p2p']


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_onlineOffline(server: Any, transport: str) -> None:
    """
    Both register with digest authentication; alice watches bob; bob's
    presence_online and presence_offline (PUBLISH) each show in alice's
    contacts.
    """
    alice = server.client("alice", transport, ALICE_CONTACTS)
    bob = server.client("bob", transport, BOB_CONTACTS)
    alice.registered()
    bob.registered()
    assert "Authentication failed" not in server.log()
    # bob's first PUBLISHes carry <basic>unknown, racing; then his state.
    for status, command in (("Offline", "presence_offline"), ("Online", "presence_online"),
                            ("Offline", "presence_offline"), ("Online", "presence_online")):
        bob.command(command)
        alice.waitStatus("bob", status)
    # And the other way round: bob watches alice.
    alice.command("presence_offline")
    bob.waitStatus("alice", "Offline")
    alice.command("presence_online")
    bob.waitStatus("alice", "Online")
    waitCount(server, r"PUBLISH sip:bob@example.test from %s:127\.0\.0\.1:\d+ -> 200" % (transport,), 3)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_registrationAlone(server: Any, transport: str) -> None:
    """
    bob publishes nothing (pubint=0): his registration alone makes him
    Online to alice, and its end Offline -- an un-REGISTER when he quits
    over UDP; over TCP his connection dying with the process (SIGKILL,
    no un-REGISTER).
    """
    alice = server.client("alice", transport, ALICE_CONTACTS, pubint=0)
    alice.registered()
    alice.waitStatus("bob", "Offline")
    bob = server.client("bob", transport, [], pubint=0)
    bob.registered()
    alice.waitStatus("bob", "Online")
    if transport == "UDP":
        bob.stop(signal.SIGTERM)
        # Registered, then un-registered (an expiry would take a minute).
        waitCount(server, r"REGISTER \S+ from UDP:127\.0\.0\.1:%d -> 200" % (bob.sipPort,), 2)
    else:
        bob.stop(signal.SIGKILL)
        server.waitFor("bindings of sip:bob@example.test removed")
    alice.waitStatus("bob", "Offline")


def test_outboundKeepalives(server: Any) -> None:
    """
    SIP Outbound over UDP (sipnat=outbound: +sip.instance and reg-id):
    the 200 says Require: outbound and Flow-Timer 2, and baresip keeps its
    flow alive with STUN Binding requests on the SIP port, which the
    server answers (baresip would re-register if it got no answer).
    """
    alice = server.client("alice", "UDP", [], pubint=0, extra=";sipnat=outbound")
    alice.registered()
    waitCount(server, r"STUN keep-alive from 127\.0\.0\.1:%d" % (alice.sipPort,), 3)
    # Still registered on the same flow: no re-registration was needed.
    registers = r"REGISTER \S+ from UDP:127\.0\.0\.1:%d -> 200" % (alice.sipPort,)
    assert sum(bool(re.search(registers, line)) for line in server.output) == 1, server.log()
    alice.registered()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_shippedConfiguration(shippedServer: Any, transport: str) -> None:
    """
    With etc/presence.ini unchanged (no [billing] algorithms override),
    both baresips log in: each REGISTERs, alice's SUBSCRIBE and bob's
    PUBLISHes are admitted (his changes reach her), and no
    authentication fails on the way.
    """
    alice = shippedServer.client("alice", transport, ALICE_CONTACTS)
    bob = shippedServer.client("bob", transport, BOB_CONTACTS)
    alice.registered()
    bob.registered()
    for status, command in (("Offline", "presence_offline"), ("Online", "presence_online")):
        bob.command(command)
        alice.waitStatus("bob", status)
    assert "Authentication failed" not in shippedServer.log()


def waitCount(server: Any, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> None:
    """
    Wait until C{count} lines of the server's output match the regular
    expression C{pattern}.
    """
    deadline = time.monotonic() + timeout
    with server._changed:
        while sum(bool(re.search(pattern, line)) for line in server.output) < count:
            remaining = deadline - time.monotonic()
            if server._eof or remaining <= 0:
                raise AssertionError(
                    "fewer than %d lines matching %r; output:\n%s" % (count, pattern, "\n".join(server.output[-80:]))
                )
            server._changed.wait(remaining)
