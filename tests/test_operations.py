"""
Operating the server: the sample configuration, .tap files (and the
shutdown .tap twistd writes on SIGTERM), one-line failures for bad settings,
and the presence-admin commands that do not touch accounts.
"""

from __future__ import annotations

import io
import os
import shutil
import re
import subprocess
import sys
import textwrap

import pytest

from presence.admin.cli import run
from presence.store.schema import CURRENT_VERSION
from tests.serverprocess import REPO, ServerProcess
from tests.sipclient import UDPClient

READY = "Subscription manager"
LOOPBACK = ["--listen", "udp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.1"]


def _twistd(workdir: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "--logfile=-"] + list(args),
        cwd=workdir, env=env, capture_output=True, timeout=60,
    )


def _admin(*args: str):
    out, err = io.StringIO(), io.StringIO()
    code = run(list(args), out, err)
    return code, out.getvalue(), err.getvalue()


def test_sampleConfigRuns(tmp_path):
    """
    etc/presence.ini runs as it is (listeners moved to free ports).
    """
    sample = os.path.join(REPO, "etc", "presence.ini")
    server = ServerProcess(str(tmp_path), ["--config", sample] + LOOPBACK).start(READY)
    try:
        client = UDPClient(server.ports["UDP"])
        assert client.request("OPTIONS", "sip:127.0.0.1").code == 200
        client.close()
        assert os.path.exists(tmp_path / "presence.sqlite")
    finally:
        server.stopCleanly()


def test_sampleNamesEveryKey():
    """
    etc/presence.ini documents every section and key the schema knows, and
    no other, and still loads.
    """
    import configparser

    from presence.config import SCHEMA, Config

    sample = os.path.join(REPO, "etc", "presence.ini")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(sample, encoding="utf-8")
    assert sorted(parser.sections()) == sorted(SCHEMA)
    for section, keys in SCHEMA.items():
        assert sorted(parser[section]) == sorted(keys), section
    Config.fromFile(sample)


@pytest.mark.parametrize(
    "ini, message",
    [
        ("[server]\ncolour = blue\n", "[server] unknown key 'colour'"),
        ("[nosuch]\nx = 1\n", "unknown section [nosuch]"),
        ("[server]\nlisten = udp:70000\n", "[server] listen = 'udp:70000': bad port"),
        ("[manager]\nmin_expires = soon\n", "[manager] min_expires = 'soon'"),
        ("[server]\ndatabase = postgresql+psycopg://nobody@127.0.0.1:1/none\n",
         "[server] database = 'postgresql+psycopg://nobody@127.0.0.1:1/none': cannot reach the database"),
    ],
    ids=["key", "section", "port", "value", "database"],
)
def test_badConfigOneLine(tmp_path, ini, message):
    config = tmp_path / "bad.ini"
    config.write_text(ini)
    result = _twistd(str(tmp_path), "presence", "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twistd presence: %s: " % (config,))
    assert message in lines[0]
    assert b"Traceback" not in result.stdout + result.stderr


def test_badOptionOneLine(tmp_path):
    result = _twistd(str(tmp_path), "presence", "--listen", "sctp:5060")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "twistd presence: --listen: unknown transport 'sctp' in 'sctp:5060' (use udp:, tcp:, tls:, ws: or wss:)"
    )


def test_tapFileAndShutdownTap(tmp_path):
    """
    presence-admin mktap writes a .tap that twistd -f runs; SIGTERM leaves a
    presence-shutdown.tap that starts the same configuration again.
    """
    tap = tmp_path / "presence.tap"
    code, out, err = _admin(
        "mktap", "--domain", "example.test", "--database",
        "sqlite:///%s" % (tmp_path / "presence.sqlite",), "-o", str(tap), *LOOPBACK,
    )
    assert code == 0, err
    assert tap.exists()
    for name in ("presence.tap", "presence-shutdown.tap"):
        server = ServerProcess(str(tmp_path), [], twistdArgs=["-f", name]).start(READY)
        try:
            client = UDPClient(server.ports["UDP"])
            response = client.request("SUBSCRIBE", "sip:bob@elsewhere.test", Event="presence")
            assert response.code == 404  # the domain from the tap is served, no other
            client.close()
        finally:
            server.stopCleanly()
        assert (tmp_path / "presence-shutdown.tap").exists()


def test_adminDatabaseCommands(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "admin.sqlite",)
    assert _admin("--database", url, "initdb")[:2] == (0, "Database initialised, schema version %d\n" % (CURRENT_VERSION,))
    code, out, _ = _admin("--database", url, "initdb")
    assert code == 0 and "already initialised" in out
    code, out, _ = _admin("--database", url, "upgradedb")
    assert code == 0 and "from version %d to %d" % (CURRENT_VERSION, CURRENT_VERSION) in out
    code, out, err = _admin("--database", "postgresql+psycopg://nobody@127.0.0.1:1/none", "initdb")
    assert code == 1 and err.startswith("presence-admin: cannot reach database") and err.count("\n") == 1


