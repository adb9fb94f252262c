"""
A separate billing node end to end: C{twistd presence --role=billing} on
a database provisioned with presence-admin, and a C{--role=manager}
process with its own (account-less) database whose C{[billing] remote}
names the node.  User agents authenticate with digest through the
manager; a block made with presence-admin on the billing database reaches
the manager through the node's push, well within the (long) cache TTL;
with the node down, lookups fail at once (500 with Retry-After) and the
manager logs in again when it is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional

import pytest

from tests.serverprocess import _TWISTD, REPO, ServerProcess
from tests.test_billing_integration import ACCOUNTS, PIDF, UA, presenceAdmin

READY = "Subscription manager"
LOGGED_IN = "Logged in to the billing node"
SECRET = b"a-shared-secret-of-the-test-cluster\n"


class BillingProcess(ServerProcess):
    """
    A billing node in a child process: no SIP, ready once its PB server
    listens and serves.

    @ivar port: the port its PB server listens on.
    """

    port = 0

    def start(self, ready: str = "Billing node serving") -> BillingProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "--logfile=-"]
        self.process = subprocess.Popen(
            command + self.args, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.waitFor("Billing node listening on")
        self.port = int(line.rsplit(":", 1)[1])
        self.waitFor(ready)
        return self


def waitForCount(process: ServerProcess, text: str, count: int, timeout: float = 20.0) -> None:
    """
    Wait until C{process} has logged C{count} lines containing C{text}.
    """
    deadline = time.monotonic() + timeout
    with process._changed:
        while sum(text in line for line in process.output) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process._eof:
                raise AssertionError("%d x %r not seen; output:\n%s" % (count, text, "\n".join(process.output[-80:])))
            process._changed.wait(remaining)


def startBilling(workdir: str, database: str, secret: str, port: int = 0) -> BillingProcess:
    config = os.path.join(workdir, "billing.ini")
    with open(config, "w") as f:
        f.write(
            "[billing]\nlisten = tcp:%d:interface=127.0.0.1\npeer_secret_file = %s\npoll_interval = 0.2\n"
            % (port, secret)
        )
    return BillingProcess(workdir, ["--config", config, "--role", "billing", "--database", database]).start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Any:
    """
    A billing node and a manager using it; C{cluster["billing"]} may be
    replaced by a test that restarts the node.
    """
    workdir = str(tmp_path_factory.mktemp("remotebilling"))
    database = "sqlite:///%s" % (os.path.join(workdir, "billing.sqlite"),)
    presenceAdmin(database, "initdb")
    for aor, customer, password, extra in ACCOUNTS:
        presenceAdmin(database, "account", "add", aor, "--customer", customer, "--password-file", "-", *extra,
                      password=password)
    secret = os.path.join(workdir, "peer.secret")
    with open(secret, "wb") as f:
        f.write(SECRET)
    os.chmod(secret, 0o600)
    state: Dict[str, Any] = {"database": database, "workdir": workdir, "secret": secret}
    state["billing"] = startBilling(workdir, database, secret)
    manager: Optional[ServerProcess] = None
    try:
        config = os.path.join(workdir, "manager.ini")
        with open(config, "w") as f:
            f.write(
                "[manager]\nnode = m1\nnotify_min_interval = 0\n"
                "[billing]\nremote = tcp:127.0.0.1:%d\npeer_secret_file = %s\ncache_ttl = 300\ncall_timeout = 1\n"
                % (state["billing"].port, secret)
            )
        manager = ServerProcess(
            workdir,
            [
                "--config", config,
                "--role", "manager",
                "--database", "sqlite:///%s" % (os.path.join(workdir, "manager.sqlite"),),
                "--listen", "udp:0:interface=127.0.0.1",
                "--listen", "tcp:0:interface=127.0.0.1",
                "--domain", "example.test",
            ],
        ).start(READY)
        manager.waitFor(LOGGED_IN)
        state["manager"] = manager
        yield state
    finally:
        if manager is not None:
            manager.stopCleanly()
        state["billing"].stopCleanly()


def test_authenticatedPresenceThroughTheBillingNode(cluster):
    manager, billing = cluster["manager"], cluster["billing"]
    # The node logs it as the manager does: wait for its line to be read.
    billing.waitFor("Billing node: m1 logged in")
    watcher = UA(manager, "sip:alice@example.test")
    publisher = UA(manager, "sip:bob@example.test")
    try:
        subscribe = watcher.request("SUBSCRIBE", publisher.aor, Event="presence", Expires="300",
                                    Accept="application/pidf+xml")
        _, ok = watcher.authenticated(subscribe)
        assert ok.code == 200
        assert watcher.notify().header("subscription-state") == "active;expires=300"
        body = (PIDF % (publisher.aor, "remote")).encode()
        publish = publisher.request("PUBLISH", publisher.aor, body=body, Event="presence", Expires="120",
                                    Content_Type="application/pidf+xml")
        _, published = publisher.authenticated(publish)
        assert published.code == 200
        assert b'<tuple id="remote"><status><basic>open</basic>' in watcher.notify().body
        # A wrong password is still refused by the manager's digest check.
        _, wrong = publisher.authenticated(publisher.request("PUBLISH", publisher.aor, body=body, Event="presence",
                                                             Content_Type="application/pidf+xml"), password="guess")
        assert wrong.code == 401
        # Blocked on the billing database: the node's push reaches the
        # manager at once, though it caches answers for 300 s.
        presenceAdmin(cluster["database"], "account", "block", "alice@example.test")
        started = time.monotonic()
        final = watcher.notify()
        assert final.header("subscription-state") == "terminated;reason=rejected"
        assert time.monotonic() - started < 5.0
        _, refused = watcher.authenticated(watcher.request("SUBSCRIBE", publisher.aor, Event="presence"))
        assert (refused.code, refused.reason) == (403, "Account Blocked")
    finally:
        presenceAdmin(cluster["database"], "account", "unblock", "alice@example.test")
        watcher.close()
        publisher.close()


def test_billingNodeDownFailsFastAndComesBack(cluster):
    manager, billing = cluster["manager"], cluster["billing"]
    port = billing.port
    billing.stopCleanly()
    manager.waitFor("Lost the billing node")
    dave = UA(manager, "sip:dave@example.test")
    try:
        subscribe = dave.request("SUBSCRIBE", "sip:bob@example.test", Event="presence", Expires="300")
        started = time.monotonic()
        _, failed = dave.authenticated(subscribe)
        assert (failed.code, failed.reason) == (500, "Billing Unavailable")
        assert failed.header("retry-after") and time.monotonic() - started < 1.0
        cluster["billing"] = startBilling(cluster["workdir"], cluster["database"], cluster["secret"], port)
        waitForCount(manager, LOGGED_IN, 2)
        subscribe = dave.request("SUBSCRIBE", "sip:bob@example.test", Event="presence", Expires="300")
        _, ok = dave.authenticated(subscribe)
        assert ok.code == 200
        assert dave.notify().header("subscription-state").startswith("active;")
    finally:
        dave.close()
