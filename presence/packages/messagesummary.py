"""
The C{message-summary} event package (RFC 3842): message waiting.

A voicemail system PUBLISHes a mailbox's summary (or an operator pushes
one with C{presence-admin mwi}, L{presence.admin.mwi}); the account's own
phones SUBSCRIBE and show a lamp and the counts. A mailbox is private:
only the account itself may watch it (C{ownerOnly}).
"""

from __future__ import annotations

from typing import Any, List, Optional

from zope.interface import implementer

from presence.interfaces import IEventPackage
from presence.mwi import CONTENT_TYPE, MessageSummary, noMessages, parseMessageSummary, renderMessageSummary


@implementer(IEventPackage)
class MessageSummaryPackage:
    """
    The newest live publication is the mailbox's summary: a voicemail
    system publishes the whole state of a mailbox each time.
    """

    event = "message-summary"
    bodyTypes = (CONTENT_TYPE,)
    publishTypes = (CONTENT_TYPE,)
    ownerOnly = True

    def parse(self, body: bytes, resource: str) -> MessageSummary:
        return parseMessageSummary(body)

    def compose(self, resource: str, documents: List[MessageSummary]) -> bytes:
        return renderMessageSummary(documents[0])

    def withoutState(self, resource: str, registered: Optional[str]) -> bytes:
        return noMessages(resource)

    def initialState(self, params: Any) -> str:
        return ""

    def render(self, subscription: Any, body: bytes) -> bytes:
        return body
