"""
Shared machinery of the load benchmarks: a real C{twistd -n presence}
process, a database for it (an SQLite file or a PostgreSQL schema of its
own), sipp runs on loopback and the figures read back from sipp's files
and from C{/proc}.

Why a module of its own: L{presence_bench} and L{subscriptions_bench} both
start servers, drive sipp and must leave nothing behind.  Everything here
that starts a process keeps its pid and stops exactly that pid (SIGTERM,
then SIGKILL after a timeout); every sipp run is bounded in calls (C{-m})
and in time (C{-timeout} and a subprocess timeout).
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(REPO, "bench", "sipp")
READY = "Subscription manager"
DEFAULT_PG_URL = os.environ.get(
    "PRESENCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_TWISTD = "from twisted.scripts.twistd import run; run()"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Loaded here, not in the forked child: importing there could deadlock on a
# lock another thread of the benchmark held at fork time.
try:
    import ctypes

    _libc: Any = ctypes.CDLL("libc.so.6", use_errno=True)
except (ImportError, OSError):
    _libc = None


def log(text: str) -> None:
    """
    A progress line on stderr, with the time: stdout carries the figures.
    """
    sys.stderr.write(time.strftime("%H:%M:%S ") + text + "\n")
    sys.stderr.flush()


# --- processes and /proc ---------------------------------------------------


def treeState() -> Dict[str, Any]:
    """
    Which code was measured: the commit and the files changed since (the
    working tree is shared and moves while benchmarks run).  Read-only git.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", REPO] + list(args), capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "presence", "twisted").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "changedFiles": changed,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def freeUDPPort(host: str = "127.0.0.1") -> int:
    """
    A UDP port the kernel says is free now on C{host}.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def udpSocketsBound(port: int) -> List[str]:
    """
    The inodes of the UDP sockets bound to C{port} on any address now
    (C{/proc/net/udp} and C{udp6}): empty when the port is free.
    """
    inodes = []
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.append(fields[9])
        except OSError:
            continue
    return inodes


def holdsUDPPort(pid: int, port: int) -> bool:
    """
    Whether process C{pid} has a socket bound to UDP C{port} open: that the
    process measured is the one serving the port, not a stray one.
    """
    wanted = {"socket:[%s]" % (inode,) for inode in udpSocketsBound(port)}
    fds = "/proc/%d/fd" % (pid,)
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) in wanted:
                return True
        except OSError:
            continue
    return False


def udpDrops() -> Dict[str, int]:
    """
    The kernel's UDP counters (C{/proc/net/snmp}), machine-wide:
    C{RcvbufErrors} counts datagrams dropped on a full receive buffer.
    """
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU seconds used so far by process C{pid}, all its
    threads included (C{/proc/PID/stat} fields 14 and 15).
    """
    with open("/proc/%d/stat" % (pid,)) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def hostCPU() -> Tuple[float, float]:
    """
    (busy, total) jiffies of the whole machine from C{/proc/stat}, to tell
    how loaded the shared machine was during a step.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return float(total - idle), float(total)


def memoryOf(pid: int) -> Dict[str, int]:
    """
    VmRSS and VmHWM (peak RSS) of C{pid}, in KiB, from C{/proc/PID/status}.
    """
    result: Dict[str, int] = {}
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                result[name] = int(value.split()[0])
    return result


def loadAverage() -> float:
    """
    The one-minute load average: the other users of this shared machine.
    """
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class CPUMeter:
    """
    CPU use of one process, and of the whole machine, between L{start} and
    L{stop}; percentages of one core (a process may pass 100 with threads).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.began = 0.0
        self.cpu0 = 0.0
        self.host0 = (0.0, 0.0)

    def start(self) -> CPUMeter:
        self.began = time.monotonic()
        self.cpu0 = cpuSeconds(self.pid)
        self.host0 = hostCPU()
        return self

    def stop(self) -> Dict[str, float]:
        """
        @return: C{cpuPercent} of the process (100 = one core busy),
            C{hostBusyPercent} of the machine (100 = every core busy), and
            the C{seconds} measured.
        """
        elapsed = time.monotonic() - self.began
        try:
            used = cpuSeconds(self.pid) - self.cpu0
        except OSError:
            used = float("nan")
        busy, total = hostCPU()
        hostBusy = 100.0 * (busy - self.host0[0]) / max(1.0, total - self.host0[1])
        return {
            "cpuPercent": round(100.0 * used / max(elapsed, 1e-6), 1),
            "hostBusyPercent": round(hostBusy, 1),
            "seconds": round(elapsed, 2),
        }


