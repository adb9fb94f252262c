"""
Linphone against a real C{twistd -n presence}: Debian's console Linphone
(C{linphonec} from C{linphone-cli}, liblinphone 5.1) with the account and
friend settings README.rst gives, and a baresip as the other user, over UDP
and TCP.

linphonec has no command to set its own presence: Linphone's presence is
what it publishes when it starts (open) and withdraws when it quits.  With
C{-S} it prints its friends' presence as it changes, which the test reads.

Skips without linphonec or baresip (fails with PRESENCE_REQUIRE_ALL=1).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, List, Optional

import pytest

from tests.conftest import skipOrFail
from tests.test_baresip import (  # noqa: F401 (fixtures)
    PASSWORD,
    TIMEOUT,
    _freePorts,
    baresip,
    server,
    shippedServer,
    waitCount,
)


def linphoneRc(user: str, transport: str, serverPort: int, sipPort: int, friend: str) -> str:
    """
    The tested Linphone settings, as a linphonerc: the account (identity,
    proxy as outbound proxy with a route, transport, publish presence) and
    one friend whose presence it subscribes to.
    """
    lower = transport.lower()
    return (
        "[sip]\n"
        "sip_port=%(sip)d\n"
        "sip_tcp_port=%(sip)d\n"
        "sip_tls_port=-1\n"
        "bind_address=127.0.0.1\n"
        "default_proxy=0\n"
        "\n"
        "[proxy_0]\n"
        "reg_proxy=<sip:127.0.0.1:%(port)d;transport=%(t)s>\n"
        "reg_route=<sip:127.0.0.1:%(port)d;transport=%(t)s;lr>\n"
        'reg_identity="%(User)s" <sip:%(user)s@example.test>\n'
        "reg_expires=600\n"
        "reg_sendregister=1\n"
        "publish=1\n"
        "publish_expires=600\n"
        "\n"
        "[auth_info_0]\n"
        "username=%(user)s\n"
        "passwd=%(password)s\n"
        "realm=example.test\n"
        "domain=example.test\n"
        "\n"
        "[friend_0]\n"
        'url="%(Friend)s" <sip:%(friend)s@example.test>\n'
        "pol=accept\n"
        "subscribe=1\n"
    ) % dict(
        sip=sipPort, port=serverPort, t=lower, user=user, User=user.capitalize(),
        friend=friend, Friend=friend.capitalize(), password=PASSWORD,
    )


class Linphonec:
    """
    One linphonec process, kept alive by an open stdin.  With C{-S} it
    prints the presence of its friends as it learns it ("Friend ... is
    Online"), which the test waits for.
    """

    def __init__(self, workdir: str, user: str, transport: str, serverPort: int, friend: str) -> None:
        self.home = os.path.join(workdir, "linphone-" + user)
        # liblinphone keeps its database under $HOME and does not start
        # without the directory.
        os.makedirs(os.path.join(self.home, ".local", "share", "linphone"), exist_ok=True)
        self.rc = os.path.join(self.home, "linphonerc")
        with open(self.rc, "w") as f:
            f.write(linphoneRc(user, transport, serverPort, _freePorts(1), friend))
        self.process: Optional[subprocess.Popen] = None
        self.output: List[str] = []
        self._changed = threading.Condition()
        self._eof = False

    def start(self, executable: str) -> Linphonec:
        self.process = subprocess.Popen(
            [executable, "-S", "-c", self.rc, "-l", os.path.join(self.home, "linphone.log"), "-d", "4"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HOME=self.home),
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.output.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def waitOutput(self, text: str, after: int = 0, timeout: float = TIMEOUT) -> int:
        """
        Wait for a line containing C{text} among the lines from index
        C{after} on; return the index just past it.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.output)):
                    if text in self.output[index]:
                        return index + 1
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError("linphonec never printed %r; output:\n%s" % (text, "\n".join(self.output[-60:])))
                self._changed.wait(remaining)

    def quit(self) -> None:
        """
        Quit as a user would: liblinphone un-publishes and un-registers.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.stdin.write(b"quit\n")  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(5)
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process = None


@pytest.fixture
def linphonec() -> str:
    path = shutil.which("linphonec")
    if path is None:
        skipOrFail("linphonec is not installed (Debian package: linphone-cli)")
    return path  # type: ignore[return-value]


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_linphoneWithBaresip(server: Any, linphonec: str, tmp_path: Any, transport: str) -> None:  # noqa: F811
    """
    Linphone (alice) registers, publishes and subscribes to bob (a
    baresip): bob's presence_offline and presence_online reach it.  bob
    watches alice: Online while Linphone runs and publishes, Offline once
    it has quit (un-PUBLISH and un-REGISTER).
    """
    bob = server.client("bob", transport, ['"Alice" <sip:alice@example.test>;presence=p2p'])
    bob.registered()
    alice = Linphonec(str(tmp_path), "alice", transport, server.ports[transport], "bob").start(linphonec)
    try:
        waitCount(server, r"PUBLISH sip:alice@example.test from %s:\S+ -> 200" % (transport,))
        waitCount(server, r"SUBSCRIBE sip:bob@example.test from %s:\S+ -> 200" % (transport,))
        bob.waitStatus("alice", "Online")
        seen = 0
        for command, status in (("presence_offline", "Offline"), ("presence_online", "Online"),
                                ("presence_offline", "Offline")):
            bob.command(command)
            seen = alice.waitOutput('Friend "Bob" <sip:bob@example.test> is %s' % (status,), seen)
    finally:
        alice.quit()
    # Offline: its publication withdrawn and its registration (which
    # would keep it open for ten minutes) removed.
    bob.waitStatus("alice", "Offline")


def test_shippedConfiguration(shippedServer: Any, linphonec: str, tmp_path: Any) -> None:  # noqa: F811
    """
    With etc/presence.ini unchanged, Linphone logs in beside a baresip
    and keeps SHA-256: it registers, its PUBLISH reaches bob (Online),
    its SUBSCRIBE brings bob's changes; every Authorization it sent
    names SHA-256, while baresip was served MD5.
    """
    bob = shippedServer.client("bob", "UDP", ['"Alice" <sip:alice@example.test>;presence=p2p'])
    bob.registered()
    alice = Linphonec(str(tmp_path), "alice", "UDP", shippedServer.ports["UDP"], "bob").start(linphonec)
    try:
        bob.waitStatus("alice", "Online")
        seen = 0
        for command, status in (("presence_offline", "Offline"), ("presence_online", "Online")):
            bob.command(command)
            seen = alice.waitOutput('Friend "Bob" <sip:bob@example.test> is %s' % (status,), seen)
    finally:
        alice.quit()
    with open(os.path.join(alice.home, "linphone.log"), errors="replace") as f:
        log = f.read()
    assert "to [LinphoneRegistrationOk]" in log
    # Its REGISTER, SUBSCRIBE (to bob) and PUBLISH (of alice), by their URIs.
    signed = re.findall(r"Authorization:\s*Digest [^\r\n]*?algorithm=([\w-]+)[^\r\n]*?uri=\"([^\"]+)\"", log)
    assert {"sip:example.test", "sip:bob@example.test", "sip:alice@example.test"} <= {uri for _, uri in signed}
    assert {algorithm for algorithm, _ in signed} == {"SHA-256"}, signed
    assert "Authentication failed" not in shippedServer.log()
