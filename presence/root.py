"""
The root of the service tree, which orders shutdown.

C{MultiService} stops every child at once.  A presence server must instead
stop taking requests, let the requests whose writes are queued commit and
be answered over the sockets that are still open, flush the store, and
only then close the sockets: an operator's SIGTERM then loses nothing and
leaves every subscription stored, not terminated, for the next start.
"""

from __future__ import annotations

from typing import Any, Generator

from twisted.application import service
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger


class PresenceService(service.MultiService):
    """
    Starts children in order; stops them as described above.
    """

    log = Logger()

    @inlineCallbacks
    def stopService(self) -> Generator[Any, Any, None]:
        service.Service.stopService(self)
        names = {child.name: child for child in self}
        sip = names.get("sip")
        store = names.get("store")
        if sip is not None:
            sip.pause()
        others = [child for child in reversed(list(self)) if child not in (sip, store)]
        yield gatherResults([maybeDeferred(child.stopService) for child in others])
        if store is not None:
            yield maybeDeferred(store.stopService)
        if sip is not None:
            yield maybeDeferred(sip.stopService)
