"""
Tests for the dialog event package's body (L{presence.dialoginfo}): the
shapes real publishers send (Kamailio's pua_dialoginfo, the RFC 4235
examples), validation, composition of several publications, one-dialog
and idle modes, per-subscription versions, call-id filtering.
Hostile XML is in test_xmlsafe.py.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import List, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.dialoginfo import (
    IDLE_DIALOG,
    Dialog,
    DialogInfoDocument,
    DialogInfoError,
    composeDialogInfo,
    composeDialogs,
    matching,
    mostRelevant,
    parseDialogInfo,
    renderDialogInfo,
    withVersion,
)

ALICE = "sip:alice@example.test"
NS = "urn:ietf:params:xml:ns:dialog-info"

# What Kamailio 5.x pua_dialoginfo sends (libxml2 formatted output,
# <remote> before <local>, version left at 0 for pua to fill in).
KAMAILIO = b"""<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:alice@example.test">
  <dialog id="a84b4c76e66710" call-id="a84b4c76e66710" local-tag="1928301774" direction="initiator">
    <state>early</state>
    <remote>
      <identity>sip:bob@example.test</identity>
      <target uri="sip:bob@example.test"/>
    </remote>
    <local>
      <identity>sip:alice@example.test</identity>
      <target uri="sip:alice@192.0.2.4:5060"/>
    </local>
  </dialog>
</dialog-info>
"""

# RFC 4235 section 5, the second example (a confirmed dialog, fully
# described).
RFC4235 = b"""<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"
             version="1" state="full" entity="sip:alice@example.test">
  <dialog id="as7d900as8" call-id="a84b4c76e66710"
          local-tag="1928301774" remote-tag="456887766"
          direction="initiator">
    <state>confirmed</state>
    <duration>274</duration>
    <local>
      <identity display="Alice">sip:alice@example.test</identity>
      <target uri="sip:alice@pc33.example.test">
        <param pname="+sip.rendering" pval="yes"/>
      </target>
    </local>
    <remote>
      <identity display="Bob">sip:bob@example.org</identity>
      <target uri="sip:bobster@phone21.example.org"/>
    </remote>
  </dialog>
