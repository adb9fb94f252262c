"""
C{presence-admin mwi} (L{presence.admin.mwi}) and the blocking SIP user
agent it sends its PUBLISH with (L{presence.admin.sipuser}), against a
scripted server on a loopback socket: retransmission over UDP, the digest
answer from the stored HA1, the errors an operator sees. The push to a
real server and phone is in test_baresip_mwi.py.
"""

from __future__ import annotations

import io
import socket
import threading
from typing import List

import pytest

from presence.admin.sipuser import SipUser, SipUserError, serverAddress
from presence.mwi import parseMessageSummary
from presence.sip.digest import MD5, DigestAuthenticator, DigestResult, computeHA1, parseCredentials
from presence.sip.message import Request, Response
from presence.sip.parser import parseMessage
from tests.test_admin_billing import admin, url  # noqa: F401 (the fixture)

ALICE = "sip:alice@example.test"


class ScriptedServer:
    """
    A UDP socket that ignores the first datagram (the client must
    retransmit), challenges the first PUBLISH and answers 200 to one
    with good credentials for password "secret".
    """

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.requests: List[Request] = []
        self.digest = DigestAuthenticator(b"k" * 32, Clock(), 300, (MD5,))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        dropped = False
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                return
            if not dropped:
                dropped = True
                continue
            request = parseMessage(data)
            assert isinstance(request, Request)
            self.requests.append(request)
            authorization = request.header("authorization")
            if authorization is None:
                challenge = self.digest.challenge("example.test")
                response = Response.forRequest(request, 401, headers=[("WWW-Authenticate", v) for v in challenge])
            else:
                credentials = parseCredentials(authorization)
                ha1 = computeHA1(credentials.username, "example.test", "secret", credentials.algorithm)
                result = self.digest.verify(credentials, "PUBLISH", ha1, "example.test")
                code = 200 if result is DigestResult.OK else 403
                response = Response.forRequest(request, code, headers=[("SIP-ETag", "e1"), ("Expires", "3600")])
            self.sock.sendto(response.toBytes(), source)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_serverAddress() -> None:
    assert serverAddress("udp:127.0.0.1:5060") == ("UDP", "127.0.0.1", 5060)
    assert serverAddress("tcp:[::1]:5070") == ("TCP", "::1", 5070)
    for bad in ("127.0.0.1:5060", "tls:h:5061", "udp:h:x", "udp::5060", "udp:h:0"):
        with pytest.raises(ValueError):
            serverAddress(bad)


def test_pushAnswersTheChallenge(url: str) -> None:  # noqa: F811
    """
    The command retransmits over UDP, answers the 401 with the stored
    HA1 of the account and reports the summary it pushed.
    """
    code, _, err = admin("--database", url, "account", "add", "alice@example.test", "--password-file", "-",
                         stdin=io.StringIO("secret\n"))
    assert code == 0, err
    scripted = ScriptedServer()
    try:
        code, out, err = admin("--database", url, "mwi", "alice@example.test", "--new", "3", "--old", "1",
                               "--urgent-new", "1", "--urgent-old", "0",
                               "--server", "udp:127.0.0.1:%d" % (scripted.port,))
    finally:
        scripted.close()
    assert code == 0, err
    assert out == "sip:alice@example.test: messages waiting (3 new, 1 old), for 3600s\n"
    challenged, answered = scripted.requests
    assert challenged.header("authorization") is None and answered.header("authorization")
    assert answered.cseq().number == challenged.cseq().number + 1
    assert answered.header("event") == "message-summary"
    assert answered.header("content-type") == "application/simple-message-summary"
    summary = parseMessageSummary(answered.body)
    assert summary.account == ALICE and summary.countsOf("voice-message") == (3, 1, 1, 0)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["mwi", "nobody@example.test", "--server", "udp:127.0.0.1:9"], 1, "no account sip:nobody@example.test"),
        (["mwi", "alice@example.test", "--urgent-new", "1"], 2, "go together"),
        (["mwi", "alice@example.test", "--new", "-1"], 2, "non-negative"),
        (["mwi", "alice@example.test", "--server", "udp:nowhere"], 2, "udp:HOST:PORT"),
        (["mwi", "not an aor"], 1, ""),
    ],
)
def test_pushErrors(url: str, args: List[str], code: int, message: str) -> None:  # noqa: F811
    got, _, err = admin("--database", url, *args)
    assert got == code, err
    assert message in err


def test_noAnswerIsAnError() -> None:
    """
    A server that never answers: an error after the transaction timeout,
    not a hang.
    """
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    user = SipUser("UDP", "127.0.0.1", silent.getsockname()[1], timeout=1.8)
    try:
        with pytest.raises(SipUserError, match="no answer"):
            user.send(user.newRequest("OPTIONS", "sip:example.test", ALICE))
        # Sent at 0, 0.5 and 1.5 s: Timer E doubling from T1.
        silent.settimeout(0.1)
        received = 0
        try:
            while True:
                silent.recv(65535)
                received += 1
        except socket.timeout:
            pass
        assert received == 3
    finally:
        user.close()
        silent.close()


def test_refusedConnectionIsAnError(url: str) -> None:  # noqa: F811
    code, _, err = admin("--database", url, "account", "add", "alice@example.test", "--password-file", "-",
                         stdin=io.StringIO("secret\n"))
    assert code == 0, err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = admin("--database", url, "mwi", "alice@example.test", "--server", "tcp:127.0.0.1:%d" % (port,))
    assert code == 1 and "cannot reach 127.0.0.1:%d over TCP" % (port,) in err, err