def _dieWithParent() -> None:
    """
    In a child before exec: have the kernel SIGTERM it if the benchmark
    dies without stopping it (Linux C{PR_SET_PDEATHSIG}), so that nothing
    a benchmark started outlives it.
    """
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def stopOnSignals() -> None:
    """
    Turn SIGTERM and SIGHUP into KeyboardInterrupt in the benchmark, so
    that its C{finally} blocks stop every server and sipp it started and
    drop its PostgreSQL schemas.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("signal %d" % (signum,))

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def stopProcess(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> Optional[int]:
    """
    Stop exactly this child: C{sig}, then SIGKILL if it outlives C{timeout}.
    """
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


# --- the server --------------------------------------------------------------


class Server:
    """
    One C{twistd -n presence} process on a loopback UDP port, run by
    C{python} with the working tree on C{PYTHONPATH}.

    @ivar lines: (monotonic time, text) of every line it printed.
    @ivar startedAt: when the process was spawned (monotonic).
    """

    def __init__(
        self,
        workdir: str,
        database: str,
        python: str = sys.executable,
        host: str = "127.0.0.1",
        port: int = 0,
        config: str = "",
        extraArgs: Sequence[str] = (),
        prefix: Sequence[str] = (),
        experiments: Sequence[str] = (),
    ) -> None:
        """
        @param config: INI text, written to C{presence.ini} in C{workdir}.
        @param prefix: a command to run the interpreter under (a profiler).
        @param experiments: names from L{bench.experiments}: what-if
            patches applied in the server process before twistd runs.
        """
        self.workdir = workdir
        self.database = database
        self.python = python
        self.host = host
        self.port = port or freeUDPPort(host)
        self.config = config
        self.extraArgs = list(extraArgs)
        self.prefix = list(prefix)
        self.experiments = list(experiments)
        self.process: Optional[subprocess.Popen] = None
        self.lines: List[Tuple[float, str]] = []
        self.startedAt = 0.0
        self._changed = threading.Condition()
        self._eof = False
        self._reader: Optional[threading.Thread] = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> List[str]:
        configPath = os.path.join(self.workdir, "presence.ini")
        with open(configPath, "w") as f:
            f.write(self.config)
        code = _TWISTD
        if self.experiments:
            from bench.experiments import bootstrap

            code = bootstrap(self.experiments)
        return self.prefix + [
            self.python, "-c", code, "--nodaemon", "--pidfile=", "--logfile=-", "presence",
            "--config", configPath,
            "--listen", "udp:%d:interface=%s" % (self.port, self.host),
            "--domain", "example.test",
            "--database", self.database,
        ] + self.extraArgs

    def start(self, timeout: float = 120.0) -> float:
        """
        Spawn the server and wait for its "Subscription manager ... ready"
        line.

        @return: seconds from spawning to that line.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        command = self.command()
        self.startedAt = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_dieWithParent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        at = self.waitFor(READY, timeout)
        return at - self.startedAt

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def waitFor(self, text: str, timeout: float = 60.0, after: int = 0) -> float:
        """
        Wait for a line containing C{text} (from line number C{after} on).

        @return: the monotonic time the line was read.
        @raise RuntimeError: if the process exits or time runs out first.
        """
        deadline = time.monotonic() + timeout
        seen = after
        with self._changed:
            while True:
                for at, line in self.lines[seen:]:
                    if text in line:
                        return at
                seen = len(self.lines)
                if self._eof:
                    raise RuntimeError("server exited before %r:\n%s" % (text, self.tail()))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("timed out waiting for %r:\n%s" % (text, self.tail()))
                self._changed.wait(remaining)

    def count(self, text: str, after: int = 0) -> int:
        """
        How many lines from line C{after} on contain C{text}.
        """
        with self._changed:
            return sum(1 for _, line in self.lines[after:] if text in line)

    def find(self, pattern: str) -> Optional[re.Match]:
        """
        The last match of C{pattern} in the output.
        """
        regex = re.compile(pattern)
        with self._changed:
            for _, line in reversed(self.lines):
                m = regex.search(line)
                if m:
                    return m
        return None

    def mark(self) -> int:
        """
        The number of lines printed so far, for L{count}.
        """
        with self._changed:
            return len(self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """
        SIGTERM and wait (SIGKILL after C{timeout}).
        """
        if self.process is None:
            return None
        code = stopProcess(self.process, signal.SIGTERM, timeout)
        if self._reader is not None:
            self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


# --- databases -------------------------------------------------------------


class Database:
    """
    A fresh, empty database for one server: an SQLite file in a temporary
    directory, or a PostgreSQL schema of its own named in the URL with
    C{?options=-csearch_path%3D<schema>}.  L{drop} removes it.
    """

    def __init__(self, kind: str, workdir: str, pgURL: str = DEFAULT_PG_URL) -> None:
        self.kind = kind
        self.workdir = workdir
        self.pgURL = pgURL
        self.schema: Optional[str] = None
        self.url = ""

    def create(self) -> str:
        """
        @return: the database URL to give the server.
        """
        if self.kind == "sqlite":
            path = os.path.join(self.workdir, "presence.sqlite")
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            self.url = "sqlite:///" + path
            return self.url
        import sqlalchemy as sa

        self.schema = "bench_%d_%d" % (os.getpid(), int(time.time() * 1000) % 100000000)
        engine = sa.create_engine(self.pgURL)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text('CREATE SCHEMA "%s"' % (self.schema,)))
        finally:
            engine.dispose()
        separator = "&" if "?" in self.pgURL else "?"
        self.url = "%s%soptions=-csearch_path%%3D%s" % (self.pgURL, separator, self.schema)
        return self.url

    def drop(self) -> None:
        if self.kind != "postgresql" or self.schema is None:
            return
        import sqlalchemy as sa

        engine = sa.create_engine(self.pgURL)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text('DROP SCHEMA IF EXISTS "%s" CASCADE' % (self.schema,)))
        finally:
            engine.dispose()
        self.schema = None


