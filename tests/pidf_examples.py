"""
PIDF documents shared by the PIDF tests: the examples of RFC 3863 and
RFC 4480 (as published, read through the search tool rather than made up),
and helpers to build and inspect documents.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any, Tuple

from hypothesis import strategies as st

PIDF = "urn:ietf:params:xml:ns:pidf"
DM = "urn:ietf:params:xml:ns:pidf:data-model"
RPID = "urn:ietf:params:xml:ns:pidf:rpid"

# RFC 3863: the basic example, with a namespace prefix...
RFC3863_PREFIXED = b"""<?xml version="1.0" encoding="UTF-8"?>
   <impp:presence xmlns:impp="urn:ietf:params:xml:ns:pidf"
       entity="pres:someone@example.com">
     <impp:tuple id="sg89ae">
       <impp:status>
         <impp:basic>open</impp:basic>
       </impp:status>
       <impp:contact priority="0.8">tel:+09012345678</impp:contact>
     </impp:tuple>
   </impp:presence>
"""

# ...and the same using the default namespace.
RFC3863_DEFAULT = b"""<?xml version="1.0" encoding="UTF-8"?>
   <presence xmlns="urn:ietf:params:xml:ns:pidf"
       entity="pres:someone@example.com">
     <tuple id="sg89ae">
       <status>
         <basic>open</basic>
       </status>
       <contact priority="0.8">tel:+09012345678</contact>
     </tuple>
   </presence>
"""

# RFC 3863: a status extension.
RFC3863_LOCATION = b"""<?xml version="1.0" encoding="UTF-8"?>
   <presence xmlns="urn:ietf:params:xml:ns:pidf"
       xmlns:local="urn:example-com:pidf-status-type"
       entity="pres:someone@example.com">
     <tuple id="ub93s3">
       <status>
         <basic>open</basic>
         <local:location>home</local:location>
       </status>
       <contact>im:someone@example.com</contact>
     </tuple>
   </presence>
"""

# RFC 3863: an extension that must be understood, and a presence-level one.
RFC3863_MUST_UNDERSTAND = b"""<?xml version="1.0" encoding="UTF-8"?>
   <impp:presence xmlns:impp="urn:ietf:params:xml:ns:pidf"
        xmlns:myex="http://id.mycompany.com/presence/"
        entity="pres:someone@example.com">
     <impp:tuple id="tj25ds">
       <impp:status>
         <impp:basic>open</impp:basic>
       </impp:status>
       <myex:complexExtension>
         <myex:ex1 impp:mustUnderstand="1">val1</myex:ex1>
         <myex:ex2>val2</myex:ex2>
       </myex:complexExtension>
       <impp:contact priority="0.725">tel:+09012345678</impp:contact>
     </impp:tuple>
     <myex:mytag>My extended presentity information</myex:mytag>
   </impp:presence>
"""

# RFC 3863: the full example.
RFC3863_FULL = b"""<?xml version="1.0" encoding="UTF-8"?>
   <presence xmlns="urn:ietf:params:xml:ns:pidf"
        xmlns:im="urn:ietf:params:xml:ns:pidf:im"
        xmlns:myex="http://id.example.com/presence/"
        entity="pres:someone@example.com">
     <tuple id="bs35r9">
       <status>
         <basic>open</basic>
         <im:im>busy</im:im>
         <myex:location>home</myex:location>
       </status>
       <contact priority="0.8">im:someone@mobilecarrier.net</contact>
       <note xml:lang="en">Don't Disturb Please!</note>
       <note xml:lang="fr">Ne derangez pas, s'il vous plait</note>
       <timestamp>2001-10-27T16:49:29Z</timestamp>
     </tuple>
     <tuple id="eg92n8">
       <status>
         <basic>open</basic>
       </status>
       <contact priority="1.0">mailto:someone@example.com</contact>
     </tuple>
     <note>I'll be in Tokyo next week</note>
   </presence>
