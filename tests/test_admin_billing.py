"""
C{presence-admin account|policy|watchers}: provisioning on the server's
database, passwords from a file, standard input or a prompt (never the
command line), and one-line errors with nothing half-written.
"""

from __future__ import annotations

import getpass
import io
import os
import subprocess
import sys
from typing import Any, List, Optional, Tuple

import pytest
import sqlalchemy as sa

from presence.admin.cli import run
from presence.billing import db
from presence.sip.digest import MD5, SHA256, computeHA1
from presence.store import schema
from presence.store.sql import createEngine
from tests.serverprocess import REPO


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def admin(*args: str, stdin: Optional[Any] = None) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(args), out, err, stdin if stdin is not None else io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def url(tmp_path: Any) -> str:
    value = "sqlite:///%s" % (tmp_path / "admin.sqlite",)
    assert admin("--database", value, "initdb")[0] == 0
    return value


def read(url: str, work: Any) -> Any:
    engine = createEngine(url, poolSize=1)
    try:
        with engine.connect() as conn:
            return work(conn)
    finally:
        engine.dispose()


def changes(url: str) -> List[str]:
    rows, _ = read(url, lambda conn: db.changesSince(conn, 0))
    return [aor for _, aor in rows]


def test_accountLifecycle(url, tmp_path):
    code, out, err = admin("--database", url, "account", "add", "alice@example.test", "--customer", "acme",
                           "--password-file", "-", stdin=io.StringIO("s3cret\n"))
    assert (code, err) == (0, "")
    assert out == "Account sip:alice@example.test added (customer acme)\n"
    account = read(url, lambda conn: db.getAccount(conn, "sip:alice@example.test"))
    assert account.ha1Md5 == computeHA1("alice", "example.test", "s3cret", MD5)
    assert account.ha1Sha256 == computeHA1("alice", "example.test", "s3cret", SHA256)
    code, out, _ = admin("--database", url, "account", "show", "sip:alice@example.test")
    assert code == 0
    assert "customer: acme\n" in out and "status: active\n" in out and "presence: enabled\n" in out
    assert account.ha1Md5 not in out and "s3cret" not in out

    passwordFile = tmp_path / "pw"
    passwordFile.write_text("n3w\r\nignored second line\n")
    assert admin("--database", url, "account", "passwd", "alice@example.test", "-p", str(passwordFile))[0] == 0
    account = read(url, lambda conn: db.getAccount(conn, "sip:alice@example.test"))
    assert account.ha1Md5 == computeHA1("alice", "example.test", "n3w", MD5)

    assert admin("--database", url, "account", "block", "alice@example.test")[1] == "Account sip:alice@example.test blocked\n"
    assert read(url, lambda conn: db.getAccount(conn, "sip:alice@example.test")).status == "blocked"
    assert admin("--database", url, "account", "unblock", "alice@example.test")[0] == 0
    code, out, _ = admin("--database", url, "account", "modify", "alice@example.test", "--presence", "no", "--customer", "globex")
    assert code == 0 and "presence: disabled\n" in out and "customer: globex\n" in out

    admin("--database", url, "account", "add", "bob@example.test", "-p", "-", "--blocked", "--no-presence",
          "--username", "b0b", stdin=io.StringIO("pw\n"))
    code, out, _ = admin("--database", url, "account", "list")
    assert out == (
        "sip:alice@example.test customer=globex status=active presence=off\n"
        "sip:bob@example.test customer=example.test status=blocked presence=off\n"
    )
    assert admin("--database", url, "account", "list", "--customer", "globex")[1].count("\n") == 1
    assert admin("--database", url, "account", "remove", "bob@example.test")[0] == 0
    assert read(url, lambda conn: db.getAccount(conn, "sip:bob@example.test")) is None
    assert changes(url) == ["sip:alice@example.test"] * 6 + ["sip:bob@example.test"] * 2


