"""
Run a real C{twistd -n presence} process for integration tests.

The process is started with twistd's C{run()} and the repository on
C{PYTHONPATH}, so the tests use the working tree's plugin whether or not the
package is installed.  Readiness is the server's own log line naming its
ports (listening on port 0 lets the kernel pick free ones), never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TWISTD = "from twisted.scripts.twistd import run; run()"
_ADDRESS = re.compile(r"(UDP|TCP|TLS|WSS|WS) ([0-9a-fA-F.:]+):(\d+)")


def endProcess(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """
    Signal a child process we started and wait for it; kill it if it
    does not end within C{timeout}.
    """
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class ServerProcess:
    """
    A presence server in a child process.

    @ivar ports: transport name to the port it listens on.
    @ivar output: every line it logged so far.
    """

    def __init__(
        self,
        workdir: str,
        args: Sequence[str] = (),
        timeout: float = 30.0,
        twistdArgs: Optional[Sequence[str]] = None,
    ) -> None:
        """
        @param args: options of the presence plugin.
        @param twistdArgs: given instead of C{presence ARGS}, e.g. to run a
            .tap file with C{["-f", "presence.tap"]}.
        """
        self.workdir = workdir
        self.args = ["presence"] + list(args) if twistdArgs is None else list(twistdArgs)
        self.timeout = timeout
        self.ports: Dict[str, int] = {}
        self.output: List[str] = []
        self.process: Optional[subprocess.Popen] = None
        self._changed = threading.Condition()
        self._eof = False
        self._reader: Optional[threading.Thread] = None

    def start(self, ready: str = "SIP listening on") -> ServerProcess:
        """
        Start the server and wait until it logs its ports, then C{ready}.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "--logfile=-"]
        self.process = subprocess.Popen(
            command + self.args,
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.waitFor("SIP listening on")
        for transport, _host, port in _ADDRESS.findall(line):
            self.ports.setdefault(transport, int(port))
        self.waitFor(ready)
        return self

    def _read(self) -> None:
        """
        Drain the server's output on a thread, so a chatty server never
        blocks on a full pipe.
        """
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.output.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def waitFor(self, text: str, timeout: Optional[float] = None) -> str:
        """
        Wait for a line of the server's output containing C{text}.

        @raise AssertionError: when the process exits or the time runs out
            first; the message carries what it printed.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        with self._changed:
            while True:
                for line in self.output[seen:]:
                    if text in line:
                        return line
                seen = len(self.output)
                if self._eof:
                    raise AssertionError(
                        "server exited before %r; output:\n%s" % (text, self.log())
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("timed out waiting for %r; output:\n%s" % (text, self.log()))
                self._changed.wait(remaining)

    def log(self) -> str:
        with self._changed:
            return "\n".join(self.output[-200:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """
        Signal the process and wait for it to exit; returns its exit code.
        twistd ends itself with the signal that stopped it, so a clean
        SIGTERM shutdown gives C{-SIGTERM}.
        """
        if self.process is None:
            return 0
        endProcess(self.process, sig, timeout)
        if self._reader is not None:
            self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def stopCleanly(self) -> None:
        """
        SIGTERM, then check that the server shut down in order.
        """
        code = self.stop()
        assert code in (0, -signal.SIGTERM), "exit code %s\n%s" % (code, self.log())
        assert "Server Shut Down." in self.log(), self.log()
