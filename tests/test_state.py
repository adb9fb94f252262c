"""
Tests for the in-memory indexes of L{presence.manager.state}: the dialog
index and a presentity's watchers, both held compactly.
"""

from __future__ import annotations

from presence.manager.state import DialogIndex, Presentity, Subscription
from presence.sip.target import Target


def makeSub(id: str, callId: str = "call", localTag: str = "tag", remoteTag: str = "theirs", eventId: str = "") -> Subscription:
    return Subscription(
        id=id, callId=callId, localTag=localTag, remoteTag=remoteTag, eventId=eventId,
        watcher="sip:w@example.test", presentity="sip:p@example.test",
        remoteTarget="sip:w@127.0.0.1", routeSet=(), target=Target("UDP", "127.0.0.1", 5060),
        expiresAt=100.0, createdAt=0.0, remoteCSeq=1,
    )


def test_dialogFoundByWholeKeyOnly():
    """
    The index is keyed by our tag, but a request naming that tag with
    another Call-ID, remote tag or Event id finds nothing.
    """
    index = DialogIndex()
    sub = makeSub("a")
    index.add(sub)
    assert index.get(("call", "tag", "theirs", "")) is sub
    assert ("call", "tag", "theirs", "") in index
    for key in [("other", "tag", "theirs", ""), ("call", "tag", "x", ""), ("call", "tag", "theirs", "7"),
                ("call", "nope", "theirs", "")]:
        assert index.get(key) is None
        assert key not in index


def test_dialogReplacedAndStaleDiscard():
    """
    Adding a subscription with a held key replaces the held one; then
    discarding the replaced one leaves the new one indexed.
    """
    index = DialogIndex()
    old, new = makeSub("a"), makeSub("b")
    index.add(old)
    index.add(new)
    assert len(index) == 1
    index.discard(old)
    assert index.get(new.dialogKey) is new


def test_watchersOneThenManyThenNone():
    pres = Presentity("sip:p@example.test")
    assert pres.watchers == () and pres.idle()
    pres.addWatcher("a")
    pres.addWatcher("a")
    assert list(pres.watchers) == ["a"] and not pres.idle()
    pres.addWatcher("b")
    pres.addWatcher("c")
    assert sorted(pres.watchers) == ["a", "b", "c"]
    pres.removeWatcher("b")
    pres.removeWatcher("missing")
    assert sorted(pres.watchers) == ["a", "c"]
    pres.removeWatcher("a")
    assert list(pres.watchers) == ["c"]
    pres.removeWatcher("a")
    assert list(pres.watchers) == ["c"]
    pres.removeWatcher("c")
    assert pres.watchers == () and pres.idle()
    pres.removeWatcher("c")
    assert pres.idle()