</dialog-info>
"""


def document(*dialogs: str, entity: str = ALICE, version: str = "0", state: str = "full") -> bytes:
    return (
        '<dialog-info xmlns="{}" version="{}" state="{}" entity="{}">{}</dialog-info>'.format(
            NS, version, state, entity, "".join(dialogs)
        )
    ).encode("utf-8")


def dialog(dialogId: str, state: str = "confirmed", extra: str = "", **attributes: str) -> str:
    attrs = "".join(
        ' {}="{}"'.format(name.replace("_", "-"), value) for name, value in attributes.items()
    )
    return '<dialog id="{}"{}><state>{}</state>{}</dialog>'.format(dialogId, attrs, state, extra)


def semantic(element: ET.Element) -> tuple:
    """
    An element as what it means: expanded names, attributes, text without
    layout white space, children.
    """
    text = (element.text or "").strip()
    return (
        element.tag,
        tuple(sorted(element.attrib.items())),
        text,
        tuple(semantic(child) for child in element),
    )


def dialogsMeaning(body: bytes) -> List[tuple]:
    return [semantic(d) for d in ET.fromstring(body).iter("{%s}dialog" % NS)]


def states(body: bytes) -> List[str]:
    return [d.state for d in parseDialogInfo(body).dialogs]


# -- what publishers send -----------------------------------------------


def test_kamailioPublication() -> None:
    """
    pua_dialoginfo's document parses; its dialog keeps every element and
    attribute, the local and remote targets included (call pickup needs
    them), whatever order they came in.
    """
    parsed = parseDialogInfo(KAMAILIO, ALICE)
    assert (parsed.entity, parsed.version, parsed.state) == (ALICE, 0, "full")
    (only,) = parsed.dialogs
    assert (only.id, only.callId, only.localTag, only.remoteTag, only.direction, only.state) == (
        "a84b4c76e66710",
        "a84b4c76e66710",
        "1928301774",
        None,
        "initiator",
        "early",
    )
    body = composeDialogInfo(ALICE, [parsed])
    assert dialogsMeaning(body) == dialogsMeaning(KAMAILIO)
    assert b'<target uri="sip:alice@192.0.2.4:5060"/>' in body


def test_rfcExample() -> None:
    parsed = parseDialogInfo(RFC4235, "pres:alice@Example.TEST")
    assert parsed.version == 1
    body = composeDialogInfo(ALICE, [parsed])
    assert dialogsMeaning(body) == dialogsMeaning(RFC4235)
    assert b'<identity display="Bob">sip:bob@example.org</identity>' in body


def test_composedDocumentShape() -> None:
    """
    A watcher gets state="full", version 0 and the watched AOR as entity,
    whatever entity the publication gave.
    """
    parsed = parseDialogInfo(document(dialog("d1"), entity="sip:alice@EXAMPLE.test;user=phone"))
    root = ET.fromstring(composeDialogInfo(ALICE, [parsed]))
    assert root.tag == "{%s}dialog-info" % NS
    assert root.attrib == {"version": "0", "state": "full", "entity": ALICE}


def test_normalisedRendering() -> None:
    """
    Attribute order, layout white space and letter case of the state do
    not change the bytes; leaf text is kept as published.
    """
    first = document(
        '<dialog direction="recipient" id="d">\n  <state> Confirmed </state>\n'
        "  <local><identity> sip:alice@example.test </identity></local></dialog>"
    )
    second = document(
        '<dialog id="d" direction="recipient"><state>confirmed</state>'
        "<local><identity> sip:alice@example.test </identity></local></dialog>"
    )
    assert composeDialogInfo(ALICE, [parseDialogInfo(first)]) == composeDialogInfo(
        ALICE, [parseDialogInfo(second)]
    )


def test_namespacesCarriedThrough() -> None:
    """
    Extension elements in other namespaces, in no namespace, xml:lang,
    and the dialog-info namespace below a no-namespace element all mean
    the same after rendering.
    """
    extra = (
        '<sa:exten xmlns:sa="urn:example:sa" sa:kind="x">101</sa:exten>'
        '<plain xmlns=""><identity xmlns="urn:ietf:params:xml:ns:dialog-info">x</identity></plain>'
        '<local><identity xml:lang="en" display="A &lt;&amp;&gt; &quot;B&quot;">sip:a@x</identity></local>'
    )
    body = document(dialog("d", extra=extra))
    rendered = composeDialogInfo(ALICE, [parseDialogInfo(body)])
    assert dialogsMeaning(rendered) == dialogsMeaning(body)
    assert parseDialogInfo(rendered).dialogs == parseDialogInfo(body).dialogs


def test_unknownTopLevelElementsDropped() -> None:
    body = document(dialog("d"), '<x:foo xmlns:x="urn:x"><dialog id="not-a-dialog"/></x:foo>')
    assert [d.id for d in parseDialogInfo(body).dialogs] == ["d"]


def test_partialPublicationAccepted() -> None:
    assert parseDialogInfo(document(dialog("d"), state="partial")).state == "partial"


INVALID = {
    "wrong root": (b'<dialog xmlns="%s"/>' % NS.encode(), "root"),
    "wrong namespace": (b'<dialog-info xmlns="urn:x" version="0" state="full" entity="sip:a@b"/>', "namespace"),
    "missing entity": (document().replace(b' entity="sip:alice@example.test"', b""), "entity"),
    "entity mismatch": (document(entity="sip:mallory@example.test"), "match"),
    "missing version": (document().replace(b' version="0"', b""), "version"),
    "negative version": (document(version="-1"), "version"),
    "huge version": (document(version="9" * 30), "version"),
    "non-ASCII digits": (document(version="\u0663"), "version"),
    "bad state": (document(state="some"), "full or partial"),
    "dialog without id": (document("<dialog><state>early</state></dialog>"), "id"),
    "empty dialog id": (document('<dialog id=""><state>early</state></dialog>'), "id"),
    "duplicate dialog id": (document(dialog("d"), dialog("d")), "duplicate"),
    "bad direction": (document(dialog("d", direction="sideways")), "direction"),
    "dialog without state": (document('<dialog id="d"><local/></dialog>'), "without state"),
    "two states": (document(dialog("d", extra="<state>early</state>")), "more than one"),
    "unknown state": (document(dialog("d", state="ringing")), "invalid dialog state"),
    "empty state": (document(dialog("d", state="")), "invalid dialog state"),
    "state with child": (document(dialog("d", state="early<b/>")), "child"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalidRefused(name: str) -> None:
    data, hint = INVALID[name]
    with pytest.raises(DialogInfoError) as excinfo:
        parseDialogInfo(data, ALICE)
    assert hint.lower() in excinfo.value.reason.lower()
    assert re.fullmatch(r"[\x20-\x7e]+", excinfo.value.reason)


def test_sizeAndElementLimitsConfigurable() -> None:
    data = document(dialog("d"))  # dialog-info, dialog, state
    parseDialogInfo(data, maxSize=len(data), maxElements=3, maxDepth=3)
    with pytest.raises(DialogInfoError, match="too large"):
        parseDialogInfo(data, maxSize=len(data) - 1)
    with pytest.raises(DialogInfoError, match="too many"):
        parseDialogInfo(data, maxElements=2)
    with pytest.raises(DialogInfoError, match="deeply"):
        parseDialogInfo(data, maxDepth=2)


# -- composition ----------------------------------------------------------


def parsed(*dialogs: str) -> DialogInfoDocument:
    return parseDialogInfo(document(*dialogs))


def test_newestPublicationWinsPerDialogId() -> None:
    """
    A proxy publishes one document per call; the phone publishes its own
    view of one of them later: the newest has that id, the others stay.
    """
    older = parsed(dialog("call-1", "early"), dialog("call-2", "confirmed"))
    newer = parsed(dialog("call-1", "confirmed"), dialog("call-3", "trying"))
    dialogs = composeDialogs([newer, older])
    assert [(d.id, d.state) for d in dialogs] == [
        ("call-1", "confirmed"),
        ("call-3", "trying"),
        ("call-2", "confirmed"),
    ]
    assert composeDialogs([older]) == older.dialogs
    assert composeDialogs([]) == ()


@pytest.mark.parametrize(
    "published,shown",
    [
        (["terminated", "trying", "proceeding", "confirmed", "early"], "early"),
        (["terminated", "confirmed", "proceeding", "trying"], "confirmed"),
        (["trying", "proceeding", "terminated"], "proceeding"),
        (["terminated", "trying"], "trying"),
        (["terminated"], "terminated"),
    ],
)
def test_oneDialogModePicksTheMostRelevant(published: List[str], shown: str) -> None:
    publication = parsed(*[dialog("d%d" % i, state) for i, state in enumerate(published)])
    assert states(composeDialogInfo(ALICE, [publication], oneDialog=True)) == [shown]


def test_oneDialogModeTieGoesToTheNewest() -> None:
    older = parsed(dialog("old", "early"))
    newer = parsed(dialog("new", "early"))
    (chosen,) = mostRelevant(composeDialogs([newer, older]))
    assert chosen.id == "new"
    assert mostRelevant(()) == ()


def test_idleDummyDialog() -> None:
    """
    With idle mode a resource without dialogs shows one terminated dummy;
    without it, an empty document; with dialogs, never the dummy.
    """
    idle = composeDialogInfo(ALICE, [], idle=True)
    assert parseDialogInfo(idle).dialogs == (IDLE_DIALOG,)
    assert states(idle) == ["terminated"]
    assert parseDialogInfo(composeDialogInfo(ALICE, [])).dialogs == ()
    busy = composeDialogInfo(ALICE, [parsed(dialog("d", "early"))], idle=True)
    assert [d.id for d in parseDialogInfo(busy).dialogs] == ["d"]
    assert parseDialogInfo(composeDialogInfo(ALICE, [parsed()], oneDialog=True, idle=True)).dialogs == (
        IDLE_DIALOG,
    )


def test_entityEscaped() -> None:
    body = renderDialogInfo('sip:"a"&<b>@example.test', ())
    assert ET.fromstring(body).attrib["entity"] == 'sip:"a"&<b>@example.test'


# -- versions ---------------------------------------------------------------


def test_versionPerSubscription() -> None:
    body = composeDialogInfo(ALICE, [parsed(dialog("d"))])
    assert withVersion(body, 0) == body
    for version in (1, 9, 10, 4294967295):
        rewritten = withVersion(body, version)
        assert parseDialogInfo(rewritten).version == version
        assert ET.fromstring(rewritten).attrib["version"] == str(version)
        assert rewritten.replace(b'version="%d"' % version, b'version="0"', 1) == body


def test_versionRewriteRefusesOtherBodies() -> None:
    with pytest.raises(ValueError):
        withVersion(KAMAILIO, 1)
    with pytest.raises(ValueError):
        withVersion(withVersion(renderDialogInfo(ALICE, ()), 3), 4)
    with pytest.raises(ValueError):
        withVersion(renderDialogInfo(ALICE, ()), -1)


# -- filtering by call-id and tags ---------------------------------------


def test_matchingCallIdAndTags() -> None:
    """
    Event: dialog;call-id=...;from-tag=... selects dialogs of that call,
    the tags matched on either side (the publisher may be either party).
    """
    dialogs = parsed(
        dialog("a", call_id="c1", local_tag="t1", remote_tag="t2"),
        dialog("b", call_id="c1", local_tag="t3", remote_tag="t4"),
        dialog("c", call_id="c2", local_tag="t1"),
    ).dialogs
    assert [d.id for d in matching(dialogs, "c1")] == ["a", "b"]
    assert [d.id for d in matching(dialogs, "c1", fromTag="t2")] == ["a"]
    assert [d.id for d in matching(dialogs, "c1", fromTag="t1", toTag="t2")] == ["a"]
    assert matching(dialogs, "c1", fromTag="t1", toTag="t4") == ()
    assert matching(dialogs, "c3") == ()


# -- properties -------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
_token = st.text("abcdefXYZ0123456789-.", min_size=1, max_size=8)
_states = st.sampled_from(["trying", "proceeding", "early", "confirmed", "terminated"])


@st.composite
def dialogXml(draw: st.DrawFn, dialogId: str) -> str:
    def attr(name: str) -> str:
        value = draw(st.one_of(st.none(), _text))
        if value is None:
            return ""
        return ' {}="{}"'.format(name, _escape(value))

    local = "<local><identity{}>{}</identity><target uri=\"{}\"/></local>".format(
        attr("display"), _escape(draw(_text)), _escape(draw(_text))
    )
    extension = draw(st.sampled_from(["", '<e:x xmlns:e="urn:e">{}</e:x>', "<duration>{}</duration>"]))
    return '<dialog id="{}"{}{}{}{}><state>{}</state>{}{}</dialog>'.format(
        _escape(dialogId),
        attr("call-id"),
        attr("local-tag"),
        attr("remote-tag"),
        draw(st.sampled_from(["", ' direction="initiator"', ' direction="recipient"'])),
        draw(_states),
        local,
        extension.format(_escape(draw(_text))),
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


@st.composite
def publications(draw: st.DrawFn) -> List[bytes]:
    ids = draw(st.lists(_token, min_size=0, max_size=6))
    result = []
    for _ in range(draw(st.integers(1, 3))):
        chosen = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
        result.append(document(*[draw(dialogXml(i)) for i in chosen]))
    return result


@settings(max_examples=150, deadline=None)
@given(publications(), st.booleans(), st.booleans())
def test_composedDocumentRoundTrips(bodies: List[bytes], oneDialog: bool, idle: bool) -> None:
    """
    Whatever the publications, the composed document parses back to the
    dialogs composed, means what they meant, and composing it again gives
    the same bytes.
    """
    docs = [parseDialogInfo(b, ALICE) for b in bodies]
    body = composeDialogInfo(ALICE, docs, oneDialog, idle)
    again = parseDialogInfo(body, ALICE)
    expected: Sequence[Dialog] = composeDialogs(docs)
    if oneDialog:
        expected = mostRelevant(expected)
    if idle and not expected:
        expected = (IDLE_DIALOG,)
    assert again.dialogs == tuple(expected)
    assert composeDialogInfo(ALICE, [again]) == body
    newest = {}
    for published in bodies:
        for element in ET.fromstring(published):
            newest.setdefault(element.attrib["id"], semantic(element))
    for element in ET.fromstring(body):
        if element.attrib["id"] != IDLE_DIALOG.id:
            assert semantic(element) == newest[element.attrib["id"]]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitraryBytesNeverCrash(data: bytes) -> None:
    try:
        parseDialogInfo(data)
    except DialogInfoError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**40))
def test_anyVersionRewrites(version: int) -> None:
    body = withVersion(renderDialogInfo(ALICE, (IDLE_DIALOG,)), version)
    assert ET.fromstring(body).attrib["version"] == str(version)
