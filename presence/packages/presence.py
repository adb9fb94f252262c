"""
The C{presence} event package (RFC 3856): PIDF bodies (RFC 3863, with RPID
and the data model), composed per DESIGN.md's policy by L{presence.pidf}.
"""

from __future__ import annotations

from typing import Any, List, Optional

from zope.interface import implementer

from presence.interfaces import IEventPackage
from presence.pidf import PidfDocument, composePidf, openDocument, parsePidf

PIDF = "application/pidf+xml"


@implementer(IEventPackage)
class PresencePackage:
    """
    Presence: watchers see the composed PIDF document of a presentity; a
    presentity that publishes nothing is open while one of its
    registration bindings lives, closed otherwise.
    """

    event = "presence"
    bodyTypes = (PIDF,)
    publishTypes = (PIDF,)
    ownerOnly = False

    def parse(self, body: bytes, resource: str) -> PidfDocument:
        return parsePidf(body, resource)

    def compose(self, resource: str, documents: List[PidfDocument]) -> bytes:
        return composePidf(resource, documents)

    def withoutState(self, resource: str, registered: Optional[str]) -> bytes:
        if registered is not None:
            return openDocument(resource, contact=registered)
        return composePidf(resource, [])

    def initialState(self, params: Any) -> str:
        return ""

    def render(self, subscription: Any, body: bytes) -> bytes:
        """
        Every watcher of a presentity gets the same document.
        """
        return body
