"""
What the web page's HTTP site serves: the page's files, SIP.js, and
C{/config.json} telling the page where our SIP WebSocket listeners are.

Why SIP.js is served from its npm package rather than from a bundle in
this repository: SIP.js 0.21 ships ES modules only (C{lib/}, relative
imports with their C{.js} suffix and no dependencies), which browsers load
as they are, so no bundler is needed; C{package.json} and
C{package-lock.json} at the top of the source tree pin the version and its
checksum, and C{npm ci} puts it in C{node_modules/sip.js}.  The operator
may point C{[web] sipjs} at another copy.

Every response carries a Content-Security-Policy that allows our own
scripts and WebSocket connections only, and no inline script: the page
shows what SIP peers send (notes, names), so it must not run any of it.
Inline styles are allowed: Chromium styles the error document of a
malformed XML body (a NOTIFY's) inline, and the page puts peer data in
text nodes only, so no style can be injected either.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.web import pages, resource, static

from presence.admin.metrics import QuietSite

#: The packaged page (C{index.html}, its script and style sheet).
PACKAGED_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: The source tree holding this package, where C{npm ci} leaves
#: C{node_modules} (nothing there once installed elsewhere).
_SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Revalidate each time (a 304 when unchanged): an upgraded page or
    # SIP.js is used at the next load.
    (b"cache-control", b"no-cache"),
)


class WebError(Exception):
    """
    The page cannot be served as configured; the message says why in one
    line.
    """


def sipjsCandidates(configured: str) -> List[str]:
    """
    Where to look for the SIP.js package: the configured directory alone,
    or else C{node_modules/sip.js} in the working directory and in the
    source tree.
    """
    if configured:
        return [os.path.abspath(configured)]
    places = [os.path.join(os.getcwd(), "node_modules", "sip.js"), os.path.join(_SOURCE_TREE, "node_modules", "sip.js")]
    return list(dict.fromkeys(os.path.abspath(place) for place in places))


def findSipjs(configured: str) -> Tuple[str, str]:
    """
    The SIP.js package to serve.

    @param configured: C{[web] sipjs}, or empty to look in C{node_modules}.
    @return: its directory and version.
    @raise WebError: when no candidate holds the npm C{sip.js} package.
    """
    candidates = sipjsCandidates(configured)
    for directory in candidates:
        try:
            with open(os.path.join(directory, "package.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("name") == "sip.js" and os.path.isfile(
            os.path.join(directory, "lib", "index.js")
        ):
            return directory, str(meta.get("version", "?"))
    if configured:
        raise WebError(
            "[web] sipjs = %r: not the npm sip.js package (no package.json naming sip.js, or no lib/index.js)"
            % (configured,)
        )
    raise WebError(
        "SIP.js is not installed (looked in %s): run 'npm ci' in the source tree, "
        "or set [web] sipjs = DIR (the npm sip.js package)" % (" and ".join(candidates),)
    )


def pageRoot(configured: str) -> str:
    """
    The directory of the page: C{[web] root}, or the packaged one.

    @raise WebError: when it has no C{index.html}.
    """
    root = os.path.abspath(configured) if configured else PACKAGED_ROOT
    if not os.path.isfile(os.path.join(root, "index.html")):
        raise WebError("[web] root = %r: no index.html there" % (configured or root,))
    return root


class StaticFiles(static.File):
    """
    Files of one directory tree, without directory listings or dot files,
    and with the content types module scripts need whatever the host's
    C{mime.types} says.
    """

    contentTypes = dict(
        static.File.contentTypes,
        **{
            ".html": "text/html; charset=utf-8",
            ".js": "text/javascript; charset=utf-8",
            ".mjs": "text/javascript; charset=utf-8",
            ".css": "text/css; charset=utf-8",
            ".json": "application/json",
            ".svg": "image/svg+xml",
        },
    )

    def __init__(self, path: str) -> None:
        static.File.__init__(self, path, defaultType="application/octet-stream")
        self.indexNames = ["index.html"]

    def createSimilarFile(self, path: str) -> StaticFiles:
        return StaticFiles(path)

    def getChild(self, path: bytes, request: Any) -> resource.IResource:
        if path.startswith(b"."):
            return pages.notFound("No such page", "There is nothing here.")
        return static.File.getChild(self, path, request)

    def directoryListing(self) -> resource.IResource:
        return pages.notFound("No such page", "There is nothing here.")


class PageConfig(resource.Resource):
    """
    C{/config.json}: what the page needs to log in, read at each request
    (the listeners are only known once the SIP service runs).
    """

    isLeaf = True

    def __init__(self, describe: Callable[[], Dict[str, Any]]) -> None:
        resource.Resource.__init__(self)
        self.describe = describe

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.describe(), sort_keys=True).encode("utf-8")


def describePage(websocket: str, domains: Tuple[str, ...], addresses: Optional[List[tuple]]) -> Dict[str, Any]:
    """
    The document C{/config.json} serves.

    @param websocket: C{[web] websocket}, the URL to offer, or empty.
    @param addresses: the SIP service's C{(transport, host, port)}
        listeners, or L{None} while it is not running; the page builds a URL
        from a ws or wss one and the host it was loaded from.
    """
    listeners = [
        {"transport": transport.lower(), "port": port}
        for transport, _host, port in addresses or ()
        if transport in ("WS", "WSS")
    ]
    return {"websocket": websocket, "listeners": listeners, "domains": list(domains)}


def buildResource(root: str, sipjs: str, describe: Callable[[], Dict[str, Any]]) -> resource.IResource:
    """
    The site's root resource: the page's files at C{/}, SIP.js's modules
    at C{/sip.js/}, the listeners at C{/config.json}.
    """
    top = StaticFiles(root)
    top.putChild(b"sip.js", StaticFiles(os.path.join(sipjs, "lib")))
    top.putChild(b"config.json", PageConfig(describe))
    return top


class WebSite(QuietSite):
    """
    The page's site: no access log (a page load fetches some two hundred
    modules), and the headers of L{HEADERS} on every response.
    """

    def getResourceFor(self, request: Any) -> resource.IResource:
        for name, value in HEADERS:
            request.setHeader(name, value)
        return QuietSite.getResourceFor(self, request)
