"""
Tests for watcher information (L{presence.winfo}, RFC 3857/3858): the
rendered documents, full then partial per subscription with its version,
parsing and round trips. Hostile XML is in test_xmlsafe.py.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.winfo import (
    EVENTS,
    STATUSES,
    WATCHERINFO_NS,
    Watcher,
    WatcherinfoError,
    WatcherinfoView,
    WatcherList,
    parseWatcherinfo,
    renderWatcherinfo,
)

BOB = "sip:bob@example.test"
W = "{%s}" % WATCHERINFO_NS


def pending(uri: str = "sip:alice@example.test", watcherId: str = "w1") -> Watcher:
    return Watcher(uri, watcherId, "pending", "subscribe", "Alice", 0)


def listOf(*watchers: Watcher) -> List[WatcherList]:
    return [WatcherList(BOB, "presence", watchers)]


def test_fullDocument() -> None:
    """
    The RFC 3858 shape: a watcher-list per resource and package, watchers
    with id, status, event, display name and duration, the URI as text.
    """
    body = renderWatcherinfo(
        listOf(pending(), Watcher("sip:carol@example.test", "w2", "active", "approved", None, 509, 3091)),
        version=0,
    )
    root = ET.fromstring(body)
    assert root.tag == W + "watcherinfo"
    assert root.attrib == {"version": "0", "state": "full"}
    (watcherList,) = root
    assert watcherList.attrib == {"resource": BOB, "package": "presence"}
    first, second = watcherList
    assert first.attrib == {
        "id": "w1",
        "status": "pending",
        "event": "subscribe",
        "display-name": "Alice",
        "duration-subscribed": "0",
    }
    assert first.text == "sip:alice@example.test"
    assert second.attrib["expiration"] == "3091"


def test_emptyListAndEscaping() -> None:
    body = renderWatcherinfo(
        [WatcherList('sip:"b"&<x>@example.test', "presence"), *listOf(Watcher("sip:a&b@x", "i&d", "active", "approved", '"A" <&>'))],
        version=3,
        state="partial",
    )
    parsed = parseWatcherinfo(body)
    assert parsed.version == 3 and parsed.state == "partial"
    assert parsed.lists[0] == WatcherList('sip:"b"&<x>@example.test', "presence", ())
    assert parsed.lists[1].watchers[0].displayName == '"A" <&>'


@pytest.mark.parametrize(
    "watcher,hint",
    [
        (Watcher("sip:a@x", "w", "sleeping", "subscribe"), "status"),
        (Watcher("sip:a@x", "w", "active", "because"), "event"),
        (Watcher("sip:a@x", "", "active", "approved"), "id"),
        (Watcher("", "w", "active", "approved"), "URI"),
        (Watcher("sip:a@x", "w", "active", "approved", None, -1), "non-negative"),
    ],
)
def test_invalidWatcherRefused(watcher: Watcher, hint: str) -> None:
    with pytest.raises(WatcherinfoError, match=hint):
        renderWatcherinfo(listOf(watcher), 0)


def test_badStateOrVersionRefused() -> None:
    with pytest.raises(WatcherinfoError):
        renderWatcherinfo([], 0, "some")
    with pytest.raises(WatcherinfoError):
        renderWatcherinfo([], -1)


# -- full, then partial ----------------------------------------------------


def test_fullThenPartial() -> None:
    """
    A subscription gets full state first, then only what changed, each
    document one version more; no change gives no document.
    """
    view = WatcherinfoView()
    first = parseWatcherinfo(view.full(listOf(pending())))
    assert (first.version, first.state) == (0, "full")
    assert view.update(listOf(pending())) is None
    # Durations grow every second: not a change.
    assert view.update(listOf(pending()._replace(durationSubscribed=30))) is None

    carol = Watcher("sip:carol@example.test", "w2", "pending", "subscribe")
    second = parseWatcherinfo(view.update(listOf(pending(), carol)))  # type: ignore[arg-type]
    assert (second.version, second.state) == (1, "partial")
    assert second.lists == tuple(listOf(carol))

    approved = pending()._replace(status="active", event="approved")
    third = parseWatcherinfo(view.update(listOf(approved, carol)))  # type: ignore[arg-type]
    assert third.version == 2 and third.lists == tuple(listOf(approved))


def test_goneWatcherReportedTerminatedOnce() -> None:
    """
    A watcher that disappears is reported once as terminated (timeout);
    one reported terminated by the caller, then gone, is not reported
    again; a whole resource gone reports its watchers.
    """
    view = WatcherinfoView()
    carol = Watcher("sip:carol@example.test", "w2", "active", "approved")
    view.full(listOf(pending(), carol))
    gone = parseWatcherinfo(view.update(listOf(carol)))  # type: ignore[arg-type]
    assert gone.lists[0].watchers == (pending()._replace(status="terminated", event="timeout"),)

    rejected = carol._replace(status="terminated", event="rejected")
    told = parseWatcherinfo(view.update(listOf(rejected)))  # type: ignore[arg-type]
    assert told.lists[0].watchers == (rejected,)
    assert view.update(listOf()) is None

    view.update(listOf(carol))
    dropped = parseWatcherinfo(view.update([]))  # type: ignore[arg-type]
    assert dropped.lists == (WatcherList(BOB, "presence", (carol._replace(status="terminated", event="timeout"),)),)


def test_versionCarriesOver() -> None:
    """
    A view rebuilt with the stored version (a restart, an adoption)
    starts with a full document at that version.
    """
    view = WatcherinfoView(version=7)
    body = parseWatcherinfo(view.update(listOf(pending())))  # type: ignore[arg-type]
    assert (body.version, body.state) == (7, "full")
    assert view.version == 8


INVALID = {
    "wrong root": (b'<watchers xmlns="%s"/>' % WATCHERINFO_NS.encode(), "root"),
    "no version": (b'<watcherinfo xmlns="%s" state="full"/>' % WATCHERINFO_NS.encode(), "version"),
    "bad state": (b'<watcherinfo xmlns="%s" version="0" state="x"/>' % WATCHERINFO_NS.encode(), "state"),
    "list without package": (
        b'<watcherinfo xmlns="%s" version="0" state="full"><watcher-list resource="r"/></watcherinfo>'
        % WATCHERINFO_NS.encode(),
        "package",
    ),
    "watcher with child": (
        renderWatcherinfo(listOf(pending()), 0).replace(b"sip:alice", b"<b/>sip:alice"),
        "child",
    ),
    "bad status": (renderWatcherinfo(listOf(pending()), 0).replace(b'"pending"', b'"idle"'), "status"),
    "bad duration": (renderWatcherinfo(listOf(pending()), 0).replace(b'subscribed="0"', b'subscribed="x"'), "integer"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalidRefused(name: str) -> None:
    data, hint = INVALID[name]
    with pytest.raises(WatcherinfoError, match=hint):
        parseWatcherinfo(data)


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=15).filter(
    lambda t: t.strip(" \t\r\n") == t
)
_watcher = st.builds(
    Watcher,
    _text,
    _text,
    st.sampled_from(STATUSES),
    st.sampled_from(EVENTS),
    st.one_of(st.none(), _text),
    st.one_of(st.none(), st.integers(0, 10**9)),
    st.one_of(st.none(), st.integers(0, 10**9)),
)
_lists = st.lists(
    st.builds(WatcherList, _text, st.sampled_from(["presence", "dialog"]), st.lists(_watcher, max_size=4).map(tuple)),
    max_size=3,
    unique_by=lambda l: (l.resource, l.package),
)


@settings(max_examples=200, deadline=None)
@given(_lists, st.integers(0, 2**32), st.sampled_from(["full", "partial"]))
def test_roundTrip(lists: List[WatcherList], version: int, state: str) -> None:
    parsed = parseWatcherinfo(renderWatcherinfo(lists, version, state))
    assert parsed.version == version and parsed.state == state
    assert list(parsed.lists) == lists


@settings(max_examples=100, deadline=None)
@given(st.lists(_lists, min_size=1, max_size=5))
def test_partialsApplyToTheFullState(states: List[List[WatcherList]]) -> None:
    """
    Applying each partial document to the first full one, the way a
    client does, gives what the view was last given (terminated watchers
    dropped), and versions count up by one.
    """
    view = WatcherinfoView()
    known = {}
    expectedVersion = 0
    for lists in states:
        # Watcher ids unique per resource, as the server gives them.
        lists = [l._replace(watchers=tuple({w.id: w for w in l.watchers}.values())) for l in lists]
        body = view.update(lists)
        if body is None:
            continue
        document = parseWatcherinfo(body)
        assert document.version == expectedVersion
        expectedVersion += 1
        if document.state == "full":
            known = {}
        for watcherList in document.lists:
            for watcher in watcherList.watchers:
                known[(watcherList.resource, watcherList.package, watcher.id)] = watcher
        current = {
            (l.resource, l.package, w.id): w for l in lists for w in l.watchers
        }
        live = {k: w.status for k, w in known.items() if w.status != "terminated"}
        assert live == {k: w.status for k, w in current.items() if w.status != "terminated"}


def test_snapshotRestoresPartials() -> None:
    """
    A view rebuilt from its snapshot (stored with the subscription) goes
    on with partial documents from what was told.
    """
    view = WatcherinfoView()
    view.full(listOf(pending()))
    again = WatcherinfoView(view.version)
    again.restore(view.snapshot())  # type: ignore[arg-type]
    assert again.update(listOf(pending())) is None
    approved = pending()._replace(status="active", event="approved", durationSubscribed=None)
    document = parseWatcherinfo(again.update(listOf(approved)))  # type: ignore[arg-type]
    assert (document.version, document.state) == (1, "partial")
    assert WatcherinfoView().snapshot() is None
    with pytest.raises(ValueError):
        WatcherinfoView().restore([["r", "presence", [["too", "short"]]]])