def test_adminCheckconfig(tmp_path):
    sample = os.path.join(REPO, "etc", "presence.ini")
    code, out, err = _admin("--config", sample, "--database", "sqlite:///%s" % (tmp_path / "c.sqlite",), "checkconfig")
    assert code == 0, err
    assert out.startswith("Configuration OK: listen udp:5060 tcp:5060; domains example.test")
    bad = tmp_path / "bad.ini"
    bad.write_text("[sip]\nt1 = -1\n")
    code, out, err = _admin("--config", str(bad), "checkconfig")
    assert code == 1 and "[sip] t1 = '-1': must be a positive number" in err


def _literalBlocks(text: str):
    """
    The literal blocks of reStructuredText C{text}: the indented lines
    after a line ending with C{::}, dedented.
    """
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        base = len(line) - len(line.lstrip())
        block = []
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= base:
                break
            block.append(following)
        yield textwrap.dedent("\n".join(block)).strip("\n")


def test_readmeNamesOnlyKnownSettings():
    """
    Every INI snippet of README.rst that uses our sections is a valid
    configuration (known sections and keys, good values), and every
    ``[section] key`` the text names exists.
    """
    from presence.config import SCHEMA, Config

    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    snippets = 0
    for block in _literalBlocks(text):
        sections = re.findall(r"^\[([^\]]+)\]\s*$", block, re.M)
        if not any(section in SCHEMA for section in sections):
            continue  # a softphone's configuration, not ours
        snippets += 1
        Config.fromString(block, "README.rst snippet")
    assert snippets >= 5
    named = re.findall(r"``\[(\w+)\]\s+(\w+)", text)
    assert len(named) >= 10
    for section, key in named:
        assert key in SCHEMA.get(section, {}), "README.rst names [%s] %s, which does not exist" % (section, key)


def test_adminUsage():
    code, _, err = _admin()
    assert code == 2 and "a command is required" in err


def test_jsonLogAndRequestEvents(tmp_path):
    """
    [log] json_file writes one JSON event per line, in the conventional
    shape: ISO time, level name, logger, the rendered message, then the
    fields; with [log] requests on, every answered request is an event with
    its method, AOR, code and time.
    """
    import json
    from datetime import datetime

    config = tmp_path / "log.ini"
    logFile = tmp_path / "presence.json"
    config.write_text("[log]\nrequests = yes\njson_file = %s\nlevel = debug\n" % (logFile,))
    server = ServerProcess(str(tmp_path), ["--config", str(config)] + LOOPBACK).start(READY)
    try:
        client = UDPClient(server.ports["UDP"])
        assert client.request("OPTIONS", "sip:127.0.0.1").code == 200
        client.close()
    finally:
        server.stopCleanly()
    events = [json.loads(line) for line in logFile.read_text().splitlines()]
    outcomes = [e for e in events if e.get("method") == "OPTIONS"]
    assert len(outcomes) == 1
    event = outcomes[0]
    assert event["code"] == 200 and event["aor"] == "sip:127.0.0.1"
    assert event["level"] == "debug" and event["elapsed"] >= 0
    assert list(event)[:4] == ["time", "level", "logger", "message"]
    assert datetime.fromisoformat(event["time"]).utcoffset().total_seconds() == 0
    assert not any(key.startswith("log_") for e in events for key in e)
    listening = [e for e in events if e["message"].startswith("SIP listening on")]
    assert len(listening) == 1 and listening[0]["logger"] == "presence.sip.service.SIPService"
    assert "UDP 127.0.0.1:" in listening[0]["message"]


def test_noOptionsRunsEmbeddedDefault(tmp_path):
    """
    twistd -n presence with no options at all: SIP on UDP and TCP 5060, an
    SQLite file in the working directory, one start-up line saying so.
    """
    import socket

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("0.0.0.0", 5060))
            except OSError:
                pytest.skip("port 5060 is in use on this machine")
    server = ServerProcess(str(tmp_path), [], twistdArgs=["presence"]).start(READY)
    try:
        line = server.waitFor("SIP listening on")
        assert "UDP 0.0.0.0:5060, TCP 0.0.0.0:5060; database sqlite:///presence.sqlite" in line
        client = UDPClient(5060)
        assert client.request("OPTIONS", "sip:127.0.0.1").code == 200
        client.close()
        assert (tmp_path / "presence.sqlite").exists()
    finally:
        server.stopCleanly()