def test_passwordPrompt(url, monkeypatch):
    prompts: List[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return "typed"

    monkeypatch.setattr(getpass, "getpass", prompt)
    code, out, err = admin("--database", url, "account", "add", "carol@example.test", stdin=FakeTerminal())
    assert (code, err) == (0, "")
    assert prompts == ["Password: ", "Password again: "]
    account = read(url, lambda conn: db.getAccount(conn, "sip:carol@example.test"))
    assert account.ha1Md5 == computeHA1("carol", "example.test", "typed", MD5)


def test_passwordsThatDifferOrLackAreRefused(url, monkeypatch):
    answers = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda text: next(answers))
    code, _, err = admin("--database", url, "account", "add", "dan@example.test", stdin=FakeTerminal())
    assert (code, err) == (1, "presence-admin: the passwords differ\n")
    # Not a terminal and no --password-file: refused, never hangs.
    code, _, err = admin("--database", url, "account", "add", "dan@example.test")
    assert code == 1 and "--password-file" in err
    code, _, err = admin("--database", url, "account", "add", "dan@example.test", "-p", "-", stdin=io.StringIO("\n"))
    assert (code, err) == (1, "presence-admin: empty password\n")
    code, _, err = admin("--database", url, "account", "add", "dan@example.test", "-p", "/nonexistent/pw")
    assert code == 1 and err.startswith("presence-admin: cannot read password file /nonexistent/pw")
    assert read(url, lambda conn: db.listAccounts(conn)) == []
    assert changes(url) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["account", "add", "not an aor", "-p", "-"], "presence-admin: malformed AOR 'not an aor': "),
        (["account", "add", "alice@example.test:5060", "-p", "-"], "presence-admin: malformed AOR"),
        (["account", "add", "alice@example.test", "-p", "-"], "presence-admin: account sip:alice@example.test exists already\n"),
        (["account", "add", "x@example.test", "-p", "-", "--customer", "a b"], "presence-admin: malformed customer 'a b'"),
        (["account", "show", "nobody@example.test"], "presence-admin: no account sip:nobody@example.test\n"),
        (["account", "remove", "nobody@example.test"], "presence-admin: no account sip:nobody@example.test\n"),
        (["account", "block", "nobody@example.test"], "presence-admin: no account sip:nobody@example.test\n"),
        (["account", "passwd", "nobody@example.test", "-p", "-"], "presence-admin: no account sip:nobody@example.test\n"),
        (["policy", "allow", "nobody@example.test", "*"], "presence-admin: no account sip:nobody@example.test\n"),
        (["policy", "allow", "alice@example.test", "@"], "presence-admin: malformed domain ''"),
        (["policy", "show", "bad aor"], "presence-admin: malformed AOR"),
        (["watchers", "sip:"], "presence-admin: malformed AOR"),
    ],
)
def test_badInputOneLineNothingWritten(url, args, message):
    admin("--database", url, "account", "add", "alice@example.test", "-p", "-", stdin=io.StringIO("pw\n"))
    before = (changes(url), read(url, lambda conn: db.listAccounts(conn)))
    code, out, err = admin("--database", url, *args, stdin=io.StringIO("pw\n"))
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1 and err.endswith("\n")
    assert (changes(url), read(url, lambda conn: db.listAccounts(conn))) == before


def test_usageErrors(url):
    for args in (["account"], ["account", "add"], ["policy", "allow", "alice@example.test"], ["account", "frob"],
                 ["account", "modify", "alice@example.test"], ["account", "add", "a@example.test", "--bogus"]):
        code, out, err = admin("--database", url, *args)
        assert code == 2 and out == "" and err.startswith("presence-admin: ") and err.count("\n") == 1, (args, err)


def test_databaseErrors(tmp_path):
    code, _, err = admin("--database", "postgresql+psycopg://nobody@127.0.0.1:1/none", "account", "list")
    assert code == 1 and err.startswith("presence-admin: cannot reach database") and err.count("\n") == 1
    fresh = "sqlite:///%s" % (tmp_path / "fresh.sqlite",)
    code, _, err = admin("--database", fresh, "account", "list")
    assert (code, err) == (1, "presence-admin: the database is not initialised: run presence-admin initdb\n")
    old = "sqlite:///%s" % (tmp_path / "old.sqlite",)
    engine = createEngine(old)
    with engine.connect() as conn:
        with conn.begin():
            schema.upgrade(conn, target=1)
    engine.dispose()
    code, _, err = admin("--database", old, "account", "add", "a@example.test", "-p", "-", stdin=io.StringIO("pw\n"))
    assert code == 1 and "run presence-admin upgradedb" in err
    assert admin("--database", old, "upgradedb")[0] == 0
    assert admin("--database", old, "account", "add", "a@example.test", "-p", "-", stdin=io.StringIO("pw\n"))[0] == 0


