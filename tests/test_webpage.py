"""
The browser buddy list (presence.web): its settings, where it finds SIP.js,
what its HTTP site serves, its place in the service tree and in .tap files,
and the page itself in headless Chromium against a real server.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from xml.etree import ElementTree

import pytest
import pytest_twisted
from twisted.application import service
from twisted.internet import defer

from presence.admin.cli import run as runAdmin
from presence.config import Config, ConfigError
from presence.pidf.parser import parsePidf
from presence.web import site
from presence.web.service import WebService, offersWebSocket, webProblem
from presence.web.site import WebError, describePage, findSipjs, pageRoot, sipjsCandidates
from tests.certs import selfSigned
from tests.conftest import skipOrFail
from tests.pidf_examples import DM, PIDF, RFC_EXAMPLES, RPID
from tests.serverprocess import REPO, ServerProcess

# Settings.


def test_offByDefault():
    config = Config()
    assert config.webEnabled is False
    assert config.webListen == "tcp:8080:interface=127.0.0.1"
    assert (config.webRoot, config.webSipjs, config.webWebsocket) == ("", "", "")


def test_webSection():
    config = Config.fromString(
        "[web]\nenabled = yes\nlisten = tcp:0:interface=127.0.0.1\nroot = /srv/page\n"
        "sipjs = /opt/sip.js\nwebsocket = wss://presence.example.test:8443\n"
    )
    assert config.webEnabled is True
    assert config.webListen == "tcp:0:interface=127.0.0.1"
    assert config.webRoot == "/srv/page"
    assert config.webSipjs == "/opt/sip.js"
    assert config.webWebsocket == "wss://presence.example.test:8443"


@pytest.mark.parametrize(
    "ini, message",
    [
        ("websocket = http://example.test/\n", "[web] websocket = 'http://example.test/': must be a ws://"),
        ("websocket = ws://\n", "[web] websocket = 'ws://': must be a ws://"),
        ("websocket = ws://example.test:99999\n", "[web] websocket = 'ws://example.test:99999': not a URL"),
        ("listen = tcp:nope\n", "[web] listen = 'tcp:nope': not a server endpoint"),
        ("enabled = maybe\n", "[web] enabled = 'maybe': must be yes or no"),
        ("colour = blue\n", "[web] unknown key 'colour'"),
    ],
    ids=["scheme", "host", "port", "listen", "enabled", "key"],
)
def test_badWebSettings(ini, message):
    with pytest.raises(ConfigError) as caught:
        Config.fromString("[web]\n" + ini, "presence.ini")
    assert str(caught.value).startswith("presence.ini: " + message), caught.value


def test_offersWebSocket():
    assert not offersWebSocket(Config())
    assert offersWebSocket(Config(webWebsocket="ws://example.test:8088"))


# Finding SIP.js and the page.


def _fakeSipjs(directory: Any, name: str = "sip.js", version: str = "0.21.2") -> str:
    """
    A directory laid out as the npm sip.js package.
    """
    os.makedirs(os.path.join(str(directory), "lib"), exist_ok=True)
    with open(os.path.join(str(directory), "package.json"), "w") as f:
        json.dump({"name": name, "version": version}, f)
    with open(os.path.join(str(directory), "lib", "index.js"), "w") as f:
        f.write("export const name = 'sip.js';\n")
    return str(directory)


def test_findConfiguredSipjs(tmp_path):
    directory = _fakeSipjs(tmp_path / "sipjs", version="0.21.9")
    assert findSipjs(directory) == (directory, "0.21.9")


@pytest.mark.parametrize("layout", ["missing", "other package", "no lib"])
def test_configuredSipjsMustBeThePackage(tmp_path, layout):
    directory = tmp_path / "sipjs"
    if layout == "other package":
        _fakeSipjs(directory, name="jssip")
    elif layout == "no lib":
        _fakeSipjs(directory)
        os.remove(str(directory / "lib" / "index.js"))
    with pytest.raises(WebError) as caught:
        findSipjs(str(directory))
    assert str(caught.value) == (
        "[web] sipjs = %r: not the npm sip.js package (no package.json naming sip.js, or no lib/index.js)"
        % (str(directory),)
    )


def test_sipjsFromNodeModules(tmp_path, monkeypatch):
    """
    Without [web] sipjs, node_modules in the working directory comes first,
    then the source tree's; neither holding it is a one-line hint.
    """
    monkeypatch.setattr(site, "_SOURCE_TREE", str(tmp_path / "source"))
    monkeypatch.chdir(str(tmp_path))
    here = str(tmp_path / "node_modules" / "sip.js")
    tree = str(tmp_path / "source" / "node_modules" / "sip.js")
    assert sipjsCandidates("") == [here, tree]
    with pytest.raises(WebError) as caught:
        findSipjs("")
    assert str(caught.value) == (
        "SIP.js is not installed (looked in %s and %s): run 'npm ci' in the source tree, "
        "or set [web] sipjs = DIR (the npm sip.js package)" % (here, tree)
    )
    _fakeSipjs(tree, version="0.21.1")
    assert findSipjs("") == (tree, "0.21.1")
    _fakeSipjs(here, version="0.21.2")
    assert findSipjs("") == (here, "0.21.2")


def test_pageRoot(tmp_path):
    assert pageRoot("") == site.PACKAGED_ROOT
    assert os.path.isfile(os.path.join(site.PACKAGED_ROOT, "index.html"))
    with pytest.raises(WebError) as caught:
        pageRoot(str(tmp_path))
    assert str(caught.value) == "[web] root = %r: no index.html there" % (str(tmp_path),)
    (tmp_path / "index.html").write_text("<!DOCTYPE html><title>ours</title>")
    assert pageRoot(str(tmp_path)) == str(tmp_path)


def test_webProblem(tmp_path):
    sipjs = _fakeSipjs(tmp_path / "sipjs")
    assert webProblem(Config(webSipjs=sipjs)) is None
    assert webProblem(Config(webSipjs=sipjs, webRoot=str(tmp_path))).startswith("[web] root = ")
    assert webProblem(Config(webSipjs=str(tmp_path))).startswith("[web] sipjs = ")


def test_describePage():
    addresses = [("UDP", "0.0.0.0", 5060), ("TCP", "0.0.0.0", 5060), ("WS", "0.0.0.0", 8088), ("WSS", "0.0.0.0", 8443)]
    assert describePage("", ("example.test",), addresses) == {
        "websocket": "",
        "listeners": [{"transport": "ws", "port": 8088}, {"transport": "wss", "port": 8443}],
        "domains": ["example.test"],
    }
    assert describePage("wss://sip.example.test", (), None) == {
        "websocket": "wss://sip.example.test", "listeners": [], "domains": [],
    }


# The service.


def _options(config: Config, role: str = "all") -> Any:
    def fail(message: str) -> None:
        raise SystemExit(message)

    return SimpleNamespace(config=config, get={"role": role}.get, fail=fail)


@pytest.mark.parametrize("role", ["all", "dispatcher"])
def test_treeHasThePageWhenEnabled(tmp_path, role):
    from presence.tap import makeService

    sipjs = _fakeSipjs(tmp_path / "sipjs")
    database = "sqlite:///%s" % (tmp_path / "presence.sqlite",)
    off = makeService(_options(Config(database=database, webSipjs=sipjs), role))
    assert "web" not in [child.name for child in off]
    on = makeService(_options(Config(database=database, webEnabled=True, webSipjs=sipjs), role))
    web = on.getServiceNamed("web")
    assert isinstance(web, WebService)
    names = [child.name for child in on]
    assert names.index("sip") < names.index("web")
    loaded = pickle.loads(pickle.dumps(on)).getServiceNamed("web")
    assert loaded.config == web.config and loaded.address is None and loaded._listener is None


def test_treeRefusesAMissingSipjs(tmp_path):
    from presence.tap import makeService

    config = Config(database="sqlite:///%s" % (tmp_path / "presence.sqlite",), webEnabled=True,
                    webSipjs=str(tmp_path))
    with pytest.raises(SystemExit) as caught:
        makeService(_options(config))
    assert str(caught.value).startswith("[web] sipjs = ")


def test_trackedSiteOffersItsALPNProtocols():
    """
    Wrapped to track its connections, a site still names its ALPN
    protocols: over ssl:, Twisted fails the handshake with every browser
    when the factory it wraps names none.  A factory without any stays so.
    """
    from twisted.internet import protocol
    from twisted.internet.interfaces import IProtocolNegotiationFactory
    from twisted.web import resource, server

    from presence.admin.listening import TrackingFactory

    site = server.Site(resource.Resource())
    tracked = TrackingFactory(site)
    assert IProtocolNegotiationFactory.providedBy(tracked)
    assert tracked.acceptableProtocols() == list(site.acceptableProtocols())
    assert b"http/1.1" in tracked.acceptableProtocols()
    assert not IProtocolNegotiationFactory.providedBy(TrackingFactory(protocol.Factory()))


def _tree(addresses: List[Tuple[str, str, int]]) -> service.MultiService:
    root = service.MultiService()
    sip = service.Service()
    sip.addresses = addresses  # type: ignore[attr-defined]
    sip.setName("sip")
    sip.setServiceParent(root)
    return root


@pytest_twisted.inlineCallbacks
def test_siteServesThePageSipjsAndConfig(tmp_path):
    """
    The page, SIP.js's modules with a JavaScript type, and /config.json
    naming the running ws listener; no listing, no dot file, no way out of
    the tree; the security headers on every answer; stopping closes the
    port.
    """
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool, readBody

    sipjs = _fakeSipjs(tmp_path / "sipjs")
    (tmp_path / "sipjs" / "lib" / ".hidden.js").write_text("secret")
    root = _tree([("UDP", "127.0.0.1", 5060), ("WS", "127.0.0.1", 8088)])
    config = Config(webEnabled=True, webListen="tcp:0:interface=127.0.0.1", webSipjs=sipjs,
                    domains=("example.test",))
    web = WebService(config)
    web.setServiceParent(root)
    root.startService()
    pool = HTTPConnectionPool(reactor, persistent=True)
    agent = Agent(reactor, pool=pool)
    base = "http://127.0.0.1:%d" % (web.address.port,)

    @defer.inlineCallbacks
    def get(path: str) -> Any:
        response = yield agent.request(b"GET", (base + path).encode("ascii"))
        body = yield readBody(response)
        headers = {k.lower(): v[0] for k, v in response.headers.getAllRawHeaders()}
        return response.code, headers, body

    try:
        code, headers, body = yield get("/")
        assert code == 200
        assert headers[b"content-type"] == b"text/html; charset=utf-8"
        assert b'<script type="module" src="buddylist.js">' in body
        assert headers[b"x-content-type-options"] == b"nosniff"
        assert b"script-src 'self'" in headers[b"content-security-policy"]
        assert b"connect-src 'self' ws: wss:" in headers[b"content-security-policy"]
        for path, kind in [("/buddylist.js", b"text/javascript; charset=utf-8"),
                           ("/pidf.js", b"text/javascript; charset=utf-8"),
                           ("/style.css", b"text/css; charset=utf-8"),
                           ("/sip.js/index.js", b"text/javascript; charset=utf-8")]:
            code, headers, body = yield get(path)
            assert (code, headers[b"content-type"]) == (200, kind), path
        assert body == b"export const name = 'sip.js';\n"
        code, headers, body = yield get("/config.json")
        assert (code, headers[b"content-type"]) == (200, b"application/json")
        assert json.loads(body) == {
            "websocket": "", "listeners": [{"transport": "ws", "port": 8088}], "domains": ["example.test"],
        }
        for path in ["/sip.js/", "/sip.js/.hidden.js", "/nosuch.html", "/sip.js/../package.json",
                     "/%2e%2e/site.py"]:
            code, headers, _ = yield get(path)
            assert code == 404, path
            assert headers[b"x-content-type-options"] == b"nosniff"
    finally:
        yield pool.closeCachedConnections()
        yield root.stopService()
    assert web.address is None


# The page in a real browser.

CHROMIUM = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
NODE_MODULES = os.path.join(REPO, "node_modules")
ARTIFACTS = os.path.join(REPO, "tests", "artifacts", "webpage")
READY = "Web page listening on"
PASSWORD = "browser-secret"
LIMIT_MS = 2000


def _requireBrowser() -> str:
    """
    Node, the npm packages and Chromium, or skip (fail in CI) without them.
    """
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        skipOrFail("node is not installed (Debian package: nodejs)")
    if not os.access(CHROMIUM, os.X_OK):
        skipOrFail("%s is not installed (Debian package: chromium)" % (CHROMIUM,))
    for package in ("playwright-core", "sip.js"):
        if not os.path.isfile(os.path.join(NODE_MODULES, package, "package.json")):
            skipOrFail("node_modules/%s is missing: run 'npm ci' in %s" % (package, REPO))
    return node  # type: ignore[return-value]


def _pidf(body: str, entity: str = "sip:bob@example.test") -> bytes:
    return (
        '<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" '
        'entity="%s">%s</presence>' % (entity, body)
    ).encode("utf-8")


_OPEN = '<tuple id="t"><status><basic>open</basic></status></tuple>'

#: Documents other clients publish, and the status and note the page must
#: read from each (None: not a PIDF document).
PIDF_CASES = dict(
    {name: body for name, body in RFC_EXAMPLES.items() if name in ("rfc3863-prefixed", "rfc3863-full", "rfc4480")},
    closed=_pidf('<tuple id="t"><status><basic>closed</basic></status></tuple><dm:person id="p">'
                 "<rpid:activities><rpid:busy/></rpid:activities></dm:person>"),
    phone=_pidf(_OPEN + '<dm:person id="p"><rpid:activities><rpid:on-the-phone/></rpid:activities>'
                "<dm:note>On a call</dm:note></dm:person>"),
    vacation=_pidf(_OPEN + '<dm:person id="p"><rpid:activities><rpid:vacation/></rpid:activities></dm:person>'),
    unknownActivity=_pidf(_OPEN + '<dm:person id="p"><rpid:activities><rpid:unknown/></rpid:activities></dm:person>'),
    noTuple=_pidf('<note>Nobody home</note>'),
    registration=_pidf('<tuple id="reg"><status><basic>open</basic></status></tuple>'),
    notPidf=b'<?xml version="1.0"?><presence entity="sip:bob@example.test"/>',
    malformed=b"<presence xmlns='urn:ietf:params:xml:ns:pidf'",
    empty=b"",
)

PIDF_EXPECTED = {
    "rfc3863-prefixed": ("online", ""),
    "rfc3863-full": ("online", "Don't Disturb Please!"),
    "rfc4480": ("away", "Scoring 120"),
    "closed": ("offline", ""),
    "phone": ("busy", "On a call"),
    "vacation": ("away", ""),
    "unknownActivity": ("online", ""),
    "noTuple": ("offline", "Nobody home"),
    "registration": ("online", ""),
    "notPidf": None,
    "malformed": None,
    "empty": None,
}


def _checkPidf(found: Dict[str, Any]) -> None:
    """
    What the page's PIDF module read and wrote: each case as expected; the
    document of each status is one our server accepts, says what the
    status means in PIDF and RPID, and reads back as that status with the
    note intact.
    """
    parsed = {
        name: None if value is None else (value["status"], value["note"]) for name, value in found["parsed"].items()
    }
    assert parsed == PIDF_EXPECTED
    note = 'Tea & "biscuits" <3'
    meaning = {"online": ("open", []), "away": ("open", ["away"]), "busy": ("open", ["busy"]),
               "offline": ("closed", [])}
    assert sorted(found["built"]) == sorted(meaning)
    for status, xml in found["built"].items():
        parsePidf(xml.encode("utf-8"), "sip:alice@example.test")
        root = ElementTree.fromstring(xml)
        basic = [e.text for e in root.iter("{%s}basic" % (PIDF,))]
        activities = [e.tag.split("}")[1] for e in root.iter() if e.tag.startswith("{%s}" % (RPID,))
                      and e.tag != "{%s}activities" % (RPID,)]
        notes = [e.text for e in root.iter("{%s}note" % (DM,))]
        assert (basic, activities, notes) == ([meaning[status][0]], meaning[status][1], [note]), xml
        assert found["reread"][status] == {"status": status, "note": note, "activities": meaning[status][1]}


class PageServer:
    """
    A C{twistd presence} with the web page and one ws or wss listener, on
    a database with the accounts of L{USERS} and L{IDLE}.

    @ivar url: the page's URL; @ivar websocket: the one it must offer.
    """

    def __init__(self, workdir: str, secure: bool) -> None:
        self.workdir = workdir
        self.database = "sqlite:///%s" % (os.path.join(workdir, "presence.sqlite"),)
        _provision(self.database, [user["aor"] for user in USERS] + [IDLE])
        self.transport = "wss" if secure else "ws"
        web = "tcp:0:interface=127.0.0.1"
        self.tlsOptions = ""
        if secure:
            key, cert, _ = selfSigned(Path(workdir), ["presence.example.test"])
            self.tlsOptions = ":privateKey=%s:certKey=%s" % (key, cert)
            web = "ssl:0:interface=127.0.0.1" + self.tlsOptions
        self.config = os.path.join(workdir, "presence.ini")
        with open(self.config, "w") as f:
            f.write("[web]\nenabled = yes\nlisten = %s\n" % (web,))
        self.process = self._start(0)
        self.url = re.search(r"(https?://127\.0\.0\.1:\d+/)", self.process.waitFor(READY)).group(1)  # type: ignore[union-attr]
        assert self.url.startswith("https:" if secure else "http:")
        self.wsPort = self.process.ports[self.transport.upper()]
        self.websocket = "%s://127.0.0.1:%d" % (self.transport, self.wsPort)

    def _start(self, wsPort: int) -> ServerProcess:
        sip = "%s:%d:interface=127.0.0.1%s" % (self.transport, wsPort, self.tlsOptions)
        return ServerProcess(
            self.workdir,
            ["--config", self.config, "--database", self.database, "--listen", "udp:0:interface=127.0.0.1",
             "--listen", sip, "--domain", "example.test"],
        ).start(READY)

    def restart(self) -> None:
        """
        Stop, then start on the same database and SIP WebSocket port.
        """
        self.process.stopCleanly()
        self.process = self._start(self.wsPort)

    def job(self, prefix: str, **more: Any) -> Dict[str, Any]:
        """
        What a browser scenario needs (see tests/browser/session.mjs).
        """
        os.makedirs(ARTIFACTS, exist_ok=True)
        return dict(
            url=self.url, websocket=self.websocket, acceptCertificate=self.transport == "wss",
            chromium=CHROMIUM, artifacts=ARTIFACTS, prefix="%s-%s" % (prefix, self.transport),
            limitMs=LIMIT_MS, users=USERS, **more,
        )


USERS = [{"aor": "%s@example.test" % (name,), "password": PASSWORD} for name in ("alice", "bob")]
IDLE = "carol@example.test"


def _provision(database: str, aors: List[str]) -> None:
    """
    A fresh database with an account for each of C{aors}, one customer's.
    """
    for argv in [["initdb"]] + [["account", "add", aor, "--customer", "acme", "--password-file", "-"] for aor in aors]:
        err = io.StringIO()
        code = runAdmin(["--database", database] + argv, io.StringIO(), err, io.StringIO(PASSWORD + "\n"))
        assert code == 0, err.getvalue()


def _scenario(node: str, script: str, job: Dict[str, Any], server: PageServer,
              answer: Optional[Callable[[str], str]] = None) -> Tuple[Dict[str, Any], str]:
    """
    Run a browser scenario of tests/browser; C{answer} is given each line it
    prints before its result and returns the line to write back.

    @return: its result, and what to show when a check fails.
    """
    jobPath = os.path.join(server.workdir, "job.json")
    with open(jobPath, "w") as f:
        json.dump(job, f)
    trail = open(os.path.join(server.workdir, "scenario.log"), "w+")
    process = subprocess.Popen(
        [node, os.path.join(REPO, "tests", "browser", script), jobPath],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=trail, cwd=REPO,
    )
    # Every wait in a scenario is bounded; this bounds the whole.
    killer = threading.Timer(180, process.kill)
    killer.start()
    lines = []
    try:
        assert process.stdout is not None and process.stdin is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            if answer is not None and not line.startswith("{"):
                process.stdin.write((answer(line) + "\n").encode("utf-8"))
                process.stdin.flush()
        code = process.wait(30)
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]
        process.stdin.close()  # type: ignore[union-attr]
    trail.seek(0)
    detail = "stdout:\n%s\nstderr:\n%s\nserver:\n%s" % ("\n".join(lines), trail.read(), server.process.log())
    trail.close()
    assert code == 0 and lines, detail
    return json.loads(lines[-1]), detail


@pytest.fixture(params=[False, True], ids=["http+ws", "https+wss"])
def pageServer(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    _requireBrowser()
    server = PageServer(str(tmp_path), request.param)
    yield server
    server.process.stopCleanly()


@pytest.fixture
def plainPageServer(tmp_path: Path) -> Any:
    """
    Over http and ws only: what reconnecting does is the same over wss.
    """
    _requireBrowser()
    server = PageServer(str(tmp_path), False)
    yield server
    server.process.stopCleanly()


def _report(capsys: Any, what: str, result: Dict[str, Any]) -> None:
    """
    Print what was measured and where the screenshots are, even under -q.
    """
    for shot in result["screenshots"]:
        assert os.path.getsize(shot) > 10000, shot
    with capsys.disabled():
        sys.stdout.write("\n%s; screenshots: %s\n" % (what, " ".join(result["screenshots"])))


def test_buddyListInChromium(pageServer: PageServer, capsys: Any) -> None:
    """
    Two users log in to the page in Chromium, over http and ws, or https
    and wss (a self-signed certificate the browser is told to accept); one
    publishes away, then online, and the other's page shows each within
    2 s (timed from the click), with the note; screenshots are kept under
    tests/artifacts/.
    """
    node = _requireBrowser()
    job = pageServer.job(
        "buddylist", idle="sip:" + IDLE, pidf={name: xml.decode("utf-8") for name, xml in PIDF_CASES.items()}
    )
    result, detail = _scenario(node, "buddylist.mjs", job, pageServer)
    assert result["awayMs"] <= LIMIT_MS and result["onlineMs"] <= LIMIT_MS, detail
    _checkPidf(result["pidf"])
    # SIP.js alone would re-send a REGISTER's old credentials.
    assert ": replay" not in pageServer.process.log(), detail
    _report(capsys, "buddy list in Chromium over %s: away shown after %d ms, online after %d ms"
            % (pageServer.transport, result["awayMs"], result["onlineMs"]), result)


def test_buddyListSurvivesARestart(plainPageServer: PageServer, capsys: Any) -> None:
    """
    The server restarts under two logged-in pages: while it is down the
    watcher shows the connection lost and its contact unknown; then both
    pages reconnect, register, publish and subscribe again on their own,
    and a change shows within 2 s again.
    """
    node = _requireBrowser()

    def answer(line: str) -> str:
        assert line == "restart", line
        plainPageServer.restart()
        return "restarted"

    result, detail = _scenario(node, "reconnect.mjs", plainPageServer.job("buddylist"), plainPageServer, answer)
    assert result["whileDown"] == "unknown", detail
    assert result["awayMs"] <= LIMIT_MS, detail
    _report(capsys, "buddy list over %s after a server restart: back in %d ms, away shown after %d ms"
            % (plainPageServer.transport, result["backMs"], result["awayMs"]), result)
