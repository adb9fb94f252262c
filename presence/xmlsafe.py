"""
The hardened expat set-up shared by every XML body parser (PIDF,
dialog-info, watcherinfo).

Every XML body comes from the network, so the parser refuses rather than
guesses:

  - DTDs (and with them every entity declaration, internal or external)
    and external references are refused by handlers that raise, so
    "billion laughs" and external-entity attacks stop at the DOCTYPE; an
    undeclared entity reference is expat's own error;
  - the body size is capped before expat sees a byte; the callers cap the
    element count and nesting depth in their start-element handler, while
    expat reads, so a hostile body costs at most C{maxSize} bytes of work;
  - every expat, encoding or codec failure becomes the caller's
    L{presence.body.BodyError} subclass with a reason fit for a SIP reason
    phrase.

Why expat directly rather than C{defusedxml}, which installs the same
refusing handlers: its parser is ElementTree's pure-Python C{XMLParser},
whose construction alone cost a tenth of the server's CPU per PUBLISH under
load, for handlers that are a few lines here (tested with the attacks they
stop, in C{tests/test_pidf.py} and C{tests/test_xmlsafe.py}).
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Type

from xml.parsers import expat

from presence.body import BodyError

# Expat reports names as "uri}local" with this separator.
SEPARATOR = "}"


class _Refused(Exception):
    """
    Raised by the refusing handlers; turned into the caller's error class.
    """


def _refuseDoctype(*args: object) -> None:
    raise _Refused("DTD not allowed in ")


def _refuseEntity(*args: object) -> None:
    raise _Refused("entity declaration not allowed in ")


def _refuseExternal(*args: object) -> int:
    raise _Refused("external reference not allowed in ")


class Builder(Protocol):
    """
    What L{parseHostile} feeds: expat's element callbacks, and the list
    expat appends character data to.
    """

    pending: List[str]

    def startElement(self, name: str, attributes: List[str]) -> None: ...

    def endElement(self, name: str) -> None: ...


class LimitedBuilder:
    """
    A base for builders that count elements and depth while expat reads.

    @cvar kind: the body type's name for reasons.
    @cvar error: the L{BodyError} subclass raised.
    """

    kind = "XML"
    error: Type[BodyError] = BodyError

    def __init__(self, maxElements: int, maxDepth: int) -> None:
        self.maxElements = maxElements
        self.maxDepth = maxDepth
        self.count = 0
        self.depth = 0
        self.pending: List[str] = []

    def enter(self) -> int:
        """
        Count one more element, refusing one too many or too deep.

        @return: its depth (the root is 1).
        """
        self.count += 1
        depth = self.depth = self.depth + 1
        if self.count > self.maxElements:
            raise self.error("too many elements in " + self.kind)
        if depth > self.maxDepth:
            raise self.error(self.kind + " nested too deeply")
        return depth


def parseHostile(
    body: bytes,
    kind: str,
    error: Type[BodyError],
    maxSize: int,
    builder: Builder,
) -> None:
    """
    Feed a whole body to expat with the refusing handlers installed.

    Names reach the builder namespace-expanded as C{uri}local} (no
    separator for names in no namespace), attributes as a flat name,
    value list; character data is buffered into one text run appended to
    C{builder.pending}. An instance of C{error} raised by a builder
    passes through.

    @param body: the message body (UTF-8 unless its XML declaration or a
        byte order mark says otherwise).
    @param kind: the body type's name for reasons (C{"PIDF"}).
    @param error: the L{BodyError} subclass raised for every refusal.
    @param maxSize: the largest body accepted, in bytes.
    @raise TypeError: if C{body} is not bytes-like.
    """
    if isinstance(body, str) or not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(kind + " body must be bytes, not " + type(body).__name__)
    size = len(body)
    if size > maxSize:
        raise error("{} body too large ({} > {} bytes)".format(kind, size, maxSize))
    if not size:
        raise error("empty " + kind + " body")
    parser = expat.ParserCreate(None, SEPARATOR)
    parser.buffer_text = True
    parser.ordered_attributes = True
    parser.StartDoctypeDeclHandler = _refuseDoctype
    parser.EntityDeclHandler = _refuseEntity
    parser.UnparsedEntityDeclHandler = _refuseEntity
    parser.ExternalEntityRefHandler = _refuseExternal
    parser.StartElementHandler = builder.startElement
    parser.EndElementHandler = builder.endElement
    parser.CharacterDataHandler = builder.pending.append
    try:
        parser.Parse(body, True)
    except _Refused as e:
        raise error(str(e) + kind) from None
    except expat.ExpatError as e:
        raise error(
            "malformed XML: {} at line {} column {}".format(
                expat.ErrorString(e.code), e.lineno, e.offset
            )
        ) from None
    except (ValueError, LookupError, UnicodeError) as e:
        if isinstance(e, error):
            raise
        # expat refusing an encoding named in the XML declaration, or a
        # codec failing under it.
        raise error("unreadable XML: " + type(e).__name__) from None


def attribute(attributes: List[str], name: str) -> Optional[str]:
    """
    Find an attribute in expat's flat name, value list.
    """
    for index in range(0, len(attributes), 2):
        if attributes[index] == name:
            return attributes[index + 1]
    return None
