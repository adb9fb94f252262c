"""
Message waiting with a real client: baresip's C{mwi} module (Debian's
baresip 1.0.0, account parameter C{mwi=yes}) subscribes to its own
C{message-summary} after registering, with digest authentication; an
operator pushes a summary with C{presence-admin mwi} (a PUBLISH the
command authenticates with the account's stored HA1), and baresip's
C{MWI_NOTIFY} event, read on its control socket, shows it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import pytest

from tests.test_baresip import baresip, server  # noqa: F401 (the fixtures)
from tests.test_billing_integration import presenceAdmin


def _mwi(event: Any) -> bool:
    return event.get("type") == "MWI_NOTIFY"


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_baresipSeesMessagesWaiting(server: Any, transport: str) -> None:  # noqa: F811
    alice = server.client("alice", transport, [], pubint=0, extra=";mwi=yes", modules=["mwi"])
    alice.registered()
    first = alice.waitEvent(_mwi)
    assert "Messages-Waiting: no" in first.get("param", ""), first
    database = "sqlite:///" + os.path.join(server.workdir, "presence.sqlite")
    port = server.ports[transport]
    out = presenceAdmin(database, "mwi", "alice@example.test", "--new", "2", "--old", "5",
                        "--server", "%s:127.0.0.1:%d" % (transport.lower(), port))
    assert "messages waiting (2 new, 5 old)" in out
    pushed = alice.waitEvent(lambda e: _mwi(e) and "Messages-Waiting: yes" in e.get("param", ""))
    assert "Voice-Message: 2/5" in pushed["param"]
    # A second push modifies the first publication instead of adding one.
    presenceAdmin(database, "mwi", "alice@example.test", "--new", "0", "--old", "7",
                  "--server", "%s:127.0.0.1:%d" % (transport.lower(), port))
    cleared = alice.waitEvent(lambda e: _mwi(e) and "Voice-Message: 0/7" in e.get("param", ""))
    assert "Messages-Waiting: no" in cleared["param"]
    with sqlite3.connect(os.path.join(server.workdir, "presence.sqlite")) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM publications WHERE presentity = ? AND event = ? AND expires_at > ?",
            ("sip:alice@example.test", "message-summary", time.time()),
        ).fetchone()
    assert count == 1
