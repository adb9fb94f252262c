"""
A hardened, single-pass PIDF parser (RFC 3863, RFC 4479, RFC 4480).

Every PIDF body comes from the network, so the parser is built to refuse
rather than to guess: it runs on the hardened expat set-up of
L{presence.xmlsafe} (no DTD, no entity, no external reference, a size
cap), caps the number of elements and the nesting depth while expat reads,
and checks the root at its start tag, so a body for someone else is
refused before the rest is read.

The parser does not build an element tree. Its expat callbacks cut the
document into the pieces the composition policy merges (see
L{presence.pidf.document}) and render each piece to canonical text as it
goes, because parse, compose and render run for every PUBLISH.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set, Tuple

from presence.pidf.document import (
    DM_NS,
    PIDF_NS,
    RANK_EXTENSION,
    RANK_NOTE,
    RANK_TIMESTAMP,
    RPID_NS,
    USES_DM,
    USES_PIDF_PREFIX,
    USES_RPID,
    XML_NS,
    Fragment,
    PidfDocument,
    PidfError,
    escapeTemplateAttribute,
    escapeTemplateText,
)
from presence.pidf.entity import sameEntity
from presence.xmlsafe import attribute as _attribute
from presence.xmlsafe import parseHostile

DEFAULT_MAX_SIZE = 64 * 1024
DEFAULT_MAX_ELEMENTS = 2000
DEFAULT_MAX_DEPTH = 32

# Element names as expat reports them with namespace_separator "}".
_PRESENCE = PIDF_NS + "}presence"
_TUPLE = PIDF_NS + "}tuple"
_STATUS = PIDF_NS + "}status"
_BASIC = PIDF_NS + "}basic"
_NOTE = PIDF_NS + "}note"
_PERSON = DM_NS + "}person"
_DEVICE = DM_NS + "}device"
_DEVICE_ID = DM_NS + "}deviceID"
_DM_NOTE = DM_NS + "}note"
_DM_TIMESTAMP = DM_NS + "}timestamp"
_XML_LANG = XML_NS + "}lang"

# What the element being read at depth 2 (a child of <presence>) is.
_NONE, _IN_TUPLE, _IN_NOTE, _IN_PERSON, _IN_DEVICE, _IN_EXTENSION = range(6)

# XML white space (str.isspace would also match NBSP and friends).
_WHITESPACE = " \t\r\n"

# Start and end tag text of names in the namespaces with fixed prefixes,
# shared by all parses. Bounded: names are chosen by the sender.
_FIXED_NAMES: Dict[str, Tuple[str, str, int]] = {}
_FIXED_NAMES_MAX = 2048
_FIXED_PREFIXES = {DM_NS: ("dm:", USES_DM), RPID_NS: ("rpid:", USES_RPID)}


def parsePidf(
    body: bytes,
    presentity: Optional[str] = None,
    maxSize: int = DEFAULT_MAX_SIZE,
    maxElements: int = DEFAULT_MAX_ELEMENTS,
    maxDepth: int = DEFAULT_MAX_DEPTH,
) -> PidfDocument:
    """
    Parse, validate and normalise a PIDF body.

    The body is UTF-8 unless its XML declaration (or a byte order mark)
    says otherwise. Validation is what composition and watchers depend on,
    not the full schema:

      - the root is C{{urn:ietf:params:xml:ns:pidf}presence} with a
        non-empty C{entity}, which names C{presentity} when one is given
        (compared with L{presence.pidf.entity.sameEntity});
      - every C{<tuple>} has a unique, non-empty C{id} and a C{<status>};
      - a C{<basic>} holds C{open} or C{closed} (surrounding white space
        and letter case forgiven). C{unknown} is accepted and treated as
        if C{<basic>} were absent -- it is dropped from the stored tuple --
        because some baresip versions publish it first and refusing it
        would lose their later state; any other value is refused;
      - C{<dm:person>} and C{<dm:device>} have an C{id}.

    Unknown elements and namespaces are kept. Text directly inside
    C{<presence>} or C{<dm:person>} (not allowed by the schemas) is
    dropped, as is white space between elements anywhere. QName-valued
    content (a prefix inside text or an attribute value) is not rewritten
    when prefixes are, so it would lose its meaning; PIDF, RPID and the
    data model use none.

    @param body: the message body.
    @param presentity: if given, the URI the document must be about.
    @param maxSize: the largest body accepted, in bytes.
    @param maxElements: the most elements accepted.
    @param maxDepth: the deepest nesting accepted (the root is depth 1).
    @return: the document.
    @raise PidfError: for any body that is refused.
    @raise TypeError: if C{body} is not bytes-like.
    """
    builder = _Builder(presentity, maxElements, maxDepth)
    parseHostile(body, "PIDF", PidfError, maxSize, builder)
    return builder.close()


class _Builder:
    """
    The expat callbacks: validate, cut the document into fragments and
    render each fragment to canonical text, in one pass.

    Only one fragment is recorded at a time (a child of C{<presence>}, or a
    child of C{<dm:person>}); C{out} holds its text pieces, or is L{None}
    when the element being read is outside any fragment.
    """

    __slots__ = (
        "presentity",
        "maxElements",
        "maxDepth",
        "count",
        "depth",
        "pending",
        "hasChild",
        "stack",
        "out",
        "openTag",
        "slots",
        "flags",
        "defaultIsPidf",
        "section",
        "itemKey",
        "sawStatus",
        "inStatus",
        "sawBasic",
        "basicMark",
        "basicOpenTag",
        "basicValue",
        "deviceId",
        "personRank",
        "entity",
        "tuples",
        "tupleIds",
        "notes",
        "noteTexts",
        "personId",
        "personChildren",
        "devices",
        "extensions",
    )

    def __init__(
        self, presentity: Optional[str], maxElements: int, maxDepth: int
    ) -> None:
        self.presentity = presentity
        self.maxElements = maxElements
        self.maxDepth = maxDepth
        self.count = 0
        self.depth = 0
        # Character data since the last tag, appended to by expat directly.
        self.pending: List[str] = []
        # Whether the element being read has had a child element yet.
        self.hasChild = False
        # One (end tag, saved defaultIsPidf) per open element.
        self.stack: List[Tuple[Optional[str], bool]] = []
        # The fragment being recorded.
        self.out: Optional[List[str]] = None
        self.openTag = False  # its last start tag still lacks ">"
        self.slots: Dict[str, str] = {}
        self.flags = 0
        # Whether unprefixed names in the output mean PIDF here; false
        # below an element in no namespace, which gets xmlns="".
        self.defaultIsPidf = True
        # The child of <presence> being read.
        self.section = _NONE
        self.itemKey: object = None
        self.sawStatus = False
        self.inStatus = False
        self.sawBasic = False
        self.basicMark = -1
        self.basicOpenTag = False
        self.basicValue: Optional[str] = None
        self.deviceId: Optional[str] = None
        self.personRank = RANK_EXTENSION
        # The document.
        self.entity = ""
        self.tuples: List[Fragment] = []
        self.tupleIds: Set[str] = set()
        self.notes: List[Fragment] = []
        self.noteTexts: Set[Tuple[str, Tuple[str, ...]]] = set()
        self.personId: Optional[str] = None
        self.personChildren: List[Fragment] = []
        self.devices: List[Fragment] = []
        self.extensions: List[Fragment] = []

    # -- expat callbacks -------------------------------------------------

    def startElement(self, name: str, attributes: List[str]) -> None:
        """
        Expat's StartElementHandler (names as C{uri}local}, attributes as
        a flat name, value list).
        """
        count = self.count = self.count + 1
        depth = self.depth = self.depth + 1
        if count > self.maxElements:
            raise PidfError("too many elements in PIDF")
        if depth > self.maxDepth:
            raise PidfError("PIDF nested too deeply")
        out = self.out
        pending = self.pending
        if pending:
            # Text before a child element: kept unless it is white space.
            if out is not None:
                text = pending[0] if len(pending) == 1 else "".join(pending)
                if text.strip(_WHITESPACE):
                    if self.openTag:
                        out.append(">")
                        self.openTag = False
                    out.append(escapeTemplateText(text))
            del pending[:]

        if depth > 3:
            if depth == 4 and self.inStatus and name == _BASIC:
                self._startBasic()
        elif depth == 3:
            section = self.section
            if section == _IN_PERSON:
                self._startPersonChild(name, attributes)
                out = self.out
            elif section == _IN_TUPLE and name == _STATUS:
                self.sawStatus = self.inStatus = True
        elif depth == 2:
            self._startItem(name, attributes)
            out = self.out
        else:
            self._startRoot(name, attributes)

        saved = self.defaultIsPidf
        if out is None:
            self.stack.append((None, saved))
            self.hasChild = False
            return
        if self.openTag:
            out.append(">")
        fixed = _FIXED_NAMES.get(name)
        # Cached PIDF names are unprefixed: valid only under a PIDF default.
        if fixed is not None and (saved or fixed[2]):
            out.append(fixed[0])
            self.flags |= fixed[2]
            endTag = fixed[1]
        else:
            startTag, endTag = self._renderName(name)
            out.append(startTag)
        if attributes:
            self._renderAttributes(out, attributes)
        self.openTag = True
        self.stack.append((endTag, saved))
        self.hasChild = False

    def endElement(self, name: str) -> None:
        """
        Expat's EndElementHandler.
        """
        depth = self.depth
        self.depth = depth - 1
        endTag, saved = self.stack.pop()
        out = self.out
        if depth == 4 and self.basicMark >= 0:
            self._endBasic()
        else:
            pending = self.pending
            if pending:
                text = pending[0] if len(pending) == 1 else "".join(pending)
                del pending[:]
                if (
                    depth == 3
                    and self.section == _IN_DEVICE
                    and name == _DEVICE_ID
                    and self.deviceId is None
                    and not self.hasChild
                ):
                    self.deviceId = text.strip(_WHITESPACE)
                # Text closing an element: white space is layout if the
                # element has children, content if it is a leaf.
                if out is not None and (not self.hasChild or text.strip(_WHITESPACE)):
                    if self.openTag:
                        out.append(">")
                        self.openTag = False
                    out.append(escapeTemplateText(text))
            if out is not None:
                if self.openTag:
                    out.append("/>")
                    self.openTag = False
                else:
                    out.append(endTag)  # type: ignore[arg-type]
        self.defaultIsPidf = saved
        self.hasChild = True
        if depth < 4:
            if depth == 2:
                self._endItem()
            elif depth == 3:
                if self.section == _IN_PERSON:
                    self._endPersonChild()
                elif self.inStatus:
                    self.inStatus = False

    def close(self) -> PidfDocument:
        """
        Called once expat has read the whole body.
        """
        return PidfDocument(
            self.entity,
            tuple(self.tuples),
            tuple(self.notes),
            self.personId,
            tuple(sorted(self.personChildren, key=_rankOf)),
            tuple(self.devices),
            tuple(self.extensions),
        )

    # -- structure ---------------------------------------------------------

    def _startRoot(self, name: str, attributes: List[str]) -> None:
        if name != _PRESENCE:
            if name.rpartition("}")[2] == "presence":
                raise PidfError("presence element not in the PIDF namespace")
            raise PidfError("root element is not a PIDF presence")
        entity = _attribute(attributes, "entity")
        if not entity:
            raise PidfError("PIDF presence without entity")
        if self.presentity is not None and not sameEntity(entity, self.presentity):
            raise PidfError("PIDF entity does not match the presentity")
        self.entity = entity

    def _startItem(self, name: str, attributes: List[str]) -> None:
        if name == _TUPLE:
            tupleId = _attribute(attributes, "id")
            if not tupleId:
                raise PidfError("tuple without id")
            if tupleId in self.tupleIds:
                raise PidfError("duplicate tuple id")
            self.tupleIds.add(tupleId)
            self.section = _IN_TUPLE
            self.itemKey = tupleId
            self.sawStatus = self.sawBasic = False
            self.basicValue = None
        elif name == _NOTE:
            self.section = _IN_NOTE
        elif name == _PERSON:
            personId = _attribute(attributes, "id")
            if not personId:
                raise PidfError("person without id")
            if self.personId is None:
                self.personId = personId
            self.section = _IN_PERSON
            return  # the person's children are the fragments
        elif name == _DEVICE:
            deviceId = _attribute(attributes, "id")
            if not deviceId:
                raise PidfError("device without id")
            self.section = _IN_DEVICE
            self.itemKey = deviceId
            self.deviceId = None
        else:
            self.section = _IN_EXTENSION
            self.itemKey = name
        self._beginFragment()

    def _endItem(self) -> None:
        section = self.section
        self.section = _NONE
        if section == _IN_TUPLE:
            if not self.sawStatus:
                raise PidfError("tuple without status")
            self.tuples.append(self._endFragment(self.itemKey, basic=self.basicValue))
        elif section == _IN_NOTE:
            fragment = self._endFragment(None)
            identity = (fragment.text, fragment.uris)
            if identity not in self.noteTexts:
                self.noteTexts.add(identity)
                fragment.key = identity
                self.notes.append(fragment)
        elif section == _IN_DEVICE:
            # A device without deviceID (schema-invalid) is keyed by its id
            # attribute, in a form no deviceID text can take.
            key = self.deviceId or ("#id", self.itemKey)
            self.devices.append(self._endFragment(key))
        elif section == _IN_EXTENSION:
            self.extensions.append(self._endFragment(self.itemKey))

    def _startPersonChild(self, name: str, attributes: List[str]) -> None:
        if name == _DM_NOTE or name == _NOTE:
            lang = _attribute(attributes, _XML_LANG) or ""
            self.itemKey = (name, lang.strip(_WHITESPACE).lower())
            self.personRank = RANK_NOTE
        else:
            self.itemKey = name
            self.personRank = RANK_TIMESTAMP if name == _DM_TIMESTAMP else RANK_EXTENSION
        self._beginFragment()

    def _endPersonChild(self) -> None:
        self.personChildren.append(self._endFragment(self.itemKey, self.personRank))

    def _startBasic(self) -> None:
        if self.sawBasic:
            raise PidfError("more than one basic in a tuple status")
        self.sawBasic = True
        # Everything from here (including the ">" that may close the
        # status start tag) is replaced by the canonical <basic> at its end.
        self.basicMark = len(self.out)  # type: ignore[arg-type]
        self.basicOpenTag = self.openTag

    def _endBasic(self) -> None:
        if self.hasChild:
            raise PidfError("invalid basic status")
        value = "".join(self.pending).strip(_WHITESPACE).lower()
        del self.pending[:]
        out: List[str] = self.out  # type: ignore[assignment]
        del out[self.basicMark :]
        self.basicMark = -1
        self.openTag = self.basicOpenTag
        if value == "open" or value == "closed":
            self.basicValue = value
            if self.openTag:
                out.append(">")
                self.openTag = False
            if self.defaultIsPidf:
                out.append("<basic>" + value + "</basic>")
            else:
                self.flags |= USES_PIDF_PREFIX
                out.append("<pidf:basic>" + value + "</pidf:basic>")
        elif value != "unknown":
            raise PidfError("basic status must be open or closed")

    # -- rendering ---------------------------------------------------------

    def _beginFragment(self) -> None:
        self.out = []
        self.openTag = False
        self.slots = {}
        self.flags = 0

    def _endFragment(
        self, key: object, rank: int = RANK_EXTENSION, basic: Optional[str] = None
    ) -> Fragment:
        text = "".join(self.out)  # type: ignore[arg-type]
        self.out = None
        uris = tuple(self.slots)
        if not uris and ("{" in text or "}" in text):
            text = text.replace("{{", "{").replace("}}", "}")
        return Fragment(key, text, uris, self.flags, rank, basic)

    def _renderName(self, name: str) -> Tuple[str, str]:
        """
        Render an element name that is not in the shared cache, and cache
        it if it is in a namespace with a fixed prefix.
        """
        uri, sep, local = name.rpartition("}")
        if not sep:
            # No namespace: undeclare the default namespace if it is PIDF.
            if self.defaultIsPidf:
                self.defaultIsPidf = False
                return "<" + local + ' xmlns=""', "</" + local + ">"
            return "<" + local, "</" + local + ">"
        if uri == PIDF_NS:
            if self.defaultIsPidf:
                prefix, flag = "", 0
            else:
                self.flags |= USES_PIDF_PREFIX
                return "<pidf:" + local, "</pidf:" + local + ">"
        elif uri in _FIXED_PREFIXES:
            prefix, flag = _FIXED_PREFIXES[uri]
        elif uri == XML_NS:
            return "<xml:" + local, "</xml:" + local + ">"
        else:
            prefix = self._slot(uri)
            return "<" + prefix + local, "</" + prefix + local + ">"
        self.flags |= flag
        rendered = ("<" + prefix + local, "</" + prefix + local + ">", flag)
        if len(_FIXED_NAMES) < _FIXED_NAMES_MAX:
            _FIXED_NAMES[name] = rendered
        return rendered[0], rendered[1]

    def _renderAttributes(self, out: List[str], attributes: List[str]) -> None:
        """
        Render attributes sorted by expanded name, so that their order in
        the published document does not change the bytes.
        """
        count = len(attributes)
        if count == 2 or (count == 4 and attributes[0] < attributes[2]):
            order: Iterable[int] = range(0, count, 2)
        else:
            order = sorted(range(0, count, 2), key=attributes.__getitem__)
        for index in order:
            name = attributes[index]
            if "}" in name:
                uri, _, local = name.rpartition("}")
                if uri == XML_NS:
                    name = "xml:" + local
                elif uri == PIDF_NS:
                    # Unprefixed attributes are in no namespace, so PIDF
                    # ones (mustUnderstand) need a prefix of their own.
                    self.flags |= USES_PIDF_PREFIX
                    name = "pidf:" + local
                elif uri in _FIXED_PREFIXES:
                    prefix, flag = _FIXED_PREFIXES[uri]
                    self.flags |= flag
                    name = prefix + local
                else:
                    name = self._slot(uri) + local
            out.append(
                " " + name + '="' + escapeTemplateAttribute(attributes[index + 1]) + '"'
            )

    def _slot(self, uri: str) -> str:
        """
        The placeholder standing for the prefix of an unknown namespace.
        """
        slot = self.slots.get(uri)
        if slot is None:
            slot = self.slots[uri] = "{" + str(len(self.slots)) + "}"
        return slot


def _rankOf(fragment: Fragment) -> int:
    return fragment.rank
