"""
The metrics listener: C{GET /metrics} for Prometheus, C{/health} and
C{/ready} for whatever decides where traffic goes, served by twisted.web.

The page is rendered by C{prometheus_client} from a registry holding our
collector (L{presence.admin.collectors}: the families of the running parts,
the latency histograms, C{presence_build_info}) and its own process,
platform and garbage-collector collectors (C{process_*}, C{python_info},
C{python_gc_*} on CPython).  Rendering happens in the request handler, on
the reactor thread: no thread reads the live objects.
(C{prometheus_client}'s own twisted resource renders in a thread pool, so
it is not used.)  The format follows the scrape's C{Accept} header as
C{prometheus_client}'s exposition does: OpenMetrics when asked for
(Prometheus asks by default), else the text format 0.0.4; gzip when
accepted.

Off unless C{[metrics] enabled = yes}; listens on loopback unless
C{listen} says otherwise.  Only the configuration is pickled into a
C{.tap} file; the site and the port are built in
L{MetricsService.startService}.
"""

from __future__ import annotations

from typing import Any, List, Optional

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from twisted.logger import Logger
from twisted.web import resource, server

from presence.admin.collectors import PresenceCollector
from presence.admin.console import LiveObjects
from presence.admin.listening import ListeningService, describe, isLoopback
from presence.admin.readiness import Readiness
from presence.config import Config
from presence.runtime import RuntimeService


def makeRegistry(live: LiveObjects) -> CollectorRegistry:
    """
    A registry of our families and the process's, for one service tree.
    Collectors are not described in advance (C{auto_describe}): which
    families exist depends on what runs at scrape time.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PresenceCollector(live))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class MetricsResource(resource.Resource):
    """
    C{/metrics}: renders the registry at each scrape, in the format the
    scraper accepts.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        resource.Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        body = encoder(self.registry)
        request.setHeader(b"content-type", contentType.encode("latin-1"))
        return body


class HealthResource(resource.Resource):
    """
    C{/health}: the process is alive.  Answering at all shows it: the
    reactor runs the request handlers, and a stuck reactor answers nothing.
    """

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"live\n"


class ReadyResource(resource.Resource):
    """
    C{/ready}: 200 once every part of the process can serve, else 503 with
    the reasons, one per line (L{Readiness}).
    """

    isLeaf = True

    def __init__(self, readiness: Readiness) -> None:
        resource.Resource.__init__(self)
        self.readiness = readiness

    def render_GET(self, request: Any) -> Any:
        finished: List[bool] = []
        request.notifyFinish().addBoth(finished.append)

        def answer(reasons: List[str]) -> None:
            if finished:
                return  # the client went away
            body = b"ready\n"
            if reasons:
                request.setResponseCode(503)
                body = "".join("not ready: %s\n" % (reason,) for reason in reasons).encode("utf-8")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"content-length", b"%d" % (len(body),))
            request.write(body)
            request.finish()

        self.readiness.check().addCallback(answer)
        return server.NOT_DONE_YET


class MetricsRoot(resource.Resource):
    """
    The site's root: C{/metrics} (gzip when accepted), C{/health},
    C{/ready}, and a plain 404 for anything else.
    """

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        resource.Resource.__init__(self)
        self.putChild(
            b"metrics", resource.EncodingResourceWrapper(MetricsResource(registry), [server.GzipEncoderFactory()])
        )
        self.putChild(b"health", HealthResource())
        self.putChild(b"ready", ReadyResource(readiness))

    def getChild(self, path: bytes, request: Any) -> resource.IResource:
        return NotFound()


class NotFound(resource.Resource):
    """
    A plain-text 404 naming what is served.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found: this server has /metrics, /health and /ready\n"


class QuietSite(server.Site):
    """
    A site that writes no access log: a scrape every few seconds would
    drown the server's log.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(ListeningService):
    """
    The metrics listener in the service tree (name C{"metrics"}).  It finds
    the parts it reports on through its parent.

    @ivar address: the address it listens on, once started.
    """

    log = Logger()
    name = "metrics"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def startService(self) -> None:
        """
        Listen.

        @raise twisted.internet.error.CannotListenError: when the address
            is taken.
        """
        assert self.parent is not None, "the metrics endpoint needs the service tree as its parent"
        live = LiveObjects(self.parent)
        site = QuietSite(MetricsRoot(makeRegistry(live), Readiness(live, self.reactor)))
        where = describe(self.listenOn(self.config.metricsListen, site))
        self.log.info("Metrics listening on {address} (GET /metrics, /health, /ready)", address=where)
        if not isLoopback(self.address):
            self.log.warn("The metrics endpoint listens on {address}, not on loopback only", address=where)
