"""
The SSH manhole: configuration checks, the host key file, and real logins
over loopback, with Twisted's SSH client against a service tree running in
this process and with OpenSSH's C{ssh} against C{twistd -n presence}.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import stat
import struct
import subprocess
import sys
from typing import Any, List, Optional

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch.ssh import channel, common, connection, keys, session, transport, userauth
from twisted.internet import defer, protocol
from twisted.internet.protocol import DatagramProtocol

from presence.admin.manhole import (
    ManholeError,
    ManholeService,
    fingerprint,
    loadHostKey,
    manholeProblem,
    readHostKey,
)
from presence.config import Config, ConfigError
from presence.sip.message import Request, Response
from presence.sip.parser import parseMessage
from presence.tap import Options, makeService
from tests.conftest import requireTool
from tests.serverprocess import REPO, ServerProcess
from tests.sipclient import UDPClient, answer, newRequest

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="t1"><status><basic>open</basic></status></tuple></presence>\n'
)
LOOPBACK = ["--listen", "udp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.1"]
_ESCAPE = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z=>])")


def newKey() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def writeAuthorizedKeys(path: str, *authorized: keys.Key) -> None:
    with open(path, "wb") as f:
        f.write(b"# operators\n")
        for key in authorized:
            f.write(key.public().toString("openssh") + b" operator@example.test\n")


def manholeConfig(workdir: str, extra: str = "") -> str:
    """
    A configuration file enabling the manhole on a free loopback port.
    """
    keysPath = os.path.join(workdir, "authorized_keys")
    path = os.path.join(workdir, "presence.ini")
    with open(path, "w") as f:
        f.write(
            "[server]\ndatabase = sqlite:///%s\n"
            "[manager]\nnotify_min_interval = 0\n"
            "[billing]\nno_auth_domains = example.test\n"
            "[manhole]\nenabled = yes\nlisten = tcp:0:interface=127.0.0.1\n"
            "authorized_keys = %s\n%s"
            % (os.path.join(workdir, "presence.sqlite"), keysPath, extra)
        )
    return path


# Configuration and files.


def test_enabledWithoutAuthorizedKeysIsOneLine(tmp_path, capsys):
    """
    Enabling the manhole without naming the keys allowed to log in stops
    start-up with one line naming the file, section and key.
    """
    with pytest.raises(ConfigError) as raised:
        Config.fromString("[manhole]\nenabled = yes\n", "p.ini")
    message = str(raised.value)
    assert message.startswith("p.ini: [manhole] enabled = yes needs authorized_keys")
    assert "\n" not in message
    path = tmp_path / "p.ini"
    path.write_text("[manhole]\nenabled = yes\n")
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--config", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs authorized_keys" in err, err
    # Programmatic configurations are checked too.
    with pytest.raises(ConfigError):
        ManholeService(Config(manholeEnabled=True))


def test_enabledWithoutAuthorizedKeysStopsTwistd(tmp_path):
    """
    The same mistake through C{twistd}: exit status 1 and one line, no
    usage text and no traceback.
    """
    path = tmp_path / "p.ini"
    path.write_text("[manhole]\nenabled = yes\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "--logfile=-", "presence", "--config", str(path)],
        cwd=str(tmp_path), env=env, capture_output=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "[manhole] enabled = yes needs authorized_keys" in lines[0], lines


def test_defaultsAreOff():
    """
    The manhole is off by default and listens on loopback when enabled.
    """
    config = Config()
    assert config.manholeEnabled is False
    assert config.manholeListen == "tcp:2222:interface=127.0.0.1"
    assert config.manholeHostKey == "manhole_host_key"
    assert config.manholeAuthorizedKeys == ""


def test_badListenEndpoint():
    with pytest.raises(ConfigError) as raised:
        Config.fromString("[manhole]\nlisten = tcp:many\n", "p.ini")
    assert "[manhole] listen = 'tcp:many'" in str(raised.value)


def test_hostKeyGeneratedWithMode0600(tmp_path):
    """
    A missing host key is generated with mode 0600 whatever the umask, and
    read back unchanged on the next start.
    """
    path = str(tmp_path / "host_key")
    old = os.umask(0)
    try:
        key = loadHostKey(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not key.isPublic() and key.sshType() == b"ssh-ed25519"
    assert loadHostKey(path) == key


@pytest.mark.parametrize("mode", [0o755, 0o644, 0o640, 0o604])
def test_hostKeyReadableByOthersIsRefused(tmp_path, mode):
    """
    A host key that group or others may read (Twisted's manhole_tap writes
    them 0755) is refused, before start-up and at start.
    """
    path = str(tmp_path / "host_key")
    with open(path, "wb") as f:
        f.write(newKey().toString("openssh"))
    os.chmod(path, mode)
    with pytest.raises(ManholeError) as raised:
        loadHostKey(path)
    assert "has mode %04o; it must be 0600" % (mode,) in str(raised.value)
    keysPath = str(tmp_path / "authorized_keys")
    writeAuthorizedKeys(keysPath, newKey())
    config = Config(manholeEnabled=True, manholeAuthorizedKeys=keysPath, manholeHostKey=path)
    assert "must be 0600" in (manholeProblem(config) or "")
    os.chmod(path, 0o600)
    assert manholeProblem(config) is None


def test_hostKeyMustBePrivate(tmp_path):
    path = str(tmp_path / "host_key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, newKey().public().toString("openssh"))
    os.close(fd)
    with pytest.raises(ManholeError) as raised:
        readHostKey(path)
    assert "public key" in str(raised.value)


def test_authorizedKeysFileChecked(tmp_path):
    """
    A missing authorized-keys file, or one that others could add a key to,
    is refused before start-up.
    """
    keysPath = str(tmp_path / "authorized_keys")
    config = Config(
        manholeEnabled=True, manholeAuthorizedKeys=keysPath, manholeHostKey=str(tmp_path / "hk")
    )
    assert "cannot read it" in (manholeProblem(config) or "")
    writeAuthorizedKeys(keysPath, newKey())
    os.chmod(keysPath, 0o666)
    assert "writable by group or others" in (manholeProblem(config) or "")
    os.chmod(keysPath, 0o644)
    assert manholeProblem(config) is None
    assert not os.path.exists(str(tmp_path / "hk")), "the check must not generate the host key"


def test_servicePicklesConfigurationOnly(tmp_path):
    config = Config(manholeEnabled=True, manholeAuthorizedKeys="k")
    svc = ManholeService(config)
    svc._listener = object()
    svc.address = object()
    copy = pickle.loads(pickle.dumps(svc))
    assert copy.config == config and copy.name == "manhole"
    assert copy._listener is None and copy.address is None


# A small SSH client (Twisted Conch) that runs a script at the manhole prompt.


class ManholeClient(protocol.ClientFactory):
    """
    Logs in with C{key}, opens a shell with a pty, types C{script}, sends
    end-of-file and collects what the manhole printed.

    @ivar done: fires with the output (escape sequences removed) once the
        connection is closed.
    @ivar authenticated: whether the login succeeded.
    @ivar hostKey: the host key the server showed.
    """

    def __init__(
        self, key: keys.Key, script: Optional[List[str]], user: bytes = b"operator", command: Optional[str] = None
    ) -> None:
        """
        @param command: send this exec request instead of opening a shell.
        """
        self.key = key
        self.script = script
        self.command = command
        self.exitStatus: Optional[int] = None
        self.errors: List[bytes] = []
        self.user = user
        self.authenticated = False
        self.hostKey: Optional[keys.Key] = None
        self.output: List[bytes] = []
        self.done: defer.Deferred = defer.Deferred()
        self.opened: defer.Deferred = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Any:
        p = _ClientTransport()
        p.factory = self
        return p

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.done.errback(reason)

    def text(self) -> str:
        return _ESCAPE.sub(b"", b"".join(self.output)).decode("utf-8", "replace")


class _ClientTransport(transport.SSHClientTransport):
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred:
        self.factory.hostKey = keys.Key.fromString(hostKey)
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_UserAuth(self.factory.user, _Connection()))

    def connectionLost(self, reason: Any) -> None:
        transport.SSHClientTransport.connectionLost(self, reason)
        if not self.factory.done.called:
            self.factory.done.callback(self.factory.text())


class _UserAuth(userauth.SSHUserAuthClient):
    preferredOrder = [b"publickey"]
    _offered = False

    def getPublicKey(self) -> Optional[keys.Key]:
        if self._offered:
            return None
        self._offered = True
        return self.transport.factory.key.public()

    def getPrivateKey(self) -> defer.Deferred:
        return defer.succeed(self.transport.factory.key)

    def getPassword(self, prompt: Any = None) -> None:
        return None

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.transport.factory.authenticated = True
        userauth.SSHUserAuthClient.ssh_USERAUTH_SUCCESS(self, packet)


class _Connection(connection.SSHConnection):
    def serviceStarted(self) -> None:
        connection.SSHConnection.serviceStarted(self)
        self.openChannel(_Shell(conn=self))


class _Shell(channel.SSHChannel):
    name = b"session"

    @defer.inlineCallbacks
    def channelOpen(self, data: bytes) -> Any:
        factory = self.conn.transport.factory
        if factory.command is not None:
            yield self.conn.sendRequest(self, b"exec", common.NS(factory.command.encode()), wantReply=True)
            factory.opened.callback(self)
            return
        yield self.conn.sendRequest(
            self, b"pty-req", session.packRequest_pty_req(b"vt100", (24, 80, 0, 0), b""), wantReply=True
        )
        yield self.conn.sendRequest(self, b"shell", b"", wantReply=True)
        factory.opened.callback(self)
        if factory.script is not None:
            self.write("".join(line + "\r" for line in factory.script).encode("utf-8"))
            self.conn.sendEOF(self)

    def dataReceived(self, data: bytes) -> None:
        self.conn.transport.factory.output.append(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.conn.transport.factory.errors.append(data)

    def request_exit_status(self, data: bytes) -> int:
        (self.conn.transport.factory.exitStatus,) = struct.unpack(">L", data)
        return 1

    def closed(self) -> None:
        self.conn.transport.loseConnection()


def runScript(port: int, key: keys.Key, script: Optional[List[str]], command: Optional[str] = None) -> ManholeClient:
    from twisted.internet import reactor

    client = ManholeClient(key, script, command=command)
    reactor.connectTCP("127.0.0.1", port, client, timeout=10)
    return client


def printed(output: str, tag: str) -> Any:
    """
    The JSON a script printed after C{tag} (the echo of the typed line
    has the tag in quotes, so it does not match).
    """
    match = re.search(r"^%s (.*)$" % (tag,), output, re.M)
    assert match is not None, "no %s line in:\n%s" % (tag, output)
    return json.loads(match.group(1).strip())


# A user agent on the reactor, for in-process SIP traffic.


class UserAgent(DatagramProtocol):
    def __init__(self) -> None:
        self.received: defer.DeferredQueue = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.put(parseMessage(data))

    @property
    def port(self) -> int:
        return self.transport.getHost().port

    def send(self, message: Any, port: int) -> None:
        self.transport.write(message.toBytes(), ("127.0.0.1", port))

    def next(self) -> defer.Deferred:
        from twisted.internet import reactor

        return self.received.get().addTimeout(10, reactor)


class Tree:
    """
    The server's service tree running in this process.
    """

    def __init__(self, workdir: str, extraConfig: str = "") -> None:
        self.workdir = workdir
        self.key = newKey()
        writeAuthorizedKeys(os.path.join(workdir, "authorized_keys"), self.key)
        self.hostKeyPath = os.path.join(workdir, "host_key")
        extra = "host_key = %s\n%s" % (self.hostKeyPath, extraConfig)
        options = Options()
        options.parseOptions(
            ["--config", manholeConfig(workdir, extra), "--domain", "example.test"] + LOOPBACK
        )
        self.root = makeService(options)

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.root.startService()
        yield self.root.getServiceNamed("manager").whenReady()
        self.manholePort = self.root.getServiceNamed("manhole").address.port
        self.sipPort = self.root.getServiceNamed("sip").addresses[0][2]


@pytest_twisted.inlineCallbacks
def test_sessionShowsAndEndsSubscriptions(tmp_path):
    """
    Over SSH: stats() counts a subscription and a publication made over
    SIP, subscriptions() and presentity() show them, and terminate() ends
    the subscription with a final NOTIFY the watcher receives.
    """
    from twisted.internet import reactor

    tree = Tree(str(tmp_path))
    yield tree.start()
    ua = UserAgent()
    udp = reactor.listenUDP(0, ua, interface="127.0.0.1")
    try:
        bob = "sip:bob@example.test"
        ua.send(
            newRequest("SUBSCRIBE", bob, ua.port, Event="presence", Expires="300",
                       fromURI="sip:alice@example.test"),
            tree.sipPort,
        )
        got = [(yield ua.next()), (yield ua.next())]
        notify = [m for m in got if isinstance(m, Request)][0]
        assert [m.code for m in got if isinstance(m, Response)] == [200]
        ua.send(answer(notify), tree.sipPort)
        ua.send(
            newRequest("PUBLISH", bob, ua.port, body=(PIDF % bob).encode(), Event="presence",
                       Expires="600", Content_Type="application/pidf+xml", fromURI=bob),
            tree.sipPort,
        )
        got = [(yield ua.next()), (yield ua.next())]
        published = [m for m in got if isinstance(m, Response)][0]
        assert published.code == 200
        ua.send(answer([m for m in got if isinstance(m, Request)][0]), tree.sipPort)

        client = runScript(tree.manholePort, tree.key, [
            "import json",
            "print('STATS', json.dumps(stats()))",
            "print('SUBS', json.dumps(subscriptions(presentity='sip:bob@example.test')))",
            "print('NONE', json.dumps(subscriptions(watcher='sip:nobody@example.test')))",
            "print('PRES', json.dumps(presentity('sip:bob@example.test')))",
            "print('LIVE', manager is not None, core is not None, store is not None, len(list(root)))",
        ])
        output = yield client.done
        assert client.authenticated
        assert client.hostKey == readHostKey(tree.hostKeyPath).public()
        assert stat.S_IMODE(os.stat(tree.hostKeyPath).st_mode) == 0o600
        stats = printed(output, "STATS")
        assert stats["managerReady"] is True
        assert (stats["subscriptions"], stats["publications"], stats["presentities"]) == (1, 1, 1)
        assert stats["notifiesSent"] == 2 and stats["notifiesFailed"] == 0
        assert stats["requestsByMethod"] == {"PUBLISH": 1, "SUBSCRIBE": 1}
        assert stats["responsesSent"] == {"PUBLISH 2xx": 1, "SUBSCRIBE 2xx": 1}
        assert stats["storeCommits"] >= 2 and stats["storeBatches"] >= 2
        assert stats["sip"]["responses"] == 2 and stats["flows"] == 0
        assert "transactions" in stats and "notifiesCoalesced" in stats
        subs = printed(output, "SUBS")
        assert [(s["watcher"], s["presentity"]) for s in subs] == [("sip:alice@example.test", bob)]
        assert 290 <= subs[0]["expires"] <= 300 and subs[0]["target"].startswith("UDP 127.0.0.1:")
        assert printed(output, "NONE") == []
        pres = printed(output, "PRES")
        assert "<basic>open</basic>" in pres["document"]
        assert [p["etag"] for p in pres["publications"]] == [published.header("sip-etag")]
        assert 590 <= pres["publications"][0]["expires"] <= 600
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", pres["publications"][0]["modified"])
        assert [w["id"] for w in pres["watchers"]] == [subs[0]["id"]]
        # store, sip, billing, manager, manhole
        assert "LIVE True True True 5" in output

        client = runScript(tree.manholePort, tree.key, [
            "import json",
            "terminate('no-such-id')",
            "terminate(subscriptions()[0]['id'], 'bogus')",
            "d = terminate(subscriptions())",
            "print('AFTER', json.dumps(stats()['subscriptions']))",
        ])
        final = yield ua.next()
        assert isinstance(final, Request) and final.method == "NOTIFY"
        assert final.header("subscription-state") == "terminated;reason=deactivated"
        ua.send(answer(final), tree.sipPort)
        output = yield client.done
        assert "KeyError: \"no live subscription 'no-such-id'\"" in output
        assert "ValueError: reason must be one of" in output
        assert printed(output, "AFTER") == 0
    finally:
        yield udp.stopListening()
        yield tree.root.stopService()


@pytest_twisted.inlineCallbacks
def test_execRequestRunsOneStatement(tmp_path):
    """
    An SSH exec request (C{ssh host 'stats()'}) runs that one statement:
    an expression's value is printed (a Deferred's once it fired), what
    statements print is sent, and an exception is a traceback on
    standard error with exit status 1.
    """
    tree = Tree(str(tmp_path))
    yield tree.start()
    try:
        client = runScript(tree.manholePort, tree.key, None, command="stats()")
        output = yield client.done
        assert client.exitStatus == 0, (output, client.errors)
        assert output.startswith("{'managerReady': True, 'subscriptions': 0,") and output.endswith("}\n")

        client = runScript(tree.manholePort, tree.key, None, command="n = len(subscriptions()); print('N', n)")
        assert (yield client.done) == "N 0\n" and client.exitStatus == 0

        client = runScript(tree.manholePort, tree.key, None, command="status()")
        output = yield client.done
        assert client.exitStatus == 0 and "'healthy': True" in output, output

        client = runScript(tree.manholePort, tree.key, None, command="terminate('nope')")
        assert (yield client.done) == "" and client.exitStatus == 1
        assert "KeyError: \"no live subscription 'nope'\"" in b"".join(client.errors).decode()
    finally:
        yield tree.root.stopService()


@pytest_twisted.inlineCallbacks
def test_wrongKeyIsRefused(tmp_path):
    """
    A key not in the authorized-keys file gets no session; removing a key
    from the file takes effect at the next login, without a restart.
    """
    tree = Tree(str(tmp_path))
    yield tree.start()
    try:
        client = runScript(tree.manholePort, newKey(), ["print('IN')"])
        output = yield client.done
        assert not client.authenticated
        assert "IN" not in output
        client = runScript(tree.manholePort, tree.key, ["print('IN', 1)"])
        output = yield client.done
        assert client.authenticated and "IN 1" in output
        writeAuthorizedKeys(os.path.join(tree.workdir, "authorized_keys"), newKey())
        client = runScript(tree.manholePort, tree.key, ["print('IN', 2)"])
        yield client.done
        assert not client.authenticated
    finally:
        yield tree.root.stopService()


@pytest_twisted.inlineCallbacks
def test_stopEndsOpenSessionsWithoutOtherServices(tmp_path):
    """
    The manhole works in a process running no presence service (stats()
    says what is missing), and stopping it closes a session left open.
    """
    from twisted.internet import reactor

    workdir = str(tmp_path)
    key = newKey()
    writeAuthorizedKeys(os.path.join(workdir, "authorized_keys"), key)
    config = Config(
        manholeEnabled=True,
        manholeListen="tcp:0:interface=127.0.0.1",
        manholeAuthorizedKeys=os.path.join(workdir, "authorized_keys"),
        manholeHostKey=os.path.join(workdir, "host_key"),
    )
    root = service.MultiService()
    manhole = ManholeService(config)
    manhole.setServiceParent(root)
    root.startService()
    try:
        assert pickle.loads(pickle.dumps(root)).getServiceNamed("manhole")._listener is None
        client = runScript(manhole.address.port, key, None)
        shell = yield client.opened
        shell.write(b"print('STATS', stats())\r")
        while "STATS {" not in client.text():
            yield _later(0.05)
        assert "STATS {'managerReady': False}" in client.text()
    finally:
        yield root.stopService()
    # Closed by the server as it stops, not left to some timeout.
    yield client.done.addTimeout(5, reactor)


def _later(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


# OpenSSH against twistd.


def _ssh(port: int, keyPath: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [requireTool("ssh"), "-tt", "-F", "/dev/null", "-i", keyPath, "-p", str(port),
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "operator@127.0.0.1"],
        input=script.encode(), capture_output=True, timeout=60,
    )


def _sshExec(port: int, keyPath: str, command: str) -> subprocess.CompletedProcess:
    """
    C{ssh ... host COMMAND}: an exec request, no terminal, no input.
    """
    return subprocess.run(
        [requireTool("ssh"), "-F", "/dev/null", "-i", keyPath, "-p", str(port),
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "operator@127.0.0.1", command],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
    )


def _writeOpenSSHKey(path: str, key: keys.Key) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.toString("openssh"))


def test_opensshAgainstTwistd(tmp_path):
    """
    The operator's way in: C{ssh} to C{twistd -n presence}, whose manhole
    listens on port 0 and logs the port, with the host key generated in the
    working directory (the default) with mode 0600.
    """
    requireTool("ssh")
    workdir = str(tmp_path)
    key, stranger = newKey(), newKey()
    writeAuthorizedKeys(os.path.join(workdir, "authorized_keys"), key)
    _writeOpenSSHKey(os.path.join(workdir, "id_operator"), key)
    _writeOpenSSHKey(os.path.join(workdir, "id_stranger"), stranger)
    server = ServerProcess(
        workdir, ["--config", manholeConfig(workdir), "--domain", "example.test"] + LOOPBACK
    ).start("Subscription manager")
    try:
        line = server.waitFor("Manhole listening on")
        port = int(re.search(r"Manhole listening on 127\.0\.0\.1:(\d+) ", line).group(1))
        hostKey = os.path.join(workdir, "manhole_host_key")
        assert stat.S_IMODE(os.stat(hostKey).st_mode) == 0o600
        assert fingerprint(readHostKey(hostKey)) in line

        watcher = UDPClient(server.ports["UDP"])
        try:
            ok = watcher.request("SUBSCRIBE", "sip:carol@example.test", Event="presence",
                                 Expires="300", fromURI="sip:dave@example.test")
            assert ok.code == 200
            watcher.send(answer(watcher.receiveMessage()))
            result = _ssh(port, os.path.join(workdir, "id_operator"), "stats()\r")
        finally:
            watcher.close()
        output = _ESCAPE.sub(b"", result.stdout).decode("utf-8", "replace")
        assert result.returncode == 0, (result.returncode, output, result.stderr)
        assert "'managerReady': True, 'subscriptions': 1," in output, output
        assert "Manhole login by operator with " + fingerprint(key) in server.waitFor("Manhole login by")

        result = _sshExec(port, os.path.join(workdir, "id_operator"), "stats()")
        assert result.returncode == 0, result
        assert result.stdout.startswith(b"{'managerReady': True, 'subscriptions': 1,"), result.stdout
        result = _sshExec(port, os.path.join(workdir, "id_operator"), "terminate('nope')")
        assert result.returncode == 1 and b"KeyError" in result.stderr, result

        result = _ssh(port, os.path.join(workdir, "id_stranger"), "stats()\r")
        assert result.returncode == 255
        assert b"Permission denied (publickey)" in result.stderr
        assert fingerprint(stranger) in server.waitFor("Manhole login refused")
    finally:
        server.stopCleanly()


def test_tapFilesKeepManholeAndMetrics(tmp_path):
    """
    A .tap file made with the manhole and metrics enabled runs them, and so
    does the shutdown .tap twistd pickles from the running tree on SIGTERM:
    nothing unpicklable is kept in either service.
    """
    import urllib.request

    from presence.admin.cli import run

    workdir = str(tmp_path)
    writeAuthorizedKeys(os.path.join(workdir, "authorized_keys"), newKey())
    config = manholeConfig(workdir, "[metrics]\nenabled = yes\nlisten = tcp:0:interface=127.0.0.1\n")
    tap = os.path.join(workdir, "presence.tap")
    out, err = io.StringIO(), io.StringIO()
    assert run(["mktap", "--config", config, "-o", tap] + LOOPBACK, out, err) == 0, err.getvalue()
    for name in ("presence.tap", "presence-shutdown.tap"):
        server = ServerProcess(workdir, [], twistdArgs=["-f", name]).start("Subscription manager")
        try:
            assert re.search(r"Manhole listening on 127\.0\.0\.1:\d+ ", server.waitFor("Manhole listening"))
            line = server.waitFor("Metrics listening on")
            port = int(re.search(r"127\.0\.0\.1:(\d+) ", line).group(1))
            body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (port,), timeout=10).read()
            assert b"\npresence_manager_ready 1.0\n" in body
        finally:
            server.stopCleanly()
    assert stat.S_IMODE(os.stat(os.path.join(workdir, "manhole_host_key")).st_mode) == 0o600