def test_configFileNamesTheDatabase(url, tmp_path):
    config = tmp_path / "presence.ini"
    config.write_text("[server]\ndatabase = %s\n" % (url,))
    code, out, _ = admin("--config", str(config), "account", "add", "eve@example.test", "-p", "-", stdin=io.StringIO("pw\n"))
    assert code == 0
    assert admin("--config", str(config), "account", "list")[1].startswith("sip:eve@example.test ")


def test_policyCommands(url):
    for aor, customer in (("bob@example.test", "acme"), ("alice@example.test", "acme")):
        admin("--database", url, "account", "add", aor, "--customer", customer, "-p", "-", stdin=io.StringIO("pw\n"))
    assert admin("--database", url, "policy", "ask", "bob@example.test", "alice@example.test")[1] == (
        "sip:bob@example.test: ask sip:alice@example.test\n"
    )
    admin("--database", url, "policy", "block", "bob@example.test", "@Evil.test")
    admin("--database", url, "policy", "allow", "bob@example.test", "*")
    code, out, _ = admin("--database", url, "policy", "show", "bob@example.test")
    assert code == 0
    assert out == (
        "Rules of sip:bob@example.test (customer acme):\n"
        "  ask sip:alice@example.test\n"
        "  block @evil.test\n"
        "  allow *\n"
        "  default: watchers of customer acme allowed, others blocked\n"
    )
    assert admin("--database", url, "policy", "clear", "bob@example.test", "*")[1] == "Removed 1 rule of sip:bob@example.test\n"
    assert admin("--database", url, "policy", "clear", "bob@example.test")[1] == "Removed 2 rules of sip:bob@example.test\n"
    assert read(url, lambda conn: db.rulesOf(conn, "sip:bob@example.test")) == {}


def test_watchers(url):
    def insert(conn: Any) -> None:
        row = dict(
            call_id="c", local_tag="l", remote_tag="r", presentity="sip:bob@example.test", event="presence",
            accept="application/pidf+xml", remote_target="sip:x@192.0.2.1", owner="m1", transport="UDP",
            peer_host="192.0.2.1", peer_port=5060, created_at=0.0, route_set="[]", event_id="", local_cseq=0,
            remote_cseq=1, flow_token="",
        )
        conn.execute(sa.insert(schema.subscriptions), [
            dict(row, id="s1", watcher="sip:alice@example.test", state="active", expires_at=4e9),
            dict(row, id="s2", watcher="sip:carol@example.test", state="pending", expires_at=4e9),
        ])

    engine = createEngine(url, poolSize=1)
    with engine.begin() as conn:
        insert(conn)
    engine.dispose()
    code, out, _ = admin("--database", url, "watchers", "bob@example.test")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("sip:alice@example.test active expires in ") and lines[0].endswith("(manager m1)")
    assert lines[1].startswith("sip:carol@example.test pending ")
    assert admin("--database", url, "watchers", "alice@example.test")[1] == "Nobody watches sip:alice@example.test\n"


def test_consoleScript(url):
    """
    The installed entry point, run as a process, reading the password on
    standard input (as in the README).
    """
    result = subprocess.run(
        [sys.executable, "-c", "from presence.admin.cli import main; main()",
         "--database", url, "account", "add", "zoe@example.test", "--password-file", "-"],
        input=b"zoe-pw\n", capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Account sip:zoe@example.test added (customer example.test)\n"
    result = subprocess.run(
        [sys.executable, "-c", "from presence.admin.cli import main; main()",
         "--database", url, "account", "add", "zoe@example.test", "--password-file", "-"],
        input=b"zoe-pw\n", capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert result.returncode == 1
    assert result.stderr == b"presence-admin: account sip:zoe@example.test exists already\n"


def test_checkconfigChecksTheSecretFile(tmp_path, url):
    secret = tmp_path / "billing.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(secret, 0o644)
    config = tmp_path / "presence.ini"
    config.write_text("[server]\ndatabase = %s\n[billing]\nsecret_file = %s\n" % (url, secret))
    code, _, err = admin("--config", str(config), "checkconfig")
    assert code == 1 and "chmod 600" in err and err.count("\n") == 1
    os.chmod(secret, 0o600)
    assert admin("--config", str(config), "checkconfig")[0] == 0
