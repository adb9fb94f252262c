"""
Tests for composing publications into one document (DESIGN.md,
"Composition policy") and for the documents sent when nobody published.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import List

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidf_examples import (
    DM,
    PIDF,
    PRESENTITY,
    RFC3863_FULL,
    RFC4480,
    RFC_EXAMPLES,
    RPID,
    elementOrder,
    pidfDocuments,
    presence,
    semantic,
    tupleXml,
)
from presence.pidf import (
    PidfDocument,
    PidfError,
    closedDocument,
    composeDocuments,
    composePidf,
    openDocument,
    parsePidf,
    renderPidf,
)


def parse(body: str, extraNamespaces: str = "", entity: str = PRESENTITY) -> PidfDocument:
    return parsePidf(presence(body, entity, extraNamespaces))


def compose(*bodies: str) -> bytes:
    """
    Compose publications given as presence bodies, newest first.
    """
    return composePidf(PRESENTITY, [parse(body) for body in bodies])


def root(data: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(data)


def person(data: bytes) -> ElementTree.Element:
    persons = root(data).findall("{%s}person" % DM)
    assert len(persons) == 1
    return persons[0]


def texts(element: ElementTree.Element, tag: str) -> List[str]:
    return [child.text or "" for child in element.findall(tag)]


def declarations(data: bytes) -> List[str]:
    """
    The namespace declarations of the root start tag, in order.
    """
    start = data.split(b"\n", 1)[1].split(b">", 1)[0].decode("utf-8")
    return [part.split("=")[0] for part in start.split() if part.startswith("xmlns")]


# -- tuples --------------------------------------------------------------


def test_tuplesUnion() -> None:
    result = compose(tupleXml("desk"), tupleXml("mobile", "closed"))
    tuples = root(result).findall("{%s}tuple" % PIDF)
    assert [t.get("id") for t in tuples] == ["desk", "mobile"]


def test_sameTupleIdNewerWins() -> None:
    newer = tupleXml("t", "closed", "<note>newer</note>")
    older = tupleXml("t", "open", "<note>older</note>") + tupleXml("u")
    result = root(compose(newer, older))
    tuples = result.findall("{%s}tuple" % PIDF)
    assert [t.get("id") for t in tuples] == ["t", "u"]
    assert tuples[0].findtext("{%s}status/{%s}basic" % (PIDF, PIDF)) == "closed"
    assert texts(tuples[0], "{%s}note" % PIDF) == ["newer"]


def test_listOrderAloneDecides() -> None:
    """
    Two publications with equal timestamps: the one first in the list wins,
    and swapping them swaps the winner. Timestamps inside the documents are
    not consulted.
    """
    stamp = "<timestamp>2024-01-01T00:00:00Z</timestamp>"
    first = parse(tupleXml("t", "open", stamp))
    second = parse(tupleXml("t", "closed", stamp))
    assert b"<basic>open</basic>" in composePidf(PRESENTITY, [first, second])
    assert b"<basic>closed</basic>" in composePidf(PRESENTITY, [second, first])
    # An older timestamp first in the list still wins.
    stale = parse(tupleXml("t", "closed", "<timestamp>1999-01-01T00:00:00Z</timestamp>"))
    assert b"<basic>closed</basic>" in composePidf(PRESENTITY, [stale, first])


# -- person --------------------------------------------------------------


def test_personChildrenMergedPerKind() -> None:
    """
    For each kind the newest publication having it wins; kinds only older
    publications have are kept.
    """
    newer = '<dm:person id="pnew"><rpid:activities><rpid:meeting/></rpid:activities></dm:person>'
    older = (
        '<dm:person id="pold"><rpid:activities><rpid:away/></rpid:activities>'
        "<rpid:mood><rpid:happy/></rpid:mood>"
        "<rpid:place-type><rpid:other>pub</rpid:other></rpid:place-type></dm:person>"
    )
    merged = person(compose(newer, older))
    assert merged.get("id") == "pnew"
    assert [c.tag for c in merged] == [
        "{%s}activities" % RPID,
        "{%s}mood" % RPID,
        "{%s}place-type" % RPID,
    ]
    assert [c.tag for c in merged[0]] == ["{%s}meeting" % RPID]


def test_winningPublicationContributesAllItsElementsOfAKind() -> None:
    newer = '<dm:person id="p"><rpid:class>a</rpid:class><rpid:class>b</rpid:class></dm:person>'
    older = '<dm:person id="q"><rpid:class>c</rpid:class></dm:person>'
    assert texts(person(compose(newer, older)), "{%s}class" % RPID) == ["a", "b"]


def test_personNotesPerLanguage() -> None:
    """
    dm:note (and pidf:note) kinds include xml:lang, compared without case.
    """
    newer = (
        '<dm:person id="p"><dm:note xml:lang="EN">in a meeting</dm:note>'
        "<note>pidf note new</note></dm:person>"
    )
    older = (
        '<dm:person id="q"><dm:note xml:lang="en">at lunch</dm:note>'
        '<dm:note xml:lang="fr">au dejeuner</dm:note><dm:note>no language</dm:note>'
        "<note>pidf note old</note></dm:person>"
    )
    merged = person(compose(newer, older))
    assert texts(merged, "{%s}note" % DM) == ["in a meeting", "au dejeuner", "no language"]
    assert texts(merged, "{%s}note" % PIDF) == ["pidf note new"]


def test_personChildrenInSchemaOrder() -> None:
    """
    Extension elements, then notes, then the timestamp, whatever the order
    of the publications.
    """
    newer = (
        '<dm:person id="p"><dm:timestamp>2024-02-02T00:00:00Z</dm:timestamp>'
        "<dm:note>new</dm:note></dm:person>"
    )
    older = (
        '<dm:person id="q"><dm:timestamp>2024-01-01T00:00:00Z</dm:timestamp>'
        '<x:status-extension xmlns:x="urn:x">1</x:status-extension>'
        "<rpid:mood><rpid:happy/></rpid:mood></dm:person>"
    )
    merged = person(compose(newer, older))
    assert [c.tag for c in merged] == [
        "{urn:x}status-extension",
        "{%s}mood" % RPID,
        "{%s}note" % DM,
        "{%s}timestamp" % DM,
    ]
    assert merged.findtext("{%s}timestamp" % DM) == "2024-02-02T00:00:00Z"


def test_unknownPersonExtensionsCarried() -> None:
    newer = '<dm:person id="p"><x:geo xmlns:x="urn:x">new</x:geo></dm:person>'
    older = (
        '<dm:person id="q"><x:geo xmlns:x="urn:x">old</x:geo>'
        '<y:icon xmlns:y="urn:y">i</y:icon></dm:person>'
    )
    merged = person(compose(newer, older))
    assert [(c.tag, c.text) for c in merged] == [("{urn:x}geo", "new"), ("{urn:y}icon", "i")]


def test_personIdFromNewestPublicationWithAPerson() -> None:
    result = compose(
        tupleXml("t"),
        '<dm:person id="second"><rpid:mood><rpid:sad/></rpid:mood></dm:person>',
        '<dm:person id="third"/>',
    )
    assert person(result).get("id") == "second"


def test_onePersonEvenWhenEmpty() -> None:
    assert b'<dm:person id="a"/>' in compose('<dm:person id="a"/>', '<dm:person id="b"/>')


def test_noPersonWithoutPublishedPerson() -> None:
    result = compose(tupleXml("a"), tupleXml("b"))
    assert root(result).find("{%s}person" % DM) is None
    assert b"xmlns:dm" not in result


# -- devices, notes, other extensions ------------------------------------


def test_devicesUnionByDeviceId() -> None:
    newer = (
        '<dm:device id="d1"><rpid:user-input>active</rpid:user-input>'
        "<dm:deviceID>mac:1</dm:deviceID></dm:device>"
    )
    older = (
        '<dm:device id="x"><rpid:user-input>idle</rpid:user-input>'
        "<dm:deviceID> mac:1 </dm:deviceID></dm:device>"
        '<dm:device id="d2"><dm:deviceID>mac:2</dm:deviceID></dm:device>'
    )
    devices = root(compose(newer, older)).findall("{%s}device" % DM)
    assert [(d.get("id"), d.findtext("{%s}user-input" % RPID)) for d in devices] == [
        ("d1", "active"),
        ("d2", None),
    ]


def test_topLevelNotesUnionWithoutDuplicates() -> None:
    result = root(
        compose(
            tupleXml("a") + "<note>at work</note><note>back at 3</note>",
            tupleXml("b") + '<note>at work</note><note xml:lang="de">at work</note>',
        )
    )
    notes = result.findall("{%s}note" % PIDF)
    assert [(n.text, n.get("{http://www.w3.org/XML/1998/namespace}lang")) for n in notes] == [
        ("at work", None),
        ("back at 3", None),
        ("at work", "de"),
    ]


def test_topLevelExtensionsMergedPerKind() -> None:
    result = root(
        compose(
            '<x:geo xmlns:x="urn:x">new</x:geo>',
            '<x:geo xmlns:x="urn:x">old</x:geo><y:z xmlns:y="urn:y">kept</y:z>',
        )
    )
    assert [(c.tag, c.text) for c in result] == [("{urn:x}geo", "new"), ("{urn:y}z", "kept")]


def test_order() -> None:
    """
    Tuples, notes, the person, devices, other extensions -- whatever the
    order in the publications.
    """
    body = (
        '<x:ext xmlns:x="urn:x"/>'
        '<dm:device id="d"><dm:deviceID>m</dm:deviceID></dm:device>'
        '<dm:person id="p"/>'
        "<note>n</note>"
    )
    result = compose(body + tupleXml("a"), tupleXml("b") + body.replace("<note>n", "<note>m"))
    assert elementOrder(result) == [
        "{%s}tuple" % PIDF,
        "{%s}tuple" % PIDF,
        "{%s}note" % PIDF,
        "{%s}note" % PIDF,
        "{%s}person" % DM,
        "{%s}device" % DM,
        "{urn:x}ext",
    ]


# -- namespaces ------------------------------------------------------------


def test_namespacesGatheredOnRootWithStablePrefixes() -> None:
    """
    PIDF is the default namespace, then dm and rpid; unknown namespaces get
    ns1, ns2, ... in order of first appearance in the composed document,
    whatever prefixes the publications used, and nothing is declared below
    the root.
    """
    newer = parse(
        tupleXml("a", extra="<b:second>2</b:second><a:first>1</a:first>")
        + '<dm:person id="p"><rpid:mood><rpid:happy/></rpid:mood></dm:person>',
        ' xmlns:a="urn:first" xmlns:b="urn:second"',
    )
    older = parse(
        tupleXml("z", extra="<q:first>1</q:first><r:third>3</r:third>"),
        ' xmlns:q="urn:first" xmlns:r="urn:third"',
    )
    result = composePidf(PRESENTITY, [newer, older])
    text = result.decode("utf-8")
    assert declarations(result) == [
        "xmlns",
        "xmlns:dm",
        "xmlns:rpid",
        "xmlns:ns1",
        "xmlns:ns2",
        "xmlns:ns3",
    ]
    assert 'xmlns:ns1="urn:second" xmlns:ns2="urn:first" xmlns:ns3="urn:third"' in text
    assert "<ns1:second>2</ns1:second><ns2:first>1</ns2:first>" in text
    assert "<ns2:first>1</ns2:first><ns3:third>3</ns3:third>" in text
    assert text.count("xmlns") == 6
    # Same content as the publications, namespaces resolved.
    composed = semantic(result)
    assert composed[3][0] == semantic(presence(
        tupleXml("a", extra="<b:second>2</b:second><a:first>1</a:first>"),
        extraNamespaces=' xmlns:a="urn:first" xmlns:b="urn:second"',
    ))[3][0]


def test_prefixNumberingFollowsTheComposedDocument() -> None:
    """
    The same publication renders its unknown namespace as ns2 when composed
    after another one, as ns1 alone.
    """
    lone = parse(tupleXml("a", extra='<x:e xmlns:x="urn:x"/>'))
    other = parse(tupleXml("b", extra='<y:e xmlns:y="urn:y"/>'))
    assert b'xmlns:ns1="urn:x"' in composePidf(PRESENTITY, [lone])
    both = composePidf(PRESENTITY, [other, lone])
    assert b'xmlns:ns1="urn:y" xmlns:ns2="urn:x"' in both
    assert b'<tuple id="a"><status><basic>open</basic></status><ns2:e/></tuple>' in both


def test_rfcExamplesComposeToValidPidf() -> None:
    """
    Composing the RPID and the full RFC 3863 examples (same tuple ids
    bs35r9, eg92n8 in both) keeps the newer tuples and every namespace
    resolvable.
    """
    rpid = parsePidf(RFC4480)
    full = parsePidf(RFC3863_FULL)
    result = composePidf("pres:someone@example.com", [full, rpid])
    tuples = root(result).findall("{%s}tuple" % PIDF)
    assert [t.get("id") for t in tuples] == ["bs35r9", "eg92n8", "ty4658"]
    assert tuples[0].find("{%s}status/{urn:ietf:params:xml:ns:pidf:im}im" % PIDF) is not None
    assert len(root(result).findall("{%s}note" % PIDF)) == 1  # the same Tokyo note
    assert person(result).get("id") == "p1"
    assert parsePidf(result).personId == "p1"


# -- determinism -----------------------------------------------------------


def test_composingTwiceGivesIdenticalBytes() -> None:
    publications = [parsePidf(data) for data in RFC_EXAMPLES.values()
                    if data.count(b"tuple id=") and b"sg89ae" not in data]
    first = composePidf(PRESENTITY, publications)
    second = composePidf(PRESENTITY, [parsePidf(d) for d in RFC_EXAMPLES.values()
                                      if d.count(b"tuple id=") and b"sg89ae" not in d])
    assert first == second
    assert composePidf(PRESENTITY, publications) == first


def test_equalContentDifferentLayoutGivesIdenticalBytes() -> None:
    """
    A client republishing the same state with different layout, prefixes
    or attribute order does not change the composed bytes.
    """
    a = parse(tupleXml("t", extra='<contact priority="1" q="2">sip:x@y</contact>'))
    b = parsePidf(
        b"<?xml version='1.0'?>\n<i:presence xmlns:i='urn:ietf:params:xml:ns:pidf'\n"
        b"   entity='sip:bob@example.test'>\n  <i:tuple id='t'>\n    <i:status><i:basic>open"
        b"</i:basic></i:status>\n    <i:contact q='2' priority='1'>sip:x@y</i:contact>\n"
        b"  </i:tuple>\n</i:presence>"
    )
    other = parse(tupleXml("u"))
    assert composePidf(PRESENTITY, [a, other]) == composePidf(PRESENTITY, [b, other])


def test_singlePublicationComposesToItself() -> None:
    for data in RFC_EXAMPLES.values():
        document = parsePidf(data)
        assert composeDocuments([document]) is document
        assert composePidf(PRESENTITY, [document]) == renderPidf(PRESENTITY, document)


def test_composingWithEmptyPublicationChangesNothing() -> None:
    """
    The general merge path gives the same bytes as the single-document
    shortcut.
    """
    empty = parse("")
    for data in RFC_EXAMPLES.values():
        document = parsePidf(data)
        assert composePidf(PRESENTITY, [document, empty]) == renderPidf(PRESENTITY, document)
        assert composePidf(PRESENTITY, [empty, document]) == renderPidf(PRESENTITY, document)


def test_entityRenderedAsGivenByCaller() -> None:
    publication = parse(tupleXml("t"), entity="pres:bob@EXAMPLE.test")
    result = composePidf("sip:bob@example.test", [publication])
    assert root(result).get("entity") == "sip:bob@example.test"
    assert root(composePidf('sip:"odd"&<@example.test', [publication])).get("entity") == (
        'sip:"odd"&<@example.test'
    )


def test_outputIsUtf8WithDeclaration() -> None:
    result = compose(tupleXml("t", extra="<note>caf\u00e9 \u2603</note>"))
    assert result.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<presence ')
    assert "caf\u00e9 \u2603".encode("utf-8") in result


# -- no publication ----------------------------------------------------------


def test_noPublicationIsClosed() -> None:
    assert composePidf(PRESENTITY, []) == closedDocument(PRESENTITY)


def test_closedDocument() -> None:
    data = closedDocument(PRESENTITY)
    assert data == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
        b'<tuple id="default"><status><basic>closed</basic></status></tuple></presence>'
    )
    assert parsePidf(data, PRESENTITY).basic == "closed"


def test_openDocument() -> None:
    data = openDocument(PRESENTITY, contact="sip:bob@192.0.2.1;transport=tcp&x")
    document = parsePidf(data, PRESENTITY)
    assert document.basic == "open"
    assert root(data).findtext("{%s}tuple/{%s}contact" % (PIDF, PIDF)) == (
        "sip:bob@192.0.2.1;transport=tcp&x"
    )
    assert openDocument(PRESENTITY, tupleId="reg") != openDocument(PRESENTITY)
    assert b"<contact>" not in openDocument(PRESENTITY)


# -- properties ------------------------------------------------------------


def _parsed(datas: List[bytes]) -> List[PidfDocument]:
    documents = []
    for data in datas:
        try:
            documents.append(parsePidf(data))
        except PidfError:
            pass
    return documents


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pidfDocuments(), min_size=1, max_size=4))
def test_compositionIsDeterministicAndNormalised(datas: List[bytes]) -> None:
    """
    For any publications: composing twice gives the same bytes, the result
    is a PIDF document, and it is normalised (parsing and rendering it again
    changes nothing).
    """
    documents = _parsed(datas)
    result = composePidf(PRESENTITY, documents)
    if not documents:
        assert result == closedDocument(PRESENTITY)
        return
    assert composePidf(PRESENTITY, _parsed(datas)) == result
    again = parsePidf(result, PRESENTITY, maxElements=10000)
    assert renderPidf(PRESENTITY, again) == result
    tupleIds = [t.key for t in again.tuples]
    assert len(tupleIds) == len(set(tupleIds))
    assert set(tupleIds) == {t.key for d in documents for t in d.tuples}