def postgresAvailable(url: str = DEFAULT_PG_URL) -> Optional[str]:
    """
    @return: L{None} if PostgreSQL answers at C{url}, else why not.
    """
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


# --- sipp --------------------------------------------------------------------


def sippPath() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise SystemExit("sipp is not installed (Debian package sip-tester)")
    return path


class SippRun:
    """
    One sipp process in a directory of its own (sipp names its trace files
    after the scenario and its pid), with the statistics it wrote.

    @ivar command: the exact command line.
    @ivar returncode: sipp's exit status (0 all calls succeeded, 1 some
        failed, 97/99 aborted), or L{None} while running.
    """

    def __init__(
        self,
        scenario: str,
        server: Tuple[str, int],
        rate: float,
        calls: int,
        timeout: float,
        localHost: str = "127.0.0.1",
        service: Optional[str] = None,
        injection: Optional[str] = None,
        limit: Optional[int] = None,
        recvTimeoutMs: Optional[int] = 5000,
        rtt: bool = True,
        counts: bool = False,
        workdir: Optional[str] = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="sipp-")
        self.timeout = timeout
        self.port = freeUDPPort(localHost)
        self.scenario = scenario
        command = [
            sippPath(), "%s:%d" % server,
            "-sf", os.path.join(SCENARIOS, scenario),
            "-t", "u1", "-i", localHost, "-p", str(self.port),
            "-r", _number(rate), "-m", str(calls),
            "-timeout", "%ds" % (int(timeout),), "-timeout_error",
            # -nd: no BYE for an aborted call (the server would answer 405).
            # -aa: answer 200 to a NOTIFY retransmission reaching a call
            # that has ended, as a real watcher would; unanswered, the
            # server ends that subscription when Timer F fires.
            "-nostdin", "-nd", "-aa", "-buff_size", "4194304",
            "-max_recv_loops", "10000", "-max_sched_loops", "10000",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            "-trace_err", "-error_file", "errors.log",
        ]
        if service is not None:
            command += ["-s", service]
        if injection is not None:
            command += ["-inf", injection]
        if limit is not None:
            command += ["-l", str(limit)]
        if recvTimeoutMs is not None:
            command += ["-recv_timeout", str(recvTimeoutMs)]
        if rtt:
            command += ["-trace_rtt", "-rtt_freq", "1"]
        if counts:
            command += ["-trace_counts"]
        self.command = command + list(extra)
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.startedAt = 0.0
        self.endedAt = 0.0
        self.cpu: Optional[CPUMeter] = None

    def start(self) -> SippRun:
        self.startedAt = time.monotonic()
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_dieWithParent,
        )
        self.cpu = CPUMeter(self.process.pid).start()
        return self

    def wait(self) -> int:
        """
        Wait for sipp to end by itself, within C{timeout} plus a margin;
        stop it by pid if it does not.
        """
        assert self.process is not None
        deadline = time.monotonic() + self.timeout + 30
        while self.process.poll() is None and time.monotonic() < deadline:
            self._sampleCPU()
            try:
                self.process.wait(0.25)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            stopProcess(self.process, signal.SIGTERM, 10)
        return self._ended()

    def _sampleCPU(self) -> None:
        """
        Remember sipp's CPU seconds so far: once it has exited, C{/proc}
        no longer tells.
        """
        assert self.process is not None
        try:
            self._lastCPU = (time.monotonic(), cpuSeconds(self.process.pid))
        except (OSError, ValueError, IndexError):
            pass

    def stop(self) -> int:
        """
        End a sipp that would run on (the watchers): SIGUSR1 asks it to
        quit softly, then SIGTERM/SIGKILL.
        """
        assert self.process is not None
        self._sampleCPU()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                stopProcess(self.process, signal.SIGTERM, 10)
        return self._ended()

    def _ended(self) -> int:
        assert self.process is not None
        self.endedAt = time.monotonic()
        last = getattr(self, "_lastCPU", None)
        if self.cpu is not None and last is not None:
            at, used = last
            self.cpuPercent = round(100.0 * (used - self.cpu.cpu0) / max(at - self.cpu.began, 1e-6), 1)
        self.returncode = self.process.returncode
        if self.process.stderr is not None:
            self.stderr = self.process.stderr.read().decode("utf-8", "replace")
            self.process.stderr.close()
        return self.returncode

    def kill(self) -> None:
        """
        Stop this sipp if it still runs (cleanup path).
        """
        if self.process is not None and self.process.poll() is None:
            stopProcess(self.process, signal.SIGTERM, 5)

    # Statistics.

    def stats(self) -> Dict[str, str]:
        """
        The last row of the C{-trace_stat} file: cumulative counters (C).
        """
        rows = _readSemicolonCSV(os.path.join(self.workdir, "stat.csv"))
        return rows[-1] if rows else {}

    def statRows(self) -> List[Dict[str, str]]:
        return _readSemicolonCSV(os.path.join(self.workdir, "stat.csv"))

    def countRows(self) -> List[Dict[str, str]]:
        """
        The rows of the C{-trace_counts} file (one a second).
        """
        files = glob.glob(os.path.join(self.workdir, "*_counts.csv"))
        return _readSemicolonCSV(files[0]) if files else []

    def responseTimes(self) -> Dict[int, List[int]]:
        """
        Every response time sipp logged (C{-trace_rtt}), in milliseconds,
        by rtd number.
        """
        result: Dict[int, List[int]] = {}
        for path in glob.glob(os.path.join(self.workdir, "*_rtt.csv")):
            with open(path) as f:
                for line in f:
                    parts = line.strip().split(";")
                    if len(parts) < 3 or not parts[1].isdigit():
                        continue
                    result.setdefault(int(parts[2]), []).append(int(parts[1]))
        return result

    def errors(self, limit: int = 5) -> List[str]:
        """
        The first few distinct error kinds sipp logged.
        """
        path = os.path.join(self.workdir, "errors.log")
        if not os.path.exists(path):
            return []
        kinds: Dict[str, int] = {}
        with open(path, errors="replace") as f:
            for line in f:
                m = re.search(r"Call-Id: \S+, (.*)", line) or re.search(r"\d+\.\d+: (.*)", line)
                if m:
                    kind = re.sub(r"\d+", "N", m.group(1))[:150]
                    kinds[kind] = kinds.get(kind, 0) + 1
        return ["%dx %s" % (n, k) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:limit]]

    def summary(self) -> Dict[str, Any]:
        """
        Calls made, succeeded and failed, retransmissions, and response-time
        percentiles per rtd.
        """
        stats = self.stats()
        created = _int(stats.get("TotalCallCreated"))
        ok = _int(stats.get("SuccessfulCall(C)"))
        failed = _int(stats.get("FailedCall(C)"))
        elapsed = max(1e-3, self.endedAt - self.startedAt)
        result: Dict[str, Any] = {
            "calls": created,
            "successful": ok,
            "failed": failed,
            "failedPercent": round(100.0 * failed / created, 2) if created else None,
            "retransmissions": _int(stats.get("Retransmissions(C)")),
            "wallSeconds": round(elapsed, 2),
            "achievedRate": round(ok / elapsed, 1),
            "sippReturnCode": self.returncode,
            "sippCpuPercent": getattr(self, "cpuPercent", None),
            "errors": self.errors(),
        }
        for rtd, values in sorted(self.responseTimes().items()):
            result["rtd%d" % (rtd,)] = percentiles(values)
        return result

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _readSemicolonCSV(path: str) -> List[Dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", errors="replace") as f:
        reader = csv.reader(f, delimiter=";")
        rows = list(reader)
    if not rows:
        return []
    header = rows[0]
    return [dict(zip(header, row)) for row in rows[1:] if len(row) >= len(header) - 1]


def _int(text: Optional[str]) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def percentiles(values: List[int]) -> Dict[str, Any]:
    """
    p50, p99 and max of millisecond samples (sipp's resolution is 1 ms).
    """
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> int:
        return ordered[min(n - 1, int(q * n))]

    return {"n": n, "p50": at(0.50), "p99": at(0.99), "max": ordered[-1]}


def writeInjection(path: str, rows: Sequence[Sequence[str]], order: str = "SEQUENTIAL") -> str:
    """
    Write a sipp injection file (C{-inf}): C{order}, then one row a line.
    """
    with open(path, "w") as f:
        f.write(order + "\n")
        for row in rows:
            f.write(";".join(row) + "\n")
    return path


# --- py-spy profiles -------------------------------------------------------


def startProfiler(pid: int, seconds: float, output: str, rate: int = 200) -> Optional[subprocess.Popen]:
    """
    Sample C{pid} with py-spy for C{seconds} into C{output} (collapsed
    stacks, C{--format raw}), or L{None} when py-spy is not installed.

    Only the thread holding the GIL is sampled (C{--gil}): on a busy
    2-core machine a thread that is runnable but preempted (typically just
    after a C{sendto} woke sipp, or a C{write}) still counts as active, and
    without C{--gil} that scheduling delay lands on whatever syscall came
    last, not on the Python work that costs CPU.
    """
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return None
    return subprocess.Popen(
        [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
         "--format", "raw", "--output", output, "--nonblocking", "--threads", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_dieWithParent,
    )


def summariseProfile(path: str, top: int = 25, thread: str = "MainThread") -> Dict[str, Any]:
    """
    Read py-spy collapsed stacks and rank functions by self time and by
    inclusive time, within the threads whose name contains C{thread} (the
    reactor runs on MainThread; the store's writer is a pool thread).

    @return: C{samples}, C{self} and C{inclusive} lists of
        (percent, function) pairs.
    """
    selfTime: Dict[str, int] = {}
    inclusive: Dict[str, int] = {}
    total = 0
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if thread and frames and thread not in frames[0]:
                continue
            n = int(count)
            total += n
            frames = [_shortFrame(fr) for fr in frames[1:]] or ["(idle)"]
            selfTime[frames[-1]] = selfTime.get(frames[-1], 0) + n
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + n

    def ranked(table: Dict[str, int]) -> List[Tuple[float, str]]:
        items = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(round(100.0 * v / max(total, 1), 1), k) for k, v in items]

    return {"samples": total, "self": ranked(selfTime), "inclusive": ranked(inclusive)}


def _shortFrame(frame: str) -> str:
    """
    C{function (path/to/file.py:123)} -> C{function (file.py)} with the
    package path kept for our own code.
    """
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    name, path = m.group(1), m.group(2)
    if "/presence/" in path:
        path = "presence/" + path.split("/presence/", 1)[1]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        path = os.path.basename(path)
    return "%s (%s)" % (name, path)
