"""
The value types of the dialog event package's body (RFC 4235,
C{application/dialog-info+xml}).

A parsed document is not kept as an XML tree: each C{<dialog>} element is
rendered once, at parse time, into canonical self-contained XML text (a
L{Dialog}), with the few attributes composition and filtering look at
pulled out beside it. Composing a resource's publications is then picking
dialogs by id and joining strings; the C{<local>} and C{<remote>}
identities and targets, which a phone needs for call pickup, travel inside
the text untouched.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from presence.body import BodyError

DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
CONTENT_TYPE = "application/dialog-info+xml"

# RFC 4235 section 3.7.1: the states of a dialog's state machine.
TRYING = "trying"
PROCEEDING = "proceeding"
EARLY = "early"
CONFIRMED = "confirmed"
TERMINATED = "terminated"

# Which dialog a one-dialog subscriber is shown: a ringing call first (it
# can be picked up), then a call in progress, then one being set up.
RELEVANCE: Dict[str, int] = {
    EARLY: 4,
    CONFIRMED: 3,
    PROCEEDING: 2,
    TRYING: 1,
    TERMINATED: 0,
}

DIRECTIONS = ("initiator", "recipient")


class DialogInfoError(BodyError):
    """
    A dialog-info body was refused: malformed, hostile or invalid.
    """

    default = "invalid dialog-info"


class Dialog:
    """
    One C{<dialog>} element, rendered as canonical XML text.

    Treat instances as immutable: composed documents share them.

    @ivar id: the C{id} attribute, what composition merges on.
    @ivar callId: the C{call-id} attribute, or L{None}.
    @ivar localTag: the C{local-tag} attribute, or L{None}.
    @ivar remoteTag: the C{remote-tag} attribute, or L{None}.
    @ivar direction: C{"initiator"}, C{"recipient"} or L{None}.
    @ivar state: the C{<state>} value, one of L{RELEVANCE}'s keys.
    @ivar text: the element as XML text in which unprefixed names are in
        the dialog-info namespace and every other namespace is declared.
    """

    __slots__ = ("id", "callId", "localTag", "remoteTag", "direction", "state", "text")

    def __init__(
        self,
        id: str,
        state: str,
        text: str,
        callId: Optional[str] = None,
        localTag: Optional[str] = None,
        remoteTag: Optional[str] = None,
        direction: Optional[str] = None,
    ) -> None:
        self.id = id
        self.state = state
        self.text = text
        self.callId = callId
        self.localTag = localTag
        self.remoteTag = remoteTag
        self.direction = direction

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dialog) and self.text == other.text

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return "<Dialog id={!r} state={!r}>".format(self.id, self.state)


class DialogInfoDocument:
    """
    A parsed and validated C{dialog-info} document.

    @ivar entity: the C{entity} attribute as published.
    @ivar version: the publisher's C{version}.
    @ivar state: C{"full"} or C{"partial"}, as published. A publication
        stands for its publisher's dialogs either way: a later PUBLISH
        replaces it whole (RFC 3903).
    @ivar dialogs: the dialogs in document order.
    """

    __slots__ = ("entity", "version", "state", "dialogs")

    def __init__(
        self, entity: str, version: int, state: str, dialogs: Tuple[Dialog, ...] = ()
    ) -> None:
        self.entity = entity
        self.version = version
        self.state = state
        self.dialogs = dialogs

    def __repr__(self) -> str:
        return "<DialogInfoDocument entity={!r} dialogs={!r}>".format(
            self.entity, [d.id for d in self.dialogs]
        )
