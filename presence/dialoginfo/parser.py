"""
A hardened parser for C{application/dialog-info+xml} bodies (RFC 4235).

It runs on L{presence.xmlsafe} (no DTD, no entity, no external reference,
a size cap) and caps elements and depth while expat reads. Each
C{<dialog>} subtree is recorded as it is read and rendered, at its end tag,
into canonical self-contained text: white space between elements dropped,
attributes sorted by expanded name, the dialog-info namespace as the
default namespace, every other namespace declared on the C{<dialog>}
element as C{ns1}, C{ns2}, ... in order of first use. Everything else in
the dialog -- C{<local>}/C{<remote>} identities and targets, route sets,
session descriptions, extension elements -- is carried through as
published, because a phone needs it to pick a call up.

Validation is what composition, filtering and watchers depend on: the
root is C{dialog-info} in the RFC 4235 namespace with a non-negative
integer C{version}, a C{state} of C{full} or C{partial} and an C{entity}
naming the presentity; every C{<dialog>} has a unique non-empty C{id}, a
C{direction} (if any) of C{initiator} or C{recipient}, and exactly one
C{<state>} whose value is one of the five RFC 4235 states (letter case
and surrounding white space forgiven, rendered lowercase). Top-level
elements other than C{<dialog>} have no merge key and are dropped.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

from presence.dialoginfo.document import (
    DIALOG_INFO_NS,
    DIRECTIONS,
    RELEVANCE,
    Dialog,
    DialogInfoDocument,
    DialogInfoError,
)
from presence.pidf.document import escapeAttribute, escapeText
from presence.pidf.entity import sameEntity
from presence.xmlsafe import SEPARATOR, LimitedBuilder, attribute, parseHostile

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_ELEMENTS = 2000
DEFAULT_MAX_DEPTH = 32

# The largest version accepted: RFC 4235 does not bound it, a 32-bit
# counter is what phones keep.
MAX_VERSION = 2**32 - 1

_ROOT = DIALOG_INFO_NS + SEPARATOR + "dialog-info"
_DIALOG = DIALOG_INFO_NS + SEPARATOR + "dialog"
_STATE = DIALOG_INFO_NS + SEPARATOR + "state"
_XML_NS = "http://www.w3.org/XML/1998/namespace"
_WHITESPACE = " \t\r\n"

# Recorded events of a dialog subtree.
_START, _TEXT, _END = range(3)


def parseDialogInfo(
    body: bytes,
    presentity: Optional[str] = None,
    maxSize: int = DEFAULT_MAX_SIZE,
    maxElements: int = DEFAULT_MAX_ELEMENTS,
    maxDepth: int = DEFAULT_MAX_DEPTH,
) -> DialogInfoDocument:
    """
    Parse, validate and normalise a dialog-info body.

    @param body: the message body.
    @param presentity: if given, the URI the document must be about
        (compared with L{presence.pidf.entity.sameEntity}).
    @param maxSize: the largest body accepted, in bytes.
    @param maxElements: the most elements accepted.
    @param maxDepth: the deepest nesting accepted (the root is depth 1).
    @raise DialogInfoError: for any body that is refused.
    @raise TypeError: if C{body} is not bytes-like.
    """
    builder = _Builder(presentity, maxElements, maxDepth)
    parseHostile(body, "dialog-info", DialogInfoError, maxSize, builder)
    if builder.root is None:
        raise DialogInfoError("dialog-info without root")  # pragma: no cover
    return builder.root


class _Builder(LimitedBuilder):
    """
    The expat callbacks: validate the root and record each dialog.
    """

    kind = "dialog-info"
    error = DialogInfoError

    def __init__(self, presentity: Optional[str], maxElements: int, maxDepth: int) -> None:
        super().__init__(maxElements, maxDepth)
        self.presentity = presentity
        # The dialog subtree being recorded, or None outside a dialog.
        self.events: Optional[List[tuple]] = None
        self.hasChild: List[bool] = []
        self.dialogAttributes: List[str] = []
        self.stateText: Optional[str] = None
        self.inState = False
        self.ids: Set[str] = set()
        self.entity = ""
        self.version = 0
        self.state = ""
        self.dialogs: List[Dialog] = []
        self.root: Optional[DialogInfoDocument] = None

    def _text(self) -> str:
        pending = self.pending
        text = pending[0] if len(pending) == 1 else "".join(pending)
        del pending[:]
        return text

    def startElement(self, name: str, attributes: List[str]) -> None:
        depth = self.enter()
        events = self.events
        if self.pending:
            text = self._text()
            if events is not None and text.strip(_WHITESPACE):
                if self.inState:
                    raise DialogInfoError("dialog state with child elements")
                events.append((_TEXT, text))
        if self.hasChild:
            self.hasChild[-1] = True
        self.hasChild.append(False)
        if depth == 1:
            self._startRoot(name, attributes)
        elif depth == 2:
            if name == _DIALOG:
                self._startDialog(attributes)
                self.events = [(_START, name, attributes)]
        elif events is not None:
            if self.inState:
                raise DialogInfoError("dialog state with child elements")
            if depth == 3 and name == _STATE:
                if self.stateText is not None:
                    raise DialogInfoError("more than one state in a dialog")
                self.inState = True
                self.stateText = ""
            events.append((_START, name, attributes))

    def endElement(self, name: str) -> None:
        depth = self.depth
        self.depth = depth - 1
        hadChild = self.hasChild.pop()
        events = self.events
        if self.pending:
            text = self._text()
            if events is not None and (not hadChild or text.strip(_WHITESPACE)):
                if self.inState:
                    self.stateText = text
                else:
                    events.append((_TEXT, text))
        if events is None:
            if depth == 1:
                self.root = DialogInfoDocument(
                    self.entity, self.version, self.state, tuple(self.dialogs)
                )
            return
        if self.inState:
            self.inState = False
            state = (self.stateText or "").strip(_WHITESPACE).lower()
            if state not in RELEVANCE:
                raise DialogInfoError("invalid dialog state")
            self.stateText = state
            events.append((_TEXT, state))
        events.append((_END,))
        if depth == 2:
            self.events = None
            self.dialogs.append(self._endDialog(events))

    def _startRoot(self, name: str, attributes: List[str]) -> None:
        if name != _ROOT:
            if name.rpartition(SEPARATOR)[2] == "dialog-info":
                raise DialogInfoError("dialog-info element not in the RFC 4235 namespace")
            raise DialogInfoError("root element is not dialog-info")
        entity = attribute(attributes, "entity")
        if not entity:
            raise DialogInfoError("dialog-info without entity")
        if self.presentity is not None and not sameEntity(entity, self.presentity):
            raise DialogInfoError("dialog-info entity does not match the presentity")
        version = (attribute(attributes, "version") or "").strip(_WHITESPACE)
        if not version.isdigit() or not version.isascii() or int(version) > MAX_VERSION:
            raise DialogInfoError("dialog-info version must be a non-negative integer")
        state = (attribute(attributes, "state") or "").strip(_WHITESPACE)
        if state not in ("full", "partial"):
            raise DialogInfoError("dialog-info state must be full or partial")
        self.entity = entity
        self.version = int(version)
        self.state = state

    def _startDialog(self, attributes: List[str]) -> None:
        dialogId = attribute(attributes, "id")
        if not dialogId:
            raise DialogInfoError("dialog without id")
        if dialogId in self.ids:
            raise DialogInfoError("duplicate dialog id")
        self.ids.add(dialogId)
        direction = attribute(attributes, "direction")
        if direction is not None and direction not in DIRECTIONS:
            raise DialogInfoError("dialog direction must be initiator or recipient")
        self.dialogAttributes = attributes
        self.stateText = None

    def _endDialog(self, events: List[tuple]) -> Dialog:
        if self.stateText is None:
            raise DialogInfoError("dialog without state")
        attributes = self.dialogAttributes
        return Dialog(
            attribute(attributes, "id"),  # type: ignore[arg-type]
            self.stateText,
            _render(events),
            callId=attribute(attributes, "call-id"),
            localTag=attribute(attributes, "local-tag"),
            remoteTag=attribute(attributes, "remote-tag"),
            direction=attribute(attributes, "direction"),
        )


def _render(events: List[tuple]) -> str:
    """
    Render a recorded dialog subtree as self-contained canonical text.
    """
    prefixes: Dict[str, str] = {}

    def prefixed(name: str) -> str:
        uri, sep, local = name.rpartition(SEPARATOR)
        if not sep or uri == DIALOG_INFO_NS:
            return local
        if uri == _XML_NS:
            return "xml:" + local
        prefix = prefixes.get(uri)
        if prefix is None:
            prefix = prefixes[uri] = "ns" + str(len(prefixes) + 1)
        return prefix + ":" + local

    out: List[str] = []
    # Per open element: its rendered name and the default namespace in
    # force inside it (the dialog-info one, or "" below an element in no
    # namespace).
    names: List[str] = []
    defaults: List[str] = [DIALOG_INFO_NS]
    openTag = False
    for event in events:
        kind = event[0]
        if kind == _START:
            if openTag:
                out.append(">")
            name, attributes = event[1], event[2]
            uri = name.rpartition(SEPARATOR)[0]
            default = defaults[-1]
            rendered = prefixed(name)
            out.append("<" + rendered)
            if uri == "" and default != "":
                out.append(' xmlns=""')
                default = ""
            elif uri == DIALOG_INFO_NS and default != DIALOG_INFO_NS:
                out.append(' xmlns="' + DIALOG_INFO_NS + '"')
                default = DIALOG_INFO_NS
            names.append(rendered)
            defaults.append(default)
            pairs = sorted(
                (attributes[i], attributes[i + 1]) for i in range(0, len(attributes), 2)
            )
            for attrName, value in pairs:
                if SEPARATOR in attrName:
                    attrName = prefixed(attrName)
                out.append(" " + attrName + '="' + escapeAttribute(value) + '"')
            openTag = True
        elif kind == _TEXT:
            if openTag:
                out.append(">")
                openTag = False
            out.append(escapeText(event[1]))
        else:
            rendered = names.pop()
            defaults.pop()
            if openTag:
                out.append("/>")
                openTag = False
            else:
                out.append("</" + rendered + ">")
    text = "".join(out)
    if not prefixes:
        return text
    # Every other namespace is declared on the <dialog> element itself.
    declarations = "".join(
        " xmlns:" + prefix + '="' + escapeAttribute(uri) + '"' for uri, prefix in prefixes.items()
    )
    return "<dialog" + declarations + text[len("<dialog") :]
