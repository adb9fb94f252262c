"""
Start-up failures (presence.startup, presence.root): each is one line
naming the cause, and the process exits non-zero, quickly, instead of
running on with a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, formatEvent

from presence.root import PresenceService
from presence.startup import StartupError, describe, failStartup
from tests.serverprocess import REPO

# --- the root's mechanism, on a fake reactor ---------------------------------


class Child(service.Service):
    def __init__(self, name: str, error: Exception = None) -> None:
        self.setName(name)
        self.error = error
        self.starts = self.stops = 0

    def startService(self) -> None:
        self.starts += 1
        if self.error is not None:
            raise self.error
        service.Service.startService(self)

    def stopService(self) -> None:
        self.stops += 1
        service.Service.stopService(self)


def _critical(events):
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.critical]


def _tree(*children):
    reactor = MemoryReactor()
    root = PresenceService(reactor)
    for child in children:
        child.setServiceParent(root)
    return root, reactor


def test_raisingChildEndsStartup(logEvents):
    """
    A child that raises stops the start-up: the later ones never start,
    the cause is one critical line, the reactor is stopped once it runs,
    and only what started is stopped.
    """
    taken = CannotListenError("127.0.0.1", 5060, OSError(errno.EADDRINUSE, "Address already in use"))
    first, failing, later = Child("first"), Child("metrics", taken), Child("later")
    root, reactor = _tree(first, failing, later)
    root.startService()
    assert (first.running, later.starts) == (1, 0)
    assert root.exitStatus == 1
    assert _critical(logEvents) == ["Cannot start: metrics: cannot listen on 127.0.0.1:5060: address already in use"]
    reactor.run()
    assert reactor.hasStopped
    root.stopService()
    assert (first.stops, failing.stops, later.stops) == (1, 0, 0)


def test_firstCauseOnly(logEvents):
    """
    What fails after the first failure fails because of it: only the first
    is reported.
    """
    store, manager = Child("store"), Child("manager")
    root, reactor = _tree(store, manager)
    root.startService()
    failStartup(store, "the database", StartupError("the database: unable to open database file"))
    failStartup(manager, "the subscription manager", StartupError("the store is not running"))
    assert _critical(logEvents) == ["Cannot start: the database: unable to open database file"]
    assert len(reactor.whenRunningHooks) == 1


def test_bugKeepsItsTraceback(logEvents):
    """
    An exception meaning a bug in this program is one line too, followed by
    its traceback; an operator's mistake is not.
    """
    root, _ = _tree(Child("sip", AttributeError("'NoneType' object has no attribute 'core'")))
    root.startService()
    assert _critical(logEvents)[0] == "Cannot start: sip: 'NoneType' object has no attribute 'core'"
    failures = [e for e in logEvents if "log_failure" in e]
    assert len(failures) == 1 and "AttributeError" in failures[0]["log_failure"].getTraceback()


def test_describe():
    """
    The causes a listener, a file, TLS or a database give, as one line.
    """
    import sqlalchemy as sa
    from OpenSSL import crypto

    assert describe(OSError(errno.ENOENT, "No such file or directory", "/var/log/x/p.json")) == (
        "cannot open /var/log/x/p.json: No such file or directory"
    )
    assert describe(CannotListenError("", 2222, OSError(errno.EACCES, "Permission denied"))) == (
        "cannot listen on *:2222: permission denied"
    )
    with pytest.raises(crypto.Error) as raised:
        crypto.load_privatekey(crypto.FILETYPE_PEM, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert describe(raised.value).startswith("TLS: ")
    engine = sa.create_engine("sqlite:////nonexistent-folder/x.sqlite")
    with pytest.raises(sa.exc.OperationalError) as raised:
        engine.connect()
    assert describe(raised.value) == "unable to open database file"
    assert describe(StartupError("line one\nline two")) == "line one"


def test_servicesNameTheirCause(tmp_path):
    """
    What a .tap file (which no option checks) meets at start: a JSON log
    in a missing folder, a TLS key that is not there.
    """
    from presence.config import Config
    from presence.logs import JSONLogService
    from presence.sip.listen import ListenSpec
    from presence.sip.service import SIPService

    target = tmp_path / "nowhere" / "p.json"
    with pytest.raises(StartupError) as raised:
        JSONLogService(Config(logJsonFile=str(target))).startService()
    assert str(raised.value) == "[log] json_file = %r: cannot open %s: No such file or directory" % (
        str(target), target,
    )
    spec = ListenSpec.fromString("tls:5061:privateKey=%s:certKey=%s" % (tmp_path / "k.pem", tmp_path / "c.pem"))
    with pytest.raises(StartupError) as raised:
        SIPService(Config(listen=(spec,)), MemoryReactor()).startService()
    assert str(raised.value) == "SIP over TLS on port 5061: cannot open %s: No such file or directory" % (
        tmp_path / "k.pem",
    )


# --- real processes ----------------------------------------------------------


def _failedStart(workdir, *args: str, twistdArgs=("presence",)):
    """
    Run C{twistd -n presence ARGS}, which must fail, and exit within 5 s
    of its first line (before it, Python imports Twisted: seconds on a
    busy machine, and not what is tested).

    @return: its exit status and the lines that report an error.
    """
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "--logfile=-"] + list(twistdArgs) + list(args),
        cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines = []
    first = None
    # A server that never exits is killed, which the checks below report.
    killer = threading.Timer(60, process.kill)
    killer.start()
    try:
        for raw in iter(process.stdout.readline, b""):
            first = first or time.monotonic()
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        process.wait(10)
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    elapsed = time.monotonic() - (first or 0.0)
    output = "\n".join(lines)
    assert "Traceback" not in output, output
    assert elapsed < 5.0, "took %.1f s to exit:\n%s" % (elapsed, output)
    errors = [
        line for line in output.splitlines()
        if "#critical]" in line or "#error]" in line or line.startswith("twistd presence:")
    ]
    return process.returncode, errors, output


def _taken(kind=socket.SOCK_STREAM):
    """
    A loopback socket holding a port, as another process would.
    """
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    return sock


def _secret(path, text="0123456789abcdef0123"):
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _database(tmp_path):
    return ["--database", "sqlite:///%s" % (tmp_path / "presence.sqlite",)]


@pytest.mark.parametrize("listener", ["udp", "tcp", "tls", "manhole", "metrics", "billing-node", "cluster"])
def test_portInUseExits(tmp_path, listener):
    """
    Whatever listener finds its port taken (SIP UDP, TCP or TLS, the
    manhole, metrics, the billing node's or the cluster's PB listener,
    this one once the manager has loaded), the process says so in one line
    and exits 1.
    """
    sock = _taken(socket.SOCK_DGRAM if listener == "udp" else socket.SOCK_STREAM)
    port = sock.getsockname()[1]
    sip = ["--listen", "udp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.1"]
    config = tmp_path / "presence.ini"
    args = ["--config", str(config)] + _database(tmp_path)
    ini = ""
    if listener in ("udp", "tcp"):
        args += ["--listen", "%s:%d:interface=127.0.0.1" % (listener, port)]
    elif listener == "tls":
        from tests.certs import selfSigned

        key, cert, _ = selfSigned(tmp_path)
        args += ["--listen", "tls:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (port, key, cert)]
    elif listener == "manhole":
        keys = tmp_path / "authorized_keys"
        keys.write_text("")
        keys.chmod(0o600)
        ini = "[manhole]\nenabled = yes\nlisten = tcp:%d:interface=127.0.0.1\nauthorized_keys = %s\nhost_key = %s\n" % (
            port, keys, tmp_path / "host_key",
        )
        args += sip
    elif listener == "metrics":
        ini = "[metrics]\nenabled = yes\nlisten = tcp:%d:interface=127.0.0.1\n" % (port,)
        args += sip
    elif listener == "billing-node":
        secret = _secret(tmp_path / "peer.secret")
        ini = "[billing]\nlisten = tcp:%d:interface=127.0.0.1\npeer_secret_file = %s\n" % (port, secret)
        args += ["--role", "billing"]
    else:
        secrets = tmp_path / "cluster.secrets"
        _secret(secrets, "m1 0123456789abcdef0123\nm2 fedcba98765432100123")
        ini = (
            "[manager]\nnode = m1\n[cluster]\nlisten = tcp:%d:interface=127.0.0.1\n"
            "peers = m1=tcp:127.0.0.1:%d m2=tcp:127.0.0.1:1\nsecret_file = %s\n" % (port, port, secrets)
        )
        args += ["--role", "manager"] + sip
    config.write_text(ini)
    try:
        code, errors, output = _failedStart(tmp_path, *args)
    finally:
        sock.close()
    assert code == 1, output
    assert len(errors) == 1, output
    assert "Cannot start: " in errors[0]
    assert "cannot listen on 127.0.0.1:%d: address already in use" % (port,) in errors[0], errors[0]
    assert "Server Shut Down." in output


def test_missingTLSKeyExits(tmp_path):
    from tests.certs import selfSigned

    _, cert, _ = selfSigned(tmp_path)
    missing = tmp_path / "missing-key.pem"
    code, errors, output = _failedStart(
        tmp_path, "--listen", "tls:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (missing, cert),
        *_database(tmp_path),
    )
    assert code == 1 and len(errors) == 1, output
    assert str(missing) in errors[0] and "missing-key.pem: no such file" in errors[0].lower()


def test_jsonFileInMissingFolderExits(tmp_path):
    config = tmp_path / "presence.ini"
    target = tmp_path / "no-such-folder" / "presence.json"
    config.write_text("[log]\njson_file = %s\n" % (target,))
    code, errors, output = _failedStart(
        tmp_path, "--config", str(config), "--listen", "udp:0:interface=127.0.0.1", *_database(tmp_path),
    )
    assert code == 1 and len(errors) == 1, output
    assert "[log] json_file = %r" % (str(target),) in errors[0]
    assert "the folder %s does not exist" % (target.parent,) in errors[0]


def test_databaseGoneExits(tmp_path):
    """
    A .tap file is run without the options' checks: a database that fails
    once the reactor runs ends the process the same way.
    """
    import io
    import shutil

    from presence.admin.cli import run

    folder = tmp_path / "db"
    folder.mkdir()
    tap = tmp_path / "presence.tap"
    args = ["mktap", "--database", "sqlite:///%s" % (folder / "presence.sqlite",), "--listen",
            "udp:0:interface=127.0.0.1", "-o", str(tap)]
    assert run(args, io.StringIO(), io.StringIO()) == 0
    assert list(folder.iterdir()) == []
    shutil.rmtree(folder)
    code, errors, output = _failedStart(tmp_path, twistdArgs=("-o", "-f", str(tap)))
    assert code == 1 and len(errors) == 1, output
    assert errors[0].endswith("Cannot start: the database: unable to open database file"), errors[0]
