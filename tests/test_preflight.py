"""
What is checked before anything starts (presence.preflight, the ordered
keys of presence.config) and C{presence-admin checkconfig}, which reports
it without creating anything.
"""

from __future__ import annotations

import io
import sys

import pytest

from presence.admin.cli import run
from presence.config import Config, ConfigError
from presence.preflight import databaseProblem, problems
from presence.sip.listen import ListenSpec


def _secret(path, text="0123456789abcdef0123"):
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize(
    "ini, message",
    [
        ("[manager]\nmin_expires = 100000\n", "[manager] min_expires = 100000 must not be more than max_expires = 86400"),
        ("[manager]\ndefault_expires = 30\n", "[manager] min_expires = 60 must not be more than default_expires = 30"),
        ("[manager]\npublish_max_expires = 30\n", "publish_min_expires = 60 must not be more than publish_max_expires = 30"),
        ("[registrar]\nmax_expires = 59\n", "[registrar] min_expires = 60 must not be more than max_expires = 59"),
        ("[sip]\nt1 = 5\n", "[sip] t1 = 5 must not be more than t2 = 4"),
        ("[sip]\nmax_body_size = 70000\n", "max_body_size = 70000 must not be more than max_message_size = 65535"),
        ("[sip]\nmax_uri_length = 9000\n", "max_uri_length = 9000 must not be more than max_line_length = 8192"),
    ],
)
def test_orderedKeys(ini, message):
    """
    Keys that bound each other must be in order; equal is fine.
    """
    with pytest.raises(ConfigError) as raised:
        Config.fromString(ini, "p.ini")
    assert str(raised.value).startswith("p.ini: [")
    assert message in str(raised.value)
    Config.fromString("[manager]\nmin_expires = 3600\nmax_expires = 3600\n")


def test_tlsFiles(tmp_path):
    """
    A TLS listener's key and certificate must exist and be what OpenSSL
    takes; each problem names the listener and the file.
    """
    from tests.certs import selfSigned

    key, cert, _ = selfSigned(tmp_path)
    good = ListenSpec.fromString("tls:5061:privateKey=%s:certKey=%s" % (key, cert))
    assert problems(Config(listen=(good,)), database=False) == []
    missing = ListenSpec.fromString("tls:5061:privateKey=%s:certKey=%s" % (tmp_path / "nokey.pem", cert))
    (found,) = problems(Config(listen=(missing,)), database=False)
    assert found == "[server] listen = %s: privateKey=%s: no such file" % (missing, tmp_path / "nokey.pem")
    notKey = ListenSpec.fromString("wss:8443:privateKey=%s:certKey=%s" % (cert, cert))
    (found,) = problems(Config(listen=(notKey,)), database=False)
    assert found.startswith("[server] listen = %s: TLS: " % (notKey,))
    # A dispatcher and a manager serve SIP; a billing node does not.
    node = Config(listen=(missing,), billingPeerSecretFile=_secret(tmp_path / "peer.secret"))
    assert problems(node, "billing", database=False) == []


def test_endpointFiles(tmp_path):
    """
    The files and folders in the endpoints of the admin listeners and PB
    links, when they are used.
    """
    missing = tmp_path / "k.pem"
    config = Config(metricsEnabled=True, metricsListen="ssl:0:privateKey=%s" % (missing,))
    assert problems(config, database=False) == [
        "[metrics] listen = 'ssl:0:privateKey=%s': privateKey=%s: no such file" % (missing, missing)
    ]
    assert problems(config.replace(metricsEnabled=False), database=False) == []
    secret = _secret(tmp_path / "peer.secret")
    remote = "tls:127.0.0.1:8790:trustRoots=%s" % (tmp_path / "ca",)
    config = Config(billingRemote=remote, billingPeerSecretFile=secret)
    assert problems(config, "manager", database=False) == [
        "[billing] remote = %r: trustRoots=%s: no such folder" % (remote, tmp_path / "ca")
    ]


def test_webRoot(tmp_path):
    config = Config(webEnabled=True, webRoot=str(tmp_path / "page"))
    assert problems(config, database=False) == ["[web] root = %r: no such folder" % (str(tmp_path / "page"),)]


def test_jsonLogFolder(tmp_path):
    target = tmp_path / "logs" / "presence.json"
    config = Config(logJsonFile=str(target))
    assert problems(config, database=False) == [
        "[log] json_file = %r: the folder %s does not exist" % (str(target), target.parent)
    ]
    target.parent.mkdir()
    assert problems(config, database=False) == []
    assert not target.exists()
    assert problems(Config(logJsonFile="-"), database=False) == []
    assert "is a folder" in problems(Config(logJsonFile=str(tmp_path)), database=False)[0]