"""

# RFC 4480 section 4: the RPID example (as reproduced in reSIProcate's
# PIDF tests, which is where the search tool found its full text).
RFC4480 = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:lt="urn:ietf:params:xml:ns:location-type"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
       entity="pres:someone@example.com">

  <tuple id="bs35r9">
    <status>
      <basic>open</basic>
    </status>
    <dm:deviceID>urn:device:0003ba4811e3</dm:deviceID>
    <rpid:relationship><rpid:self/></rpid:relationship>
    <rpid:service-class><rpid:electronic/></rpid:service-class>
    <contact priority="0.8">im:someone@mobile.example.net</contact>
    <note xml:lang="en">Don't Disturb Please!</note>
    <note xml:lang="fr">Ne derangez pas, s'il vous plait</note>
    <timestamp>2005-10-27T16:49:29Z</timestamp>
  </tuple>

  <tuple id="ty4658">
    <status>
      <basic>open</basic>
    </status>
    <rpid:relationship><rpid:assistant/></rpid:relationship>
    <contact priority="1.0">mailto:secretary@example.com</contact>
  </tuple>

  <tuple id="eg92n8">
    <status>
      <basic>open</basic>
    </status>
    <dm:deviceID>urn:x-mac:0003ba4811e3</dm:deviceID>
    <rpid:class>email</rpid:class>
    <rpid:service-class><rpid:electronic/></rpid:service-class>
    <rpid:status-icon>http://example.com/mail.png</rpid:status-icon>
    <contact priority="1.0">mailto:someone@example.com</contact>
  </tuple>

  <note>I'll be in Tokyo next week</note>

  <dm:device id="pc147">
    <rpid:user-input idle-threshold="600" last-input="2004-10-21T13:20:00-05:00">idle</rpid:user-input>
    <dm:deviceID>urn:device:0003ba4811e3</dm:deviceID>
    <dm:note>PC</dm:note>
  </dm:device>

  <dm:person id="p1">
    <rpid:activities from="2005-05-30T12:00:00+05:00" until="2005-05-30T17:00:00+05:00">
      <rpid:note>Far away</rpid:note>
      <rpid:away/>
    </rpid:activities>
    <rpid:class>calendar</rpid:class>
    <rpid:mood>
      <rpid:angry/>
      <rpid:other>brooding</rpid:other>
    </rpid:mood>
    <rpid:place-is>
      <rpid:audio>
        <rpid:noisy/>
      </rpid:audio>
    </rpid:place-is>
    <rpid:place-type><lt:residence/></rpid:place-type>
    <rpid:privacy><rpid:unknown/></rpid:privacy>
    <rpid:sphere>bowling league</rpid:sphere>
    <rpid:status-icon>http://example.com/play.gif</rpid:status-icon>
    <rpid:time-offset>-240</rpid:time-offset>
    <dm:note>Scoring 120</dm:note>
    <dm:timestamp>2005-05-30T16:09:44+05:00</dm:timestamp>
  </dm:person>
</presence>
"""

RFC_EXAMPLES = {
    "rfc3863-prefixed": RFC3863_PREFIXED,
    "rfc3863-default": RFC3863_DEFAULT,
    "rfc3863-location": RFC3863_LOCATION,
    "rfc3863-must-understand": RFC3863_MUST_UNDERSTAND,
    "rfc3863-full": RFC3863_FULL,
    "rfc4480": RFC4480,
}

PRESENTITY = "sip:bob@example.test"


def presence(body: str, entity: str = PRESENTITY, extraNamespaces: str = "") -> bytes:
    """
    Wrap C{body} in a PIDF root declaring PIDF (default), dm and rpid.
    """
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        ' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        ' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
        + extraNamespaces
        + ' entity="'
        + entity
        + '">'
        + body
        + "</presence>"
    ).encode("utf-8")


def tupleXml(tupleId: str, basic: str = "open", extra: str = "") -> str:
    """
    A tuple with a basic status.
    """
    return '<tuple id="{}"><status><basic>{}</basic></status>{}</tuple>'.format(
        tupleId, basic, extra
    )


def semantic(data: bytes) -> Any:
    """
    The namespace-resolved content of a trusted document, for comparing
    documents regardless of prefixes and layout: each element as (expanded
    name, sorted attributes, text, children), white-space-only text between
    elements ignored.
    """
    return _semantic(ElementTree.fromstring(data))


