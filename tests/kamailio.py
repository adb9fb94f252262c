"""
A real Kamailio proxy for integration tests, configured by the test.

Debian's C{kamailio} and C{kamailio-presence-modules} (5.6) run as the
test's own child process -- never the system service -- on a free
loopback UDP port, with a configuration written here: the C{dialog}
module tracks each INVITE dialog, C{pua_dialoginfo} turns its state
changes into C{PUBLISH Event: dialog} (one document per call and party,
the way Kamailio publishes BLF state) and C{pua} sends them to the
presence server under test as its outbound proxy. Every INVITE goes to
one callee address, so two sipp user agents make a call through it
(L{placeCall}, scenarios C{tests/sipp/call_uac.xml} and
C{call_uas.xml}).

Readiness is an answer to an OPTIONS ping, never a sleep.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from typing import List, Optional

from tests.conftest import requireTool, skipOrFail
from tests.serverprocess import endProcess

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
DBTEXT = "/usr/share/kamailio/dbtext/kamailio"
HERE = os.path.dirname(os.path.abspath(__file__))


def requireKamailio() -> str:
    """
    The kamailio executable, or skip (fail in CI) without it or without
    the presence modules.
    """
    executable = requireTool("kamailio")
    if not os.path.exists(os.path.join(MODULES, "pua_dialoginfo.so")):
        skipOrFail("Kamailio's pua_dialoginfo is not installed (Debian package: kamailio-presence-modules)")
    return executable


def freeUdpPort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
alias="{domain}"
listen=udp:127.0.0.1:{port}
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "db_text.so"
loadmodule "dialog.so"
loadmodule "pua.so"
loadmodule "pua_dialoginfo.so"
modparam("pua", "db_url", "text://{database}")
modparam("pua", "db_mode", 0)
modparam("pua", "outbound_proxy", "sip:127.0.0.1:{server}")
modparam("pua_dialoginfo", "override_lifetime", 120)
modparam("rr", "append_fromtag", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("OPTIONS") && uri==myself && $rU==$null) {{ sl_send_reply("200", "OK"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("INVITE")) {{
        dlg_manage();
        record_route();
        $du = "sip:127.0.0.1:{callee}";
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


class Kamailio:
    """
    One Kamailio process publishing dialog state to a presence server.

    @ivar port: the UDP port it listens on.
    @ivar calleePort: where it sends every INVITE.
    @ivar output: what it logged so far.
    """

    def __init__(self, executable: str, workdir: str, serverPort: int, domain: str = "example.test") -> None:
        self.executable = executable
        self.home = os.path.join(workdir, "kamailio")
        self.port = freeUdpPort()
        self.calleePort = freeUdpPort()
        self.output: List[str] = []
        self.process: Optional[subprocess.Popen] = None
        database = os.path.join(self.home, "db")
        os.makedirs(os.path.join(self.home, "run"), exist_ok=True)
        os.makedirs(database, exist_ok=True)
        for table in ("version", "pua"):
            shutil.copy(os.path.join(DBTEXT, table), database)
        self.config = os.path.join(self.home, "kamailio.cfg")
        with open(self.config, "w") as f:
            f.write(
                CONFIG.format(
                    domain=domain,
                    port=self.port,
                    modules=MODULES,
                    database=database,
                    server=serverPort,
                    callee=self.calleePort,
                )
            )

    def start(self, timeout: float = 20.0) -> Kamailio:
        self.process = subprocess.Popen(
            [
                self.executable, "-f", self.config, "-D", "-E",
                "-w", self.home, "-Y", os.path.join(self.home, "run"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self._waitReady(timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self.output.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _waitReady(self, timeout: float) -> None:
        """
        Ping with OPTIONS until Kamailio answers 200.
        """
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            local = sock.getsockname()[1]
            number = 0
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError("kamailio exited:\n" + self.log())
                number += 1
                sock.sendto(_options(self.port, local, number), ("127.0.0.1", self.port))
                sock.settimeout(0.5)
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    continue
                if data.startswith(b"SIP/2.0 200"):
                    return
        raise AssertionError("kamailio never answered OPTIONS:\n" + self.log())

    def log(self) -> str:
        return "\n".join(self.output[-80:])

    def stop(self) -> None:
        if self.process is None:
            return
        endProcess(self.process)
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process = None


def _options(port: int, local: int, number: int) -> bytes:
    return (
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKping{number};rport\r\n"
        "From: <sip:ping@example.test>;tag=ping{number}\r\n"
        "To: <sip:127.0.0.1:{port}>\r\n"
        "Call-ID: ping{number}@127.0.0.1\r\n"
        "CSeq: {number} OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).format(port=port, local=local, number=number).encode("ascii")


def placeCall(sipp: str, workdir: str, kamailio: Kamailio, callee: str = "bob") -> None:
    """
    alice calls C{callee} through Kamailio with two sipp user agents: it
    rings for 1.5 s, is answered, lasts 1.5 s and alice hangs up. Returns
    when both scenarios have ended; fails with their errors otherwise.
    """
    common = ["-i", "127.0.0.1", "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin", "-trace_err"]
    uasErrors = os.path.join(workdir, "uas-errors.log")
    uacErrors = os.path.join(workdir, "uac-errors.log")
    uas = subprocess.Popen(
        [sipp, "-sf", os.path.join(HERE, "sipp", "call_uas.xml"), "-p", str(kamailio.calleePort),
         "-error_file", uasErrors] + common,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        uac = subprocess.run(
            [sipp, "127.0.0.1:%d" % (kamailio.port,), "-sf", os.path.join(HERE, "sipp", "call_uac.xml"),
             "-s", callee, "-p", str(freeUdpPort()), "-error_file", uacErrors] + common,
            cwd=workdir,
            capture_output=True,
            timeout=60,
        )
        uasCode = uas.wait(30)
    finally:
        if uas.poll() is None:
            uas.kill()
            uas.wait(5)
        if uas.stderr is not None:
            uas.stderr.close()
    for code, errors in ((uac.returncode, uacErrors), (uasCode, uasErrors)):
        if code != 0:
            text = open(errors).read()[-3000:] if os.path.exists(errors) else ""
            raise AssertionError("sipp call failed (%d): %s\n%s" % (code, text, kamailio.log()))
