"""
Composition and rendering of PIDF documents (DESIGN.md, "Composition
policy").

A presentity may have several live publications (a desk phone, a mobile
client, a calendar gateway). Watchers get one coherent document built from
all of them, the newest publication first:

  - tuples: the union; for the same tuple id the newer publication wins;
  - person: one C{<dm:person>}, with the id of the newest publication that
    has a person; its children are merged per element kind (namespace and
    local name, and C{xml:lang} for notes), the newest publication having
    a kind contributing all its elements of that kind; unknown extension
    elements are merged the same way, never dropped;
  - devices: the union keyed by C{deviceID}, the newer one winning;
  - top-level notes: the union with duplicates removed;
  - other top-level extension elements: merged per kind like person
    children.

The output order follows the PIDF schema: tuples, notes, the person,
devices, other extensions; within each, newest publication first and
document order within a publication; person children are then grouped in
RFC 4479 order (extensions, notes, timestamp). Namespace declarations are
gathered on the root: PIDF as the default namespace, then C{dm}, C{rpid},
C{pidf} (for PIDF attributes such as C{mustUnderstand}) when used, then
C{ns1}, C{ns2}, ... for other namespaces in order of first appearance.

Rendering is deterministic and compact (no white space between elements),
so the same publications give the same bytes and "has the state changed?"
is a comparison of bytes.

Publication order is the caller's: the list order alone decides which
publication is newer, whatever timestamps the documents carry.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set

from presence.pidf.document import (
    DM_NS,
    PIDF_NS,
    RPID_NS,
    USES_DM,
    USES_PIDF_PREFIX,
    USES_RPID,
    Fragment,
    PidfDocument,
    escapeAttribute,
    escapeText,
)

DEFAULT_TUPLE_ID = "default"

_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<presence xmlns="' + PIDF_NS + '"'
_DECLARE_DM = ' xmlns:dm="' + DM_NS + '"'
_DECLARE_RPID = ' xmlns:rpid="' + RPID_NS + '"'
_DECLARE_PIDF = ' xmlns:pidf="' + PIDF_NS + '"'


def composeDocuments(publications: Sequence[PidfDocument]) -> PidfDocument:
    """
    Compose live publications into one document.

    @param publications: the parsed publications, newest first.
    @return: the composed document (the publication itself if there is only
        one: parsed documents are already normalised). Its C{entity} is the
        newest publication's; an empty list gives an empty document.
    """
    if len(publications) == 1:
        return publications[0]
    if not publications:
        return PidfDocument("")

    personId = None
    for publication in publications:
        if publication.personId is not None:
            personId = publication.personId
            break

    notes: List[Fragment] = []
    seen: Set[object] = set()
    for publication in publications:
        for fragment in publication.notes:
            if fragment.key not in seen:
                seen.add(fragment.key)
                notes.append(fragment)

    children = _mergeByKey(p.personChildren for p in publications)
    children.sort(key=_rankOf)

    return PidfDocument(
        publications[0].entity,
        tuple(_mergeByKey(p.tuples for p in publications)),
        tuple(notes),
        personId,
        tuple(children),
        tuple(_mergeByKey(p.devices for p in publications)),
        tuple(_mergeByKey(p.extensions for p in publications)),
    )


def renderPidf(presentity: str, document: PidfDocument) -> bytes:
    """
    Render a document as a UTF-8 C{application/pidf+xml} body.

    @param presentity: the URI written as the C{entity}, as given.
    @param document: a parsed or composed document.
    @return: the body; equal documents give equal bytes.
    """
    personId = document.personId
    sections = (
        document.tuples,
        document.notes,
        document.personChildren if personId is not None else (),
        document.devices,
        document.extensions,
    )
    flags = USES_DM if personId is not None else 0
    prefixes: Dict[str, str] = {}
    for fragments in sections:
        for fragment in fragments:
            flags |= fragment.flags
            for uri in fragment.uris:
                if uri not in prefixes:
                    prefixes[uri] = "ns" + str(len(prefixes) + 1) + ":"

    parts = [_HEAD]
    if flags & USES_DM:
        parts.append(_DECLARE_DM)
    if flags & USES_RPID:
        parts.append(_DECLARE_RPID)
    if flags & USES_PIDF_PREFIX:
        parts.append(_DECLARE_PIDF)
    for uri, prefix in prefixes.items():
        parts.append(" xmlns:" + prefix[:-1] + '="' + escapeAttribute(uri) + '"')
    parts.append(' entity="' + escapeAttribute(presentity) + '">')

    for index, fragments in enumerate(sections):
        if index == 2 and personId is not None:
            personTag = '<dm:person id="' + escapeAttribute(personId) + '"'
            if not fragments:
                parts.append(personTag + "/>")
                continue
            parts.append(personTag + ">")
        for fragment in fragments:
            if fragment.uris:
                parts.append(fragment.text.format(*[prefixes[u] for u in fragment.uris]))
            else:
                parts.append(fragment.text)
        if index == 2 and personId is not None:
            parts.append("</dm:person>")
    parts.append("</presence>")
    return "".join(parts).encode("utf-8")


def composePidf(presentity: str, publications: Sequence[PidfDocument]) -> bytes:
    """
    Compose live publications and render the result: the NOTIFY body.

    @param presentity: the presentity URI, written as the C{entity}.
    @param publications: the parsed publications, newest first.
    @return: the body; with no publication, L{closedDocument}. (Presence
        derived from a registration is the caller's business: it knows
        whether a binding lives and can call L{openDocument}.)
    """
    if not publications:
        return closedDocument(presentity)
    return renderPidf(presentity, composeDocuments(publications))


def basicDocument(
    basic: str,
    tupleId: str = DEFAULT_TUPLE_ID,
    contact: Optional[str] = None,
    entity: str = "",
) -> PidfDocument:
    """
    A document with a single tuple, for presence nobody published.

    @param basic: C{"open"} or C{"closed"}.
    @param tupleId: the tuple id (an XML NCName).
    @param contact: an optional contact URI for the tuple.
    @param entity: the entity recorded in the document.
    """
    if basic not in ("open", "closed"):
        raise ValueError("basic must be 'open' or 'closed'")
    text = '<tuple id="' + escapeAttribute(tupleId) + '"><status><basic>' + basic
    text += "</basic></status>"
    if contact is not None:
        text += "<contact>" + escapeText(contact) + "</contact>"
    text += "</tuple>"
    return PidfDocument(entity, (Fragment(tupleId, text, basic=basic),))


def closedDocument(presentity: str, tupleId: str = DEFAULT_TUPLE_ID) -> bytes:
    """
    The body for a presentity without publication: one closed tuple.
    """
    return renderPidf(presentity, basicDocument("closed", tupleId, entity=presentity))


def openDocument(
    presentity: str, tupleId: str = DEFAULT_TUPLE_ID, contact: Optional[str] = None
) -> bytes:
    """
    The body for a presentity known only to be reachable (a registration
    binding lives): one open tuple, with the contact if given.
    """
    return renderPidf(
        presentity, basicDocument("open", tupleId, contact, entity=presentity)
    )


def _mergeByKey(lists: Iterable[Sequence[Fragment]]) -> List[Fragment]:
    """
    Union of fragment lists (newest first) where, for each key, only the
    first list having that key contributes, with all its fragments of it.
    """
    owners: Dict[object, int] = {}
    merged: List[Fragment] = []
    for index, fragments in enumerate(lists):
        for fragment in fragments:
            if owners.setdefault(fragment.key, index) == index:
                merged.append(fragment)
    return merged


def _rankOf(fragment: Fragment) -> int:
    return fragment.rank
