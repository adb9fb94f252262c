"""
The router in front of the manager's handlers: a SUBSCRIBE or PUBLISH goes
by its C{Event} header to the event package of that name and the handler
of its method, as C{twisted.names.server.DNSServerFactory.messageReceived}
hands each message to the handler of its kind.  A request naming no
package the manager serves (or a PUBLISH to one nobody publishes) is
answered 489 Bad Event with C{Allow-Events} listing them all (RFC 6665
§8.2.1, RFC 3903 §6).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from presence.interfaces import IEventPackage, IPackageRegistry
from presence.manager.admission import Admission
from presence.sip.headers import HeaderError, parseValueParams
from presence.sip.message import Request
from presence.sip.transaction import ServerTransaction

Handler = Callable[[Request, ServerTransaction, IEventPackage, Dict[str, Optional[str]]], None]


class EventRouter:
    """
    Routes one core's SUBSCRIBEs and PUBLISHes to the packages of one
    registry.
    """

    def __init__(self, core: Any, packages: IPackageRegistry, admission: Admission) -> None:
        """
        @param admission: runs each request's first step, so that an
            unexpected error answers 500.
        """
        self.core = core
        self.packages = packages
        self.admission = admission

    def install(self, subscribe: Handler, publish: Handler) -> None:
        """
        Serve the core's SUBSCRIBEs with C{subscribe} and PUBLISHes with
        C{publish}, and advertise the packages (C{Allow-Events},
        C{Accept}).
        """
        core = self.core
        core.addHandler("SUBSCRIBE", self._routed(subscribe, False))
        core.addHandler("PUBLISH", self._routed(publish, True))
        core.acceptTypes = self.packages.bodyTypes()
        core.allowEvents = self.packages.names()

    def _routed(self, handler: Handler, publishing: bool) -> Any:
        """
        The core's handler of one method.  An unexpected error answers 500
        instead of leaving the server transaction unanswered forever (the
        core would only log it): nothing a peer sends may wedge a request.

        @param publishing: the method is PUBLISH, which a package that takes
            no publications refuses as an unknown one (489).
        """

        def serve(request: Request, tx: ServerTransaction) -> None:
            self.admission.proceed(tx, self.route, handler, publishing, request, tx)

        return serve

    def route(self, handler: Handler, publishing: bool, request: Request, tx: ServerTransaction) -> None:
        package = None
        params: Dict[str, Optional[str]] = {}
        event = request.header("event")
        if event is not None:
            try:
                name, params = parseValueParams(event)
            except HeaderError:
                pass
            else:
                package = self.packages.get(name)
        if package is None or (publishing and not package.publishTypes):
            self.core.respond(tx, 489, None, [("Allow-Events", ", ".join(self.packages.names()))])
            return
        handler(request, tx, package, params)
