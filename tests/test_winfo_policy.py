"""
presence.winfo with the real policy commands: a running server with
authenticated accounts (those of L{tests.test_billing_integration}); bob
watches his watchers while C{presence-admin policy} asks about, allows and
blocks a watcher, over UDP and TCP. Each change reaches the server within
its billing poll interval, and bob's watcher information shows it.
"""

from __future__ import annotations

from typing import Any, Tuple

import pytest

from presence.winfo import parseWatcherinfo
from tests.test_billing_integration import UA, _start, presenceAdmin, provisioned  # noqa: F401 (the fixture)

BOB = "sip:bob@example.test"
WINFO = "application/watcherinfo+xml"
WATCHERS = {"UDP": "sip:alice@example.test", "TCP": "sip:dave@example.test"}


@pytest.fixture(scope="module")
def server(provisioned: Tuple[str, str]) -> Any:  # noqa: F811
    workdir, database = provisioned
    for watcher in WATCHERS.values():
        presenceAdmin(database, "policy", "ask", "bob@example.test", watcher[4:])
    process = _start(workdir, database, "")
    process.database = database  # type: ignore[attr-defined]
    yield process
    process.stopCleanly()


def _watchers(notify: Any) -> Tuple[str, Tuple[Tuple[str, str, str], ...]]:
    assert notify.header("event") == "presence.winfo"
    document = parseWatcherinfo(notify.body)
    (watcherList,) = document.lists
    assert (watcherList.resource, watcherList.package) == (BOB, "presence")
    return document.state, tuple((w.uri, w.status, w.event) for w in watcherList.watchers)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_policyShowsInWatcherInfo(server: Any, transport: str) -> None:
    watcherAOR = WATCHERS[transport]
    owner = UA(server, BOB, transport)
    watcher = UA(server, watcherAOR, transport)
    try:
        _, ok = owner.authenticated(owner.request("SUBSCRIBE", BOB, Event="presence.winfo", Accept=WINFO, Expires="300"))
        assert ok.code == 200
        state, listed = _watchers(owner.notify())
        assert state == "full" and watcherAOR not in [uri for uri, _, _ in listed]

        _, ok = watcher.authenticated(watcher.request("SUBSCRIBE", BOB, Event="presence", Expires="300"))
        assert ok.code == 200
        assert watcher.notify().header("subscription-state").startswith("pending")
        assert _watchers(owner.notify()) == ("partial", ((watcherAOR, "pending", "subscribe"),))

        presenceAdmin(server.database, "policy", "allow", "bob@example.test", watcherAOR[4:])
        assert watcher.notify().header("subscription-state").startswith("active")
        assert _watchers(owner.notify()) == ("partial", ((watcherAOR, "active", "approved"),))

        presenceAdmin(server.database, "policy", "block", "bob@example.test", watcherAOR[4:])
        assert watcher.notify().header("subscription-state") == "terminated;reason=rejected"
        assert _watchers(owner.notify()) == ("partial", ((watcherAOR, "terminated", "rejected"),))
    finally:
        owner.close()
        watcher.close()
