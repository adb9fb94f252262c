"""
The web page in the service tree: an HTTP listener serving
L{presence.web.site}, off unless C{[web] enabled = yes}.

Only the configuration is pickled into a C{.tap} file; where SIP.js is, the
site and the port are found and built in L{WebService.startService}, on
the host that runs it.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from presence.admin.console import LiveObjects
from presence.admin.listening import ListeningService, describe
from presence.config import Config
from presence.web.site import WebError, WebSite, buildResource, describePage, findSipjs, pageRoot


def webProblem(config: Config) -> Optional[str]:
    """
    Why the page cannot be served as configured, in one line, or L{None};
    checked before the reactor runs.
    """
    try:
        pageRoot(config.webRoot)
        findSipjs(config.webSipjs)
    except WebError as e:
        return str(e)
    return None


def offersWebSocket(config: Config) -> bool:
    """
    Whether the page has a SIP WebSocket URL to offer: a configured one, or
    a ws or wss listener of this process.
    """
    return bool(config.webWebsocket) or any(spec.transport in ("WS", "WSS") for spec in config.listen)


class WebService(ListeningService):
    """
    The page's HTTP listener (name C{"web"}).  It finds the SIP service's
    listeners through its parent, for C{/config.json}.

    @ivar address: the address it listens on, once started.
    """

    log = Logger()
    name = "web"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        ListeningService.__init__(self, reactor)

    def startService(self) -> None:
        """
        Find the page and SIP.js, then listen.

        @raise WebError: when either is missing (a loaded C{.tap} on a host
            without them).
        @raise twisted.internet.error.CannotListenError: when the address
            is taken.
        """
        assert self.parent is not None, "the web page needs the service tree as its parent"
        config = self.config
        root = pageRoot(config.webRoot)
        sipjs, version = findSipjs(config.webSipjs)
        live = LiveObjects(self.parent)

        def page() -> dict:
            sip = live.service("sip")
            return describePage(config.webWebsocket, config.domains, getattr(sip, "addresses", None))

        address = self.listenOn(config.webListen, WebSite(buildResource(root, sipjs, page)))
        scheme = "https" if config.webListen.split(":", 1)[0] in ("ssl", "tls") else "http"
        self.log.info(
            "Web page listening on {address}: {scheme}://{address}/ (SIP.js {version} from {sipjs})",
            address=describe(address),
            scheme=scheme,
            version=version,
            sipjs=sipjs,
        )
        if not offersWebSocket(config):
            self.log.warn(
                "The web page has no SIP WebSocket to offer: add ws:PORT or wss:PORT to [server] listen, "
                "or set [web] websocket"
            )
