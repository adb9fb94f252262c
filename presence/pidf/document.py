"""
The value types shared by the PIDF parser and the compositor.

A parsed PIDF document is not kept as an XML tree. The parser cuts it into
the pieces the composition policy (DESIGN.md, "Composition policy") works
on -- tuples, top-level notes, the children of the person, devices and
other top-level extension elements -- and renders each piece once, at parse
time, into canonical XML text (a L{Fragment}). Composing publications is
then a matter of picking fragments by key and joining strings, with no
deep copies and no tree walking on the hot path: composition runs for
every PUBLISH.

Fragments use fixed prefixes for the namespaces we know (the PIDF namespace
is the default namespace, C{dm} and C{rpid}) and numbered placeholders for
any other namespace, because the prefixes of unknown namespaces (C{ns1},
C{ns2}, ...) depend on the order in which they first appear in the
I{composed} document, which is only known at composition time.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from presence.body import BodyError

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DM_NS = "urn:ietf:params:xml:ns:pidf:data-model"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# Flags a fragment sets when its text uses a fixed, declared prefix.
USES_DM = 1
USES_RPID = 2
USES_PIDF_PREFIX = 4  # "pidf:" -- PIDF attributes, or PIDF inside xmlns=""

# Sort rank of a person child, so that the merged person follows the
# RFC 4479 schema: extension elements, then notes, then the timestamp.
RANK_EXTENSION = 0
RANK_NOTE = 1
RANK_TIMESTAMP = 2

class PidfError(BodyError):
    """
    A PIDF body was refused: malformed, hostile, or not valid PIDF.

    One class for every refusal, because the caller does one thing with all
    of them: answer 400 with C{reason} (header-safe, see
    L{presence.body.BodyError}) as the reason phrase.
    """

    default = "invalid PIDF"


class Fragment:
    """
    One piece of a PIDF document, already rendered as canonical XML text.

    Treat instances as immutable: composed documents share them.

    @ivar key: what the composition policy merges this piece on: the tuple
        id, the element kind of a person child or top-level extension (its
        namespace and local name, plus C{xml:lang} for notes), the
        C{deviceID} of a device, the text of a top-level note.
    @ivar text: the XML text. When C{uris} is not empty it is a
        C{str.format} template whose positional fields C{{0}}, C{{1}}, ...
        stand for the prefixes (with their colon) of C{uris}, and whose
        literal braces are doubled; otherwise it is the final text.
    @ivar uris: the namespaces other than PIDF, data-model, RPID and XML
        that the text uses, in order of first appearance.
    @ivar flags: a combination of C{USES_DM}, C{USES_RPID},
        C{USES_PIDF_PREFIX}: which fixed prefixes must be declared.
    @ivar rank: the ordering group of a person child (C{RANK_*}).
    @ivar basic: for a tuple, C{"open"}, C{"closed"} or L{None}.
    """

    __slots__ = ("key", "text", "uris", "flags", "rank", "basic")

    def __init__(
        self,
        key: object,
        text: str,
        uris: Tuple[str, ...] = (),
        flags: int = 0,
        rank: int = RANK_EXTENSION,
        basic: Optional[str] = None,
    ) -> None:
        self.key = key
        self.text = text
        self.uris = uris
        self.flags = flags
        self.rank = rank
        self.basic = basic

    def __repr__(self) -> str:
        return "<Fragment key={!r} text={!r}>".format(self.key, self.text)


class PidfDocument:
    """
    A parsed, validated and normalised PIDF document, or a composed one.

    Normalised means: whitespace between elements dropped, attributes
    sorted, C{<basic>} reduced to C{open}/C{closed}/absent, duplicate
    top-level notes removed, all persons folded into one whose children
    are in schema order. Rendering it (L{presence.pidf.compose.renderPidf})
    is deterministic, and composing a single document gives it back
    unchanged.

    @ivar entity: the C{entity} attribute as published.
    @ivar tuples: the C{<tuple>} fragments, keyed by tuple id.
    @ivar notes: the top-level C{<note>} fragments.
    @ivar personId: the id of the C{<dm:person>}, or L{None} if there is
        no person.
    @ivar personChildren: the children of the person, keyed by kind.
    @ivar devices: the C{<dm:device>} fragments, keyed by C{deviceID}.
    @ivar extensions: other top-level elements, keyed by kind.
    """

    __slots__ = (
        "entity",
        "tuples",
        "notes",
        "personId",
        "personChildren",
        "devices",
        "extensions",
    )

    def __init__(
        self,
        entity: str,
        tuples: Tuple[Fragment, ...] = (),
        notes: Tuple[Fragment, ...] = (),
        personId: Optional[str] = None,
        personChildren: Tuple[Fragment, ...] = (),
        devices: Tuple[Fragment, ...] = (),
        extensions: Tuple[Fragment, ...] = (),
    ) -> None:
        self.entity = entity
        self.tuples = tuples
        self.notes = notes
        self.personId = personId
        self.personChildren = personChildren
        self.devices = devices
        self.extensions = extensions

    @property
    def basic(self) -> Optional[str]:
        """
        The overall basic status: C{"open"} if any tuple is open, else
        C{"closed"} if any tuple is closed, else L{None}. A summary for logs
        and counters; watchers get the whole document.
        """
        result = None
        for fragment in self.tuples:
            if fragment.basic == "open":
                return "open"
            if fragment.basic == "closed":
                result = "closed"
        return result

    def __repr__(self) -> str:
        return "<PidfDocument entity={!r} tuples={!r}>".format(
            self.entity, [f.key for f in self.tuples]
        )


# Escaping. Braces are doubled too, because fragment text may be a
# str.format template (see Fragment.text); the parser undoes the doubling
# for fragments that turn out to use no placeholder.
_TEXT_SPECIAL = re.compile(r"[&<>\r{}]")
_TEXT_TABLE = {
    ord("&"): "&amp;",
    ord("<"): "&lt;",
    ord(">"): "&gt;",
    ord("\r"): "&#13;",
    ord("{"): "{{",
    ord("}"): "}}",
}
_ATTR_SPECIAL = re.compile(r'[&<>"\t\n\r{}]')
_ATTR_TABLE = dict(_TEXT_TABLE)
_ATTR_TABLE.update({ord('"'): "&quot;", ord("\t"): "&#9;", ord("\n"): "&#10;"})


def escapeTemplateText(text: str) -> str:
    """
    Escape character data for a fragment template (braces doubled).
    """
    if _TEXT_SPECIAL.search(text) is None:
        return text
    return text.translate(_TEXT_TABLE)


def escapeTemplateAttribute(value: str) -> str:
    """
    Escape an attribute value for a fragment template (braces doubled).

    Tab, LF and CR become character references so that the value survives
    attribute-value normalisation when the document is parsed again.
    """
    if _ATTR_SPECIAL.search(value) is None:
        return value
    return value.translate(_ATTR_TABLE)


def escapeAttribute(value: str) -> str:
    """
    Escape an attribute value for final output (braces left alone).
    """
    return escapeTemplateAttribute(value).replace("{{", "{").replace("}}", "}")


def escapeText(text: str) -> str:
    """
    Escape character data for final output (braces left alone).
    """
    return escapeTemplateText(text).replace("{{", "{").replace("}}", "}")
