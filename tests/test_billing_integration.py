"""
Accounts and authorization end to end: accounts made with the
presence-admin console script, a real C{twistd -n presence}, and user
agents that authenticate with digest -- our own client (SHA-256 and MD5)
and sipp's [authentication] (MD5: sipp 3.6.1 implements no other, and
is offered nothing else).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Optional, Tuple

import pytest

from presence.sip.digest import MD5, SHA256, makeAuthorization, parseChallenge
from presence.sip.message import Request, Response
from tests.conftest import requireTool
from tests.serverprocess import REPO, ServerProcess
from tests.sipclient import TCPClient, UDPClient, answer, newRequest

HERE = os.path.dirname(os.path.abspath(__file__))
READY = "Subscription manager"
PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="%s"><status><basic>open</basic></status></tuple></presence>\n'
)
ACCOUNTS = [
    # aor, customer, password, extra options
    ("alice@example.test", "acme", "alice-pw", []),
    ("bob@example.test", "acme", "bob-pw", []),
    ("dave@example.test", "acme", "dave-pw", []),
    ("carol@example.test", "globex", "carol-pw", []),
    ("mallory@example.test", "acme", "mallory-pw", ["--blocked"]),
    ("sippw@example.test", "acme", "wpass", []),
    ("sippp@example.test", "acme", "ppass", []),
]
PASSWORDS = {"sip:" + aor: password for aor, _, password, _ in ACCOUNTS}


def presenceAdmin(database: str, *args: str, password: Optional[str] = None) -> str:
    """
    Run the presence-admin console script in its own process.
    """
    result = subprocess.run(
        [sys.executable, "-c", "from presence.admin.cli import main; main()", "--database", database] + list(args),
        input=(password + "\n").encode() if password is not None else b"",
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _start(workdir: str, database: str, billing: str) -> ServerProcess:
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        f.write("[manager]\nnotify_min_interval = 0\n[billing]\npoll_interval = 0.2\n" + billing)
    return ServerProcess(
        workdir,
        [
            "--config", config,
            "--database", database,
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--domain", "example.test",
        ],
    ).start(READY)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> Tuple[str, str]:
    workdir = str(tmp_path_factory.mktemp("billing"))
    database = "sqlite:///%s" % (os.path.join(workdir, "presence.sqlite"),)
    presenceAdmin(database, "initdb")
    for aor, customer, password, extra in ACCOUNTS:
        out = presenceAdmin(database, "account", "add", aor, "--customer", customer, "--password-file", "-", *extra,
                            password=password)
        assert out.startswith("Account sip:%s added" % (aor,))
    return workdir, database


@pytest.fixture(scope="module")
def server(provisioned):
    workdir, database = provisioned
    process = _start(workdir, database, "")
    yield process
    process.stopCleanly()


class UA:
    """
    One user agent account on a socket: sends a request, answers the
    challenge with its credentials, and answers NOTIFYs.
    """

    def __init__(self, server: Any, aor: str, transport: str = "UDP", algorithm: str = SHA256) -> None:
        self.aor = aor
        self.transport = transport
        self.algorithm = algorithm
        self.client = UDPClient(server.ports["UDP"]) if transport == "UDP" else TCPClient(server.ports["TCP"])
        self.password = PASSWORDS[aor]

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, uri: str, **headers: str) -> Request:
        return newRequest(method, uri, self.client.port, self.transport, fromURI=self.aor, **headers)

    def authenticated(
        self, request: Request, password: Optional[str] = None, username: Optional[str] = None
    ) -> Tuple[Response, Response]:
        """
        Send C{request}; answer its 401 with credentials (CSeq + 1, new
        branch), of C{username} (by default this UA's user).  @return: the
        401 and the final answer.
        """
        self.client.send(request)
        challenge = self._response()
        assert challenge.code == 401, challenge
        offered = challenge.headerValues("www-authenticate")
        chosen = [v for v in offered if parseChallenge(v).algorithm == self.algorithm][0]
        retry = _again(request)
        retry.setHeader(
            "Authorization",
            makeAuthorization(chosen, retry.method, retry.uri, username or self.aor[4:].split("@")[0],
                              password if password is not None else self.password),
        )
        self.client.send(retry)
        return challenge, self._response()

    def _response(self) -> Response:
        """
        The next response; retransmissions of NOTIFYs already seen before
        it are answered again and skipped.
        """
        message = self.client.receiveMessage()
        while isinstance(message, Request) and self._retransmitted(message):
            message = self.client.receiveMessage()
        assert isinstance(message, Response), message
        return message

    def _retransmitted(self, message: Request) -> bool:
        """
        Answer the NOTIFY C{message}; whether it was seen before (the test
        was busy running presence-admin while Timer E ran).
        """
        assert message.method == "NOTIFY", message
        self.client.send(answer(message))
        seen = getattr(self, "_seen", set())
        self._seen = seen
        key = (message.callId, message.cseq().number)
        if key in seen:
            return True
        seen.add(key)
        return False

    def notify(self) -> Request:
        """
        The next new NOTIFY, answered; retransmissions of NOTIFYs already
        seen are answered again and skipped.
        """
        while True:
            message = self.client.receiveMessage()
            assert isinstance(message, Request), message
            if not self._retransmitted(message):
                return message


def _again(request: Request) -> Request:
    """
    The same request with the next CSeq and a new branch, as a UA resends
    it with credentials.
    """
    copy = Request(request.method, request.uri)
    for name, values in request.headers.items():
        for value in values:
            copy.addHeader(name, value)
    copy.body = request.body
    via = copy.header("via")
    copy.setHeader("Via", via.replace(";branch=z9hG4bK", ";branch=z9hG4bKr"))
    number, method = copy.header("cseq").split()
    copy.setHeader("CSeq", "%d %s" % (int(number) + 1, method))
    return copy


@pytest.mark.parametrize("transport, watchAlgorithm, publishAlgorithm", [("UDP", SHA256, MD5), ("TCP", MD5, SHA256)])
def test_authorizedWatcherSeesPublication(server, transport, watchAlgorithm, publishAlgorithm):
    watcher = UA(server, "sip:alice@example.test", transport, watchAlgorithm)
    publisher = UA(server, "sip:bob@example.test", transport, publishAlgorithm)
    try:
        subscribe = watcher.request("SUBSCRIBE", publisher.aor, Event="presence", Expires="300",
                                    Accept="application/pidf+xml")
        challenge, ok = watcher.authenticated(subscribe)
        assert [parseChallenge(v).algorithm for v in challenge.headerValues("www-authenticate")] == [SHA256, MD5]
        assert ok.code == 200
        first = watcher.notify()
        assert first.header("subscription-state") == "active;expires=300"
        assert b'entity="sip:bob@example.test"' in first.body
        assert b'<tuple id="' + transport.encode() not in first.body
        body = (PIDF % (publisher.aor, transport)).encode()
        publish = publisher.request("PUBLISH", publisher.aor, body=body, Event="presence", Expires="120",
                                    Content_Type="application/pidf+xml")
        _, published = publisher.authenticated(publish)
        assert published.code == 200 and published.header("sip-etag")
        second = watcher.notify()
        assert b'<tuple id="' + transport.encode() + b'"><status><basic>open</basic>' in second.body
        # End it, authenticated in the dialog.
        bye = watcher.request("SUBSCRIBE", publisher.aor, Event="presence", Expires="0")
        bye.setHeader("Call-ID", subscribe.callId)
        bye.setHeader("From", subscribe.header("from"))
        bye.setHeader("To", ok.header("to"))
        bye.setHeader("CSeq", "10 SUBSCRIBE")
        _, done = watcher.authenticated(bye)
        assert done.code == 200
        assert watcher.notify().header("subscription-state") == "terminated;reason=timeout"
    finally:
        watcher.close()
        publisher.close()


def test_otherCustomerRefused(server):
    carol = UA(server, "sip:carol@example.test")
    try:
        _, refused = carol.authenticated(carol.request("SUBSCRIBE", "sip:bob@example.test", Event="presence"))
        assert (refused.code, refused.reason) == (403, "Not Authorized To Watch")
        assert carol.client.receiveNothing() is None
    finally:
        carol.close()


def test_blockedAccountForbidden(server):
    mallory = UA(server, "sip:mallory@example.test")
    try:
        _, refused = mallory.authenticated(mallory.request("SUBSCRIBE", "sip:bob@example.test", Event="presence"))
        assert (refused.code, refused.reason) == (403, "Account Blocked")
        body = (PIDF % (mallory.aor, "m")).encode()
        _, refused = mallory.authenticated(mallory.request(
            "PUBLISH", mallory.aor, body=body, Event="presence", Content_Type="application/pidf+xml"))
        assert refused.code == 403
    finally:
        mallory.close()


def test_wrongPasswordAndUnknownAccount(server):
    alice = UA(server, "sip:alice@example.test")
    try:
        _, wrong = alice.authenticated(alice.request("SUBSCRIBE", "sip:bob@example.test", Event="presence"),
                                       password="guess")
        assert wrong.code == 401 and len(wrong.headerValues("www-authenticate")) == 2
    finally:
        alice.close()
    PASSWORDS["sip:nobody@example.test"] = "guess"
    nobody = UA(server, "sip:nobody@example.test")
    try:
        _, unknown = nobody.authenticated(nobody.request("SUBSCRIBE", "sip:bob@example.test", Event="presence"))
        assert unknown.code == 401 and unknown.reason == wrong.reason
        assert len(unknown.headerValues("www-authenticate")) == 2
    finally:
        nobody.close()
        del PASSWORDS["sip:nobody@example.test"]


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_credentialsOfAnotherAccountForbidden(server, transport):
    """
    A UA with alice's good credentials acting for bob -- subscribing as
    bob, publishing bob's presence, registering bob's address -- gets one
    403 each, not another 401 that it would answer again for ever.
    """
    ua = UA(server, "sip:bob@example.test", transport)
    alice = {"username": "alice", "password": PASSWORDS["sip:alice@example.test"]}
    try:
        _, refused = ua.authenticated(ua.request("SUBSCRIBE", "sip:dave@example.test", Event="presence"), **alice)
        assert (refused.code, refused.reason) == (403, "Credentials Of Another Account")
        body = (PIDF % (ua.aor, "x")).encode()
        publish = ua.request("PUBLISH", ua.aor, body=body, Event="presence", Content_Type="application/pidf+xml")
        _, refused = ua.authenticated(publish, **alice)
        assert refused.code == 403
        register = ua.request("REGISTER", "sip:example.test", To="<%s>" % (ua.aor,))
        _, refused = ua.authenticated(register, **alice)
        assert (refused.code, refused.reason) == (403, "Credentials Of Another Account")
        server.waitFor("sip:alice@example.test authenticated from 127.0.0.1 for sip:bob@example.test")
    finally:
        ua.close()


def test_policyChangesReachRunningServer(server, provisioned):
    """
    presence-admin changes the policy while dave watches bob: ask makes the
    subscription pending (no state), allow makes it active with the state,
    block ends it with reason=rejected, each within the poll interval.
    """
    _, database = provisioned
    dave = UA(server, "sip:dave@example.test")
    try:
        subscribe = dave.request("SUBSCRIBE", "sip:bob@example.test", Event="presence", Expires="300")
        _, ok = dave.authenticated(subscribe)
        assert ok.code == 200
        assert dave.notify().header("subscription-state").startswith("active;")
        presenceAdmin(database, "policy", "ask", "bob@example.test", "dave@example.test")
        pending = dave.notify()
        assert pending.header("subscription-state").startswith("pending;") and pending.body == b""
        out = presenceAdmin(database, "watchers", "bob@example.test")
        assert "sip:dave@example.test pending" in out
        presenceAdmin(database, "policy", "allow", "bob@example.test", "dave@example.test")
        active = dave.notify()
        assert active.header("subscription-state").startswith("active;") and b"<basic>" in active.body
        presenceAdmin(database, "policy", "block", "bob@example.test", "dave@example.test")
        final = dave.notify()
        assert final.header("subscription-state") == "terminated;reason=rejected" and final.body == b""
        # The final NOTIFY goes once the subscription is deleted.
        assert "sip:dave@example.test" not in presenceAdmin(database, "watchers", "bob@example.test")
    finally:
        presenceAdmin(database, "policy", "clear", "bob@example.test")
        dave.close()


def test_sippAuthentication(provisioned, tmp_path):
    """
    sipp answers the challenges itself ([authentication]), including a
    wrong password that must be challenged again, with the default
    settings.  sipp 3.6.1 computes MD5 only and answers the first
    challenge it gets: the scenario sends "User-Agent: sipp", which is
    offered MD5 alone (presence.billing.quirks); our client covers
    SHA-256.  sipp's digest uri defaults to the remote address, hence
    -auth_uri.
    """
    sipp = requireTool("sipp")
    workdir, database = provisioned
    sub = tmp_path / "defaults"
    sub.mkdir()
    process = _start(str(sub), database, "")
    try:
        result = subprocess.run(
            [
                sipp, "127.0.0.1:%d" % (process.ports["UDP"],),
                "-sf", os.path.join(HERE, "sipp", "auth_watch_publish.xml"),
                "-auth_uri", "sippp@example.test",
                "-t", "u1", "-i", "127.0.0.1", "-p", str(_freePort()),
                "-m", "1", "-l", "1", "-timeout", "30s", "-timeout_error",
                "-nostdin", "-trace_err", "-error_file", str(tmp_path / "errors.log"),
            ],
            capture_output=True,
            timeout=60,
            cwd=str(tmp_path),
        )
        errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
        assert result.returncode == 0, errors[-3000:] + result.stderr.decode("utf-8", "replace")[-2000:]
        assert "Authentication failed for sip:sippp@example.test" in process.log()
    finally:
        process.stopCleanly()


def test_sipsakRegisters(tmp_path):
    """
    sipsak 0.9.8 registers with digest against the shipped
    etc/presence.ini unchanged: it reads only the first challenge and
    stops on SHA-256, and its User-Agent is offered MD5 alone.  A wrong
    password fails.  sipsak resolves the domain of its target even with
    an outbound proxy, so the account is alice@localhost.
    """
    sipsak = requireTool("sipsak")
    database = "sqlite:///%s" % (tmp_path / "presence.sqlite",)
    presenceAdmin(database, "initdb")
    presenceAdmin(database, "account", "add", "alice@localhost", "--customer", "acme", "--password-file", "-",
                  password="alice-pw")
    process = ServerProcess(
        str(tmp_path),
        ["--config", os.path.join(REPO, "etc", "presence.ini"), "--database", database,
         "--listen", "udp:0:interface=127.0.0.1", "--domain", "localhost"],
    ).start(READY)
    try:
        def register(password: str) -> "subprocess.CompletedProcess[bytes]":
            return subprocess.run(
                [sipsak, "-U", "-s", "sip:alice@localhost", "-p", "127.0.0.1:%d" % (process.ports["UDP"],),
                 "-u", "alice", "-a", password, "-x", "600", "-H", "127.0.0.1", "-i", "-vv"],
                capture_output=True, timeout=60, cwd=str(tmp_path),
            )

        result = register("alice-pw")
        assert result.returncode == 0, result.stdout.decode("utf-8", "replace")[-3000:]
        assert register("guess").returncode != 0
        process.waitFor("Authentication failed for sip:alice@localhost")
    finally:
        process.stopCleanly()


def _freePort() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_badSecretFileStopsStartUp(tmp_path):
    """
    A secret file others can read stops twistd with one line.
    """
    secret = tmp_path / "billing.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(secret, 0o644)
    config = tmp_path / "presence.ini"
    config.write_text("[billing]\nsecret_file = %s\n" % (secret,))
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
         "--logfile=-", "presence", "--config", str(config),
         "--database", "sqlite:///%s" % (tmp_path / "p.sqlite",)],
        cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "secret_file" in lines[0] and "chmod 600" in lines[0], result.stderr
