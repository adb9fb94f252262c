"""
C{presence-admin mwi AOR --new N --old N}: an operator pushes a mailbox's
message summary (RFC 3842) to the running server.

The push is what a voicemail system does: a C{PUBLISH Event:
message-summary} for the mailbox, sent to the server over SIP and
authenticated as the account itself with the HA1 billing stores for it,
so it goes through the server's own authorization, is stored, replicated
across the cluster and NOTIFYed to the account's phones like any other
publication. It modifies the mailbox's live publication when it finds
one in the database (C{SIP-If-Match}), so repeated pushes leave one
publication, not many.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import sqlalchemy as sa
from twisted.python import usage

from presence.admin.provisioning import _AOROptions, _check, _transaction
from presence.admin.sipuser import SipUser, SipUserError, serverAddress
from presence.billing import db
from presence.billing.records import parseAOR
from presence.mwi import CONTENT_TYPE, MessageSummaryError, renderMessageSummary, summaryOf

EVENT = "message-summary"


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("a count is a non-negative integer")
    return int(text)


class MwiOptions(_AOROptions):
    synopsis = "AOR [--new N] [--old N] [--urgent-new N --urgent-old N] [--server udp:HOST:PORT]"
    longdesc = (
        "Push the message summary of AOR's mailbox to its phones: a PUBLISH "
        "Event: message-summary sent to the server as the account itself."
    )
    optParameters = [
        ["new", None, 0, "New voice messages.", _count],
        ["old", None, 0, "Old voice messages.", _count],
        ["urgent-new", None, None, "Urgent new voice messages (with --urgent-old).", _count],
        ["urgent-old", None, None, "Urgent old voice messages (with --urgent-new).", _count],
        ["server", None, None, "udp:HOST:PORT or tcp:HOST:PORT (default: the first UDP or TCP listener of [server] listen, on loopback)."],
        ["expires", None, None, "How long the summary stands, in seconds (default [manager] publish_max_expires).", _count],
    ]

    def postOptions(self) -> None:
        if (self["urgent-new"] is None) != (self["urgent-old"] is None):
            raise usage.UsageError("--urgent-new and --urgent-old go together")
        if self["server"] is not None:
            try:
                serverAddress(self["server"])
            except ValueError as e:
                raise usage.UsageError(str(e))


def _defaultServer(config: Any) -> str:
    for spec in config.listen:
        if spec.transport in ("UDP", "TCP"):
            host = spec.interface if spec.interface not in ("", "0.0.0.0", "::") else "127.0.0.1"
            return "%s:%s:%d" % (spec.transport.lower(), "[%s]" % host if ":" in host else host, spec.port or 5060)
    return "udp:127.0.0.1:5060"


def _liveEtag(conn: Any, aor: str, now: float) -> Optional[str]:
    from presence.store.schema import publications

    row = conn.execute(
        sa.select(publications.c.etag)
        .where(publications.c.presentity == aor)
        .where(publications.c.event == EVENT)
        .where(publications.c.expires_at > now)
        .order_by(publications.c.modified_at.desc())
        .limit(1)
    ).first()
    return None if row is None else row[0]


def mwi(options: Any, out: Any) -> None:
    """
    C{presence-admin mwi AOR ...}.
    """
    from presence.admin.cli import AdminError

    sub = options.subOptions
    aor = _check(parseAOR, sub["aor"])
    config = options.loadConfig()
    try:
        summary = summaryOf(aor, sub["new"], sub["old"], sub["urgent-new"], sub["urgent-old"])
    except MessageSummaryError as e:
        raise AdminError(e.reason)
    account, etag = _transaction(options, lambda conn: (db.getAccount(conn, aor), _liveEtag(conn, aor, time.time())))
    if account is None:
        raise AdminError("no account %s" % (aor,))
    transport, host, port = serverAddress(sub["server"] or _defaultServer(config))
    expires = sub["expires"] if sub["expires"] is not None else config.publishMaxExpires

    def ha1For(algorithm: str, realm: str) -> Optional[str]:
        return account.ha1For(algorithm) if realm == account.realm else None

    try:
        user = SipUser(transport, host, port)
    except OSError as e:
        raise AdminError("%s: cannot reach %s:%d over %s: %s" % (aor, host, port, transport, e.strerror or e))
    try:
        for ifMatch in ([etag, None] if etag else [None]):
            headers = {"Event": EVENT, "Expires": str(expires), "Content_Type": CONTENT_TYPE}
            if ifMatch is not None:
                headers["SIP_If_Match"] = ifMatch
            request = user.newRequest("PUBLISH", aor, aor, renderMessageSummary(summary), **headers)
            response = user.send(request, ha1For, account.username)
            if response.code != 412:
                break
    except (SipUserError, OSError) as e:
        raise AdminError("%s: %s" % (aor, e))
    finally:
        user.close()
    if response.code // 100 != 2:
        raise AdminError("%s: the server answered %d %s" % (aor, response.code, response.reason))
    out.write(
        "%s: %s (%d new, %d old), for %ss\n"
        % (aor, "messages waiting" if summary.waiting else "no new messages", sub["new"], sub["old"],
           response.header("expires") or expires)
    )
