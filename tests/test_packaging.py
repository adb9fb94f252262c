"""
What an operator installs: the version both commands report, the LICENSE,
the systemd unit and its PyPy environment file, the Dockerfile, and the
private mode of the .tap files C{presence-admin mktap} writes.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from presence.admin.cli import run
from tests.conftest import requireTool
from tests.serverprocess import REPO

LOOPBACK = ["--listen", "udp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.1"]


def _setupVersion() -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO, "setup.cfg"))
    return parser.get("metadata", "version")


def _python(code: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-c", code] + list(args), cwd=cwd, env=env, capture_output=True, timeout=60
    )


# Versions.


def test_versionIsSetupCfgs():
    from presence.sip.core import SERVER_NAME
    from presence.version import describe, version

    assert version == _setupVersion()
    assert SERVER_NAME == "presence/" + version
    assert describe().startswith("presence %s (Twisted " % (version,))


@pytest.mark.parametrize(
    "code",
    ["from twisted.scripts.twistd import run; run()", "from presence.admin.cli import main; main()"],
    ids=["twistd", "presence-admin"],
)
def test_versionOption(tmp_path, code):
    """
    C{twistd presence --version} and C{presence-admin --version} print our
    version, Twisted's and Python's on one line, and exit 0.
    """
    import platform

    import twisted

    args = ["presence", "--version"] if "twistd" in code else ["--version"]
    result = _python(code, *args, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "presence %s (Twisted %s, %s %s)\n" % (
        _setupVersion(), twisted.__version__, platform.python_implementation(), platform.python_version(),
    )


def test_license():
    with open(os.path.join(REPO, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO, "setup.cfg"))
    assert parser.get("metadata", "license") == "MIT"


# mktap writes a private file.


def _mktap(path: str, database: str) -> Tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["mktap", "--database", database, "-o", path] + LOOPBACK, out, err)
    return code, err.getvalue()


def test_mktapWritesMode0600(tmp_path):
    """
    The .tap file holds secrets: 0600 whatever the umask, also when it
    replaces a file that others could read; what it holds runs as before.
    """
    from twisted.application import service
    from twisted.persisted import sob

    (tmp_path / "out").mkdir()
    tap = tmp_path / "out" / "presence.tap"
    tap.write_bytes(b"old")
    os.chmod(tap, 0o644)
    previous = os.umask(0)
    try:
        code, err = _mktap(str(tap), "sqlite:///%s" % (tmp_path / "p.sqlite",))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(tap).st_mode) == 0o600
    assert os.listdir(tmp_path / "out") == ["presence.tap"]  # no temporary left
    application = sob.load(str(tap), "pickle")
    [root] = list(service.IServiceCollection(application))
    assert {"store", "sip", "manager"} <= {child.name for child in root}


def test_mktapCannotWrite(tmp_path):
    tap = tmp_path / "missing" / "presence.tap"
    code, err = _mktap(str(tap), "sqlite:///%s" % (tmp_path / "p.sqlite",))
    assert code == 1
    assert err.startswith("presence-admin: cannot write %s: " % (tap,)) and err.count("\n") == 1


def test_wheelHoldsTheWholeServer(tmp_path):
    """
    What the Dockerfile copies builds a wheel holding every module of the
    server, its static files and the twistd plugin (and no
    twisted/__init__.py): tests run from the source tree and would not
    notice a package setup.cfg forgot, which pip install . then drops.
    """
    import zipfile

    context = tmp_path / "context"
    for source in ("pyproject.toml", "setup.cfg", "README.rst", "LICENSE", "presence", "twisted"):
        origin = os.path.join(REPO, source)
        if os.path.isdir(origin):
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
        else:
            os.makedirs(context, exist_ok=True)
            shutil.copy(origin, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    [wheel] = os.listdir(tmp_path / "dist")
    names = set(zipfile.ZipFile(tmp_path / "dist" / wheel).namelist())
    expected = set()
    for folder, _, files in os.walk(os.path.join(REPO, "presence")):
        if "__pycache__" in folder:
            continue
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                expected.add(os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/"))
    assert expected - names == set(), "missing from the wheel"
    assert "twisted/plugins/presence_plugin.py" in names
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names
    assert wheel.startswith("presence-%s-" % (_setupVersion(),))


# The systemd unit and its environment file.


def _unit(path: str) -> Dict[str, Dict[str, List[str]]]:
    """
    A systemd unit file as sections of keys to their values (a key may
    repeat); comments and blank lines skipped, every other line must be a
    section header or C{Key=value}.
    """
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            header = re.match(r"^\[([A-Za-z]+)\]$", line)
            if header:
                current = sections.setdefault(header.group(1), {})
                continue
            match = re.match(r"^([A-Za-z][A-Za-z0-9]*)=(.*)$", line)
            assert match and current is not None, "%s:%d: %r" % (path, number, line)
            current.setdefault(match.group(1), []).append(match.group(2))
    return sections


def _envFile(path: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^([A-Z_][A-Z0-9_]*)=(\S+)$", line)
            assert match, "not KEY=VALUE: %r" % (line,)
            values[match.group(1)] = match.group(2)
    return values


def test_systemdUnit():
    """
    Type=simple running C{twistd -n presence} with the configuration path,
    as a non-root user, restarted on failure, with the PyPy environment
    file; the paths it names are those README's installation uses.
    """
    unit = _unit(os.path.join(REPO, "etc", "presence.service"))
    service = unit["Service"]
    assert service["Type"] == ["simple"]
    assert service["User"] not in (["root"], ["0"]) and len(service["User"]) == 1
    assert service["Restart"] == ["on-failure"]
    # systemctl reload: SIGHUP reopens the logs and reloads (presence.reload).
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    [command] = service["ExecStart"]
    argv = shlex.split(command)
    assert argv[0].startswith("/") and os.path.basename(argv[0]) == "twistd"
    assert "--nodaemon" in argv or "-n" in argv
    plugin = argv.index("presence")
    assert "--no_save" in argv[:plugin]
    config = argv[argv.index("--config", plugin) + 1]
    assert config == "/etc/presence/presence.ini"
    assert service["EnvironmentFile"] == ["-/etc/presence/pypy-gc.env"]
    assert service["WorkingDirectory"] == ["/var/lib/presence"]
    # ProtectSystem=strict: the working directory is writable as the state one.
    assert service["ProtectSystem"] == ["strict"] and service["StateDirectory"] == ["presence"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemdAnalyzeVerify(tmp_path):
    """
    systemd itself reads the unit without a complaint (the ExecStart
    binary pointed at this Python's twistd, which verify requires to exist).
    """
    analyze = requireTool("systemd-analyze")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd") or twistd
    with open(os.path.join(REPO, "etc", "presence.service")) as f:
        text = f.read()
    assert "/opt/presence/bin/twistd " in text
    copy = tmp_path / "presence.service"
    copy.write_text(text.replace("/opt/presence/bin/twistd ", twistd + " "))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr.decode()


def test_pypyEnvironmentFile():
    """
    The environment file sets what README "Running on PyPy" says to set.
    """
    values = _envFile(os.path.join(REPO, "etc", "pypy-gc.env"))
    assert values == {"PYPY_GC_NURSERY": "16MB", "PYPY_GC_MAJOR_COLLECT": "1.25"}
    with open(os.path.join(REPO, "README.rst")) as f:
        readme = f.read()
    assert " ".join("%s=%s" % item for item in values.items()) + " /opt/presence-pypy/bin/twistd" in readme


# The Dockerfile.


def _dockerfile() -> List[Tuple[str, str]]:
    """
    The instructions of the Dockerfile, continuation lines joined.
    """
    instructions = []
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile():
    """
    A Debian Python base; every file COPY names exists (the build context
    is the repository); the server runs as a user, twistd in the
    foreground with the configuration that was copied in, SIP exposed on
    UDP and TCP, the SQLite file's folder a volume.
    """
    instructions = _dockerfile()
    kinds = [kind for kind, _ in instructions]
    [base] = [rest for kind, rest in instructions if kind == "FROM"]
    assert re.match(r"^python:3\.(9|1\d)-(slim-)?(bookworm|bullseye|trixie)$", base), base
    destinations = []
    for kind, rest in instructions:
        if kind in ("COPY", "ADD"):
            *sources, destination = shlex.split(rest)
            assert sources and not any(s.startswith("--") for s in sources), rest
            for source in sources:
                assert os.path.exists(os.path.join(REPO, source)), "COPY names a missing file: " + source
            destinations.append((sources, destination))
    copied = [source for sources, _ in destinations for source in sources]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO, "setup.cfg"))
    needed = re.findall(r"file:\s*(\S+)", parser.get("metadata", "long_description"))
    needed += [name.strip().split(".")[0] for name in parser.get("options", "packages").split()]
    for name in needed + ["pyproject.toml", "setup.cfg", "LICENSE"]:
        assert name in copied, "pip install . needs %s, which the Dockerfile does not copy" % (name,)
    installed = [dest for sources, dest in destinations if "setup.cfg" in sources]
    assert installed and any(rest.startswith("pip install") and installed[0].rstrip("/") in rest
                             for kind, rest in instructions if kind == "RUN")
    [user] = [rest for kind, rest in instructions if kind == "USER"]
    assert user not in ("root", "0")
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    [entrypoint] = [json.loads(rest) for kind, rest in instructions if kind == "ENTRYPOINT"]
    [cmd] = [json.loads(rest) for kind, rest in instructions if kind == "CMD"]
    assert entrypoint[0] == "twistd" and "--nodaemon" in entrypoint and entrypoint[-1] == "presence"
    config = cmd[cmd.index("--config") + 1]
    assert (["etc/presence.ini"], config) in destinations
    exposed = " ".join(rest for kind, rest in instructions if kind == "EXPOSE").split()
    assert {"5060/udp", "5060/tcp"} <= set(exposed)
    [volume] = [rest for kind, rest in instructions if kind == "VOLUME"]
    workdirs = [rest for kind, rest in instructions if kind == "WORKDIR"]
    assert workdirs[-1] == volume  # sqlite:///presence.sqlite is relative to it
    with open(os.path.join(REPO, "etc", "presence.ini")) as f:
        assert "\ndatabase = sqlite:///presence.sqlite\n" in f.read()