def test_secretFilesPerRole(tmp_path):
    """
    Each role's secrets: the nonce secret for a manager, the peer secret for
    a billing node, the Record-Route secret for a dispatcher.
    """
    nowhere = str(tmp_path / "missing")
    config = Config(billingSecretFile=nowhere, billingPeerSecretFile=nowhere)
    assert problems(config, "manager", database=False) == [
        "[billing] secret_file = %r: cannot read it: No such file or directory" % (nowhere,)
    ]
    found = problems(config.replace(billingSecretFile=""), "billing", database=False)
    assert len(found) == 1 and found[0].startswith("[billing] peer_secret_file = %r" % (nowhere,))
    managers = Config.fromString("[dispatcher]\nmanagers = m1=udp:127.0.0.1:5070\nsecret_file = %s\n" % (nowhere,))
    found = problems(managers, "dispatcher")
    assert len(found) == 1 and found[0].startswith("[dispatcher] secret_file")


def test_sqliteIsNotCreated(tmp_path):
    """
    An SQLite database that does not exist yet is fine when its folder is
    there, and checking it creates nothing; a missing folder, or a file
    that is not a database, is a problem.
    """
    path = tmp_path / "presence.sqlite"
    assert databaseProblem("sqlite:///%s" % (path,)) is None
    assert list(tmp_path.iterdir()) == []
    assert databaseProblem("sqlite:///%s" % (tmp_path / "no" / "p.sqlite",)) == (
        "cannot create the database: the folder %s does not exist" % (tmp_path / "no",)
    )
    path.write_bytes(b"not a database, but long enough to have a header" * 4)
    assert databaseProblem("sqlite:///%s" % (path,)) == "cannot read the database: file is not a database"
    assert databaseProblem("sqlite://") is None


def test_missingDriverNamesThePackage(monkeypatch):
    """
    A URL whose driver is not installed says what to install, not "bad
    database URL".
    """
    monkeypatch.setitem(sys.modules, "pg8000", None)
    assert databaseProblem("postgresql+pg8000://presence@127.0.0.1/presence") == (
        "the database driver pg8000 is not installed: pip install 'presence[postgresql]' "
        "(psycopg on CPython, pg8000 on PyPy)"
    )
    assert databaseProblem("postgresql+nosuch://presence@127.0.0.1/presence") == (
        "unknown database driver 'postgresql+nosuch' (use sqlite, postgresql+psycopg or postgresql+pg8000)"
    )
    assert databaseProblem("no url at all").startswith("bad database URL: ")
    code, _, err = _admin("--database", "postgresql+pg8000://presence@127.0.0.1/presence", "initdb")
    assert (code, err) == (
        1,
        "presence-admin: database 'postgresql+pg8000://presence@127.0.0.1/presence': the database driver pg8000 "
        "is not installed: pip install 'presence[postgresql]' (psycopg on CPython, pg8000 on PyPy)\n",
    )


def _admin(*args: str):
    out, err = io.StringIO(), io.StringIO()
    code = run(list(args), out, err)
    return code, out.getvalue(), err.getvalue()


def test_checkconfigReportsEveryProblem(tmp_path):
    """
    presence-admin checkconfig lists every problem, one line each, exits 1,
    and leaves no file behind; a good file gets one OK line.
    """
    ini = tmp_path / "p.ini"
    database = tmp_path / "db" / "presence.sqlite"
    ini.write_text(
        "[server]\ndatabase = sqlite:///%s\n[log]\njson_file = %s\n[billing]\nsecret_file = %s\n"
        % (database, tmp_path / "logs" / "p.json", tmp_path / "nonce.secret")
    )
    code, out, err = _admin("--config", str(ini), "checkconfig")
    lines = err.splitlines()
    assert code == 1 and out == ""
    assert [line.split(" = ")[0] for line in lines] == [
        "presence-admin: [log] json_file",
        "presence-admin: [billing] secret_file",
        "presence-admin: [server] database",
    ]
    (tmp_path / "db").mkdir()
    (tmp_path / "logs").mkdir()
    _secret(tmp_path / "nonce.secret")
    code, out, err = _admin("--config", str(ini), "checkconfig")
    assert (code, err) == (0, "")
    assert out.startswith("Configuration OK: ")
    assert not database.exists() and list((tmp_path / "logs").iterdir()) == []
    code, _, err = _admin("--config", str(ini), "checkconfig", "--role", "dispatcher")
    assert code == 1 and "[dispatcher] managers" in err
    code, _, err = _admin("--config", str(ini), "checkconfig", "--role", "nosuch")
    assert code == 2 and "--role: 'nosuch'" in err