def _semantic(element: ElementTree.Element) -> Tuple[Any, ...]:
    children = tuple(_semantic(child) for child in element)
    texts = [element.text or ""] + [child.tail or "" for child in element]
    if children:
        texts = [text for text in texts if text.strip(" \t\r\n")]
    return (element.tag, tuple(sorted(element.attrib.items())), tuple(texts), children)


def elementOrder(data: bytes) -> list:
    """
    The expanded names of the root's children, in document order.
    """
    return [child.tag for child in ElementTree.fromstring(data)]


# A grammar of PIDF-like documents, to reach deeper than random bytes.
_NAMESPACES = [PIDF, DM, RPID, "urn:x:one", "urn:x:two", ""]
_LOCALS = ["tuple", "status", "basic", "note", "contact", "person", "device",
           "deviceID", "timestamp", "activities", "away", "mood", "x"]
_TEXT = st.text(
    alphabet=st.sampled_from(list("ab &<>{}\"'\t\r\n\u00e9\u2603")), max_size=6
)


@st.composite
def _elements(draw: st.DrawFn, depth: int = 0) -> str:
    """
    A random element with random attributes, text and children.
    """
    namespace = draw(st.sampled_from(_NAMESPACES))
    local = draw(st.sampled_from(_LOCALS))
    prefix = {PIDF: "p:", DM: "dm:", RPID: "r:", "urn:x:one": "o:", "urn:x:two": "t:", "": ""}[namespace]
    attributes = ""
    if draw(st.booleans()):
        attributes += ' id="{}"'.format(draw(st.sampled_from(["a", "b", "c"])))
    if draw(st.booleans()):
        attributes += ' xml:lang="{}"'.format(draw(st.sampled_from(["en", "fr", "EN"])))
    if draw(st.booleans()):
        attributes += ' o:k="{}"'.format(_escape(draw(_TEXT), True))
    children = ""
    if depth < 4:
        for _ in range(draw(st.integers(0, 3))):
            children += draw(st.sampled_from(["", " ", "\n  "]))
            children += draw(_elements(depth + 1))
    text = _escape(draw(_TEXT), False) if draw(st.booleans()) else ""
    return "<{0}{1}{2}>{3}{4}</{0}{1}>".format(prefix, local, attributes, children, text)


def _escape(text: str, attribute: bool) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\r", "&#13;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")
    return text


@st.composite
def _topLevel(draw: st.DrawFn) -> str:
    """
    A child of <presence>: mostly well-formed PIDF items, sometimes not.
    """
    kind = draw(st.sampled_from(["tuple", "tuple", "person", "device", "note", "other"]))
    some = st.lists(_elements(2), max_size=3).map("".join)
    if kind == "tuple":
        basic = draw(st.sampled_from(
            ["", "<p:basic>open</p:basic>", "<p:basic> Closed </p:basic>", "<p:basic>unknown</p:basic>"]
        ))
        return '<p:tuple id="{}"><p:status>{}{}</p:status>{}</p:tuple>'.format(
            draw(st.sampled_from(["a", "b", "c", "d"])), basic, draw(some), draw(some)
        )
    if kind == "person":
        return '<dm:person id="{}">{}</dm:person>'.format(
            draw(st.sampled_from(["p1", "p2"])), draw(some)
        )
    if kind == "device":
        return '<dm:device id="d"><dm:deviceID>{}</dm:deviceID>{}</dm:device>'.format(
            draw(st.sampled_from(["m1", "m2"])), draw(some)
        )
    if kind == "note":
        return "<p:note>{}</p:note>".format(_escape(draw(_TEXT), False))
    return draw(_elements(1))


@st.composite
def pidfDocuments(draw: st.DrawFn) -> bytes:
    """
    Well-formed PIDF-like documents: PIDF prefixed (so that elements in no
    namespace occur), tuples, persons, devices, notes and random elements,
    some of them invalid.
    """
    children = "".join(draw(st.lists(_topLevel(), max_size=5)))
    return (
        '<p:presence xmlns:p="{}" xmlns:dm="{}" xmlns:r="{}" xmlns:o="urn:x:one"'
        ' xmlns:t="urn:x:two" entity="sip:bob@example.test">{}</p:presence>'.format(
            PIDF, DM, RPID, children
        ).encode("utf-8")
    )
