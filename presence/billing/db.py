"""
The SQL of billing, as plain functions C{f(conn, ...)} on a SQLAlchemy Core
connection.

The same functions serve C{presence-admin}, which calls them synchronously
inside one transaction per command, and the server, which runs the reads on
the store's reader threads (never on the reactor thread).  They return
plain values (L{AccountInfo}, tuples, dicts), never rows tied to a
connection.

Every provisioning change appends the AORs it touched to
C{billing_changes} in the same transaction, so a running server learns what
changed by polling that table (L{changesSince}) and nothing is announced
that was not committed.  Change ids must become visible in increasing
order for that poll to be exact: SQLite serialises writers anyway, and on
PostgreSQL every provisioning transaction first takes one advisory lock,
so a transaction that drew a lower id has committed before a higher one is
drawn.
"""

from __future__ import annotations

import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from presence.billing.records import (
    ACTIONS,
    ACTIVE,
    STATUSES,
    AccountInfo,
    BillingError,
    DuplicateAccount,
    UnknownAccount,
    domainOf,
)
from presence.sip.digest import MD5, SHA256, computeHA1
from presence.store import schema

_accounts = schema.accounts
_policies = schema.watch_policies
_changes = schema.billing_changes
_subs = schema.subscriptions

#: Change rows older than this are pruned by provisioning writes: a running
#: server polls every few seconds, and one that fell further behind than
#: this reads everything again (see L{changesSince}).
CHANGE_RETENTION = 86400.0

_ACCOUNT_SELECT = sa.select(
    _accounts.c.aor,
    _accounts.c.username,
    _accounts.c.realm,
    _accounts.c.ha1_md5,
    _accounts.c.ha1_sha256,
    _accounts.c.status,
    _accounts.c.presence_enabled,
    _accounts.c.customer,
    _accounts.c.created_at,
)


def _account(row: Sequence[object]) -> AccountInfo:
    # The realm, the customer and the status repeat across accounts: one
    # shared string each, since the server holds every account in memory.
    return AccountInfo(
        aor=str(row[0]),
        username=str(row[1]),
        realm=sys.intern(str(row[2])),
        ha1Md5=str(row[3]),
        ha1Sha256=str(row[4]),
        status=sys.intern(str(row[5])),
        presenceEnabled=bool(row[6]),
        customer=sys.intern(str(row[7])),
        createdAt=float(row[8]),  # type: ignore[arg-type]
    )


def _rule(pattern: object, action: object) -> Tuple[str, str]:
    """
    A rule's pattern and action as plain strings; the action and the
    patterns shared by many presentities (C{*}, C{@domain}) are interned.
    """
    text = str(pattern)
    if text[:1] in ("*", "@"):
        text = sys.intern(text)
    return text, sys.intern(str(action))


# --- reads ------------------------------------------------------------------


def getAccount(conn: Connection, aor: str) -> Optional[AccountInfo]:
    """
    The account of C{aor}, or L{None}.
    """
    row = conn.execute(_ACCOUNT_SELECT.where(_accounts.c.aor == aor)).first()
    return None if row is None else _account(row)


def listAccounts(conn: Connection, customer: Optional[str] = None) -> List[AccountInfo]:
    """
    Every account (of one customer if given), ordered by AOR.
    """
    stmt = _ACCOUNT_SELECT.order_by(_accounts.c.aor)
    if customer is not None:
        stmt = stmt.where(_accounts.c.customer == customer)
    return [_account(row) for row in conn.execute(stmt)]


def rulesOf(conn: Connection, presentity: str) -> Dict[str, str]:
    """
    The watch rules of C{presentity}: pattern to action.
    """
    stmt = sa.select(_policies.c.pattern, _policies.c.action).where(
        _policies.c.presentity == presentity
    )
    return dict(_rule(pattern, action) for pattern, action in conn.execute(stmt))


def watchInputs(
    conn: Connection, watcher: str, presentity: str
) -> Tuple[Optional[AccountInfo], Optional[AccountInfo], Dict[str, str]]:
    """
    Everything L{presence.billing.policy.decide} needs, in one read: the
    watcher's account, the presentity's account and its rules.
    """
    accounts = {
        account.aor: account
        for account in (
            _account(row)
            for row in conn.execute(_ACCOUNT_SELECT.where(_accounts.c.aor.in_([watcher, presentity])))
        )
    }
    return accounts.get(watcher), accounts.get(presentity), rulesOf(conn, presentity)


def billingInputs(
    conn: Connection, aors: Iterable[str], presentities: Iterable[str]
) -> Tuple[Dict[str, AccountInfo], Dict[str, Dict[str, str]]]:
    """
    Many lookups in one read, for the authorizer's re-reads of the AORs
    that changed: the accounts of C{aors} (those that exist) and the watch
    rules of C{presentities} (those that have any).
    """
    wanted = sorted(set(aors))
    accounts: Dict[str, AccountInfo] = {}
    if wanted:
        for row in conn.execute(_ACCOUNT_SELECT.where(_accounts.c.aor.in_(wanted))):
            account = _account(row)
            accounts[account.aor] = account
    owners = sorted(set(presentities))
    rules: Dict[str, Dict[str, str]] = {}
    if owners:
        stmt = sa.select(_policies.c.presentity, _policies.c.pattern, _policies.c.action).where(
            _policies.c.presentity.in_(owners)
        )
        for presentity, pattern, action in conn.execute(stmt):
            key, value = _rule(pattern, action)
            rules.setdefault(str(presentity), {})[key] = value
    return accounts, rules


def accountsPage(conn: Connection, after: Optional[str], limit: int) -> List[AccountInfo]:
    """
    One page of a scan of every account in AOR order (keyset paging: each
    page is a short read on the primary key, however far the scan is).

    @param after: the last AOR of the previous page, L{None} for the first.
    @return: at most C{limit} accounts; fewer means the scan is done.
    """
    stmt = _ACCOUNT_SELECT.order_by(_accounts.c.aor).limit(limit)
    if after is not None:
        stmt = stmt.where(_accounts.c.aor > after)
    return [_account(row) for row in conn.execute(stmt)]


def rulesPage(
    conn: Connection, after: Optional[Tuple[str, str]], limit: int
) -> List[Tuple[str, str, str]]:
    """
    One page of a scan of every watch rule in primary key order.

    @param after: the C{(presentity, pattern)} of the previous page's last
        rule, L{None} for the first page.
    @return: at most C{limit} C{(presentity, pattern, action)}; fewer
        means the scan is done.
    """
    stmt = (
        sa.select(_policies.c.presentity, _policies.c.pattern, _policies.c.action)
        .order_by(_policies.c.presentity, _policies.c.pattern)
        .limit(limit)
    )
    if after is not None:
        presentity, pattern = after
        stmt = stmt.where(
            (_policies.c.presentity > presentity)
            | ((_policies.c.presentity == presentity) & (_policies.c.pattern > pattern))
        )
    page = []
    for presentity, pattern, action in conn.execute(stmt):
        key, value = _rule(pattern, action)
        page.append((str(presentity), key, value))
    return page


def watchersOf(conn: Connection, presentity: str) -> List[Tuple[str, str, float, str]]:
    """
    Who watches C{presentity} now, from the subscriptions table of every
    manager: C{(watcher, state, expiresAt, owner)}, ordered by watcher.
    """
    stmt = (
        sa.select(_subs.c.watcher, _subs.c.state, _subs.c.expires_at, _subs.c.owner)
        .where(_subs.c.presentity == presentity)
        .order_by(_subs.c.watcher, _subs.c.expires_at)
    )
    return [(str(w), str(s), float(e), str(o)) for w, s, e, o in conn.execute(stmt)]


def lastChangeId(conn: Connection) -> int:
    """
    The id of the newest change, 0 if none: where a poller starts.
    """
    value = conn.execute(sa.select(sa.func.max(_changes.c.id))).scalar()
    return int(value or 0)


def changesSince(
    conn: Connection, after: int, limit: int = 1000
) -> Tuple[List[Tuple[int, str]], int]:
    """
    The changes with an id above C{after}, oldest first, at most C{limit}.

    @return: the C{(id, aor)} pairs, and the lowest id still in the table
        (0 when empty).  If that lowest id is above C{after + 1} while the
        poller has seen changes before, rows it never saw may have been
        pruned, and it should read everything again.
    """
    rows = conn.execute(
        sa.select(_changes.c.id, _changes.c.aor)
        .where(_changes.c.id > after)
        .order_by(_changes.c.id)
        .limit(limit)
    ).all()
    oldest = conn.execute(sa.select(sa.func.min(_changes.c.id))).scalar()
    return [(int(i), str(a)) for i, a in rows], int(oldest or 0)


# --- writes -----------------------------------------------------------------


def _lockChanges(conn: Connection) -> None:
    """
    Serialise provisioning transactions on PostgreSQL (see the module
    docstring); SQLite's writers are serial already.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('presence.billing_changes'))"))


def recordChanges(conn: Connection, aors: Iterable[str], now: Optional[float] = None) -> None:
    """
    Append the AORs a provisioning change touched, and prune old changes.
    Call inside the transaction that made the change.
    """
    now = time.time() if now is None else now
    unique = sorted(set(aors))
    if unique:
        conn.execute(sa.insert(_changes), [{"aor": aor, "changed_at": now} for aor in unique])
    conn.execute(sa.delete(_changes).where(_changes.c.changed_at < now - CHANGE_RETENTION))


def _ha1s(username: str, realm: str, password: str) -> Dict[str, str]:
    if not password:
        raise BillingError("empty password")
    return {
        "ha1_md5": computeHA1(username, realm, password, MD5),
        "ha1_sha256": computeHA1(username, realm, password, SHA256),
    }


def addAccount(
    conn: Connection,
    aor: str,
    password: str,
    customer: Optional[str] = None,
    username: Optional[str] = None,
    status: str = ACTIVE,
    presenceEnabled: bool = True,
    now: Optional[float] = None,
) -> AccountInfo:
    """
    Provision an account.  Only the HA1 values of C{password} are stored,
    for MD5 and SHA-256, bound to the realm (the AOR's domain).

    @param aor: a canonical AOR (L{presence.billing.records.parseAOR}).
    @param customer: the tenant; the AOR's domain by default.
    @param username: the digest username; the AOR's user part by default.
    @raise DuplicateAccount: if C{aor} has an account already.
    """
    if status not in STATUSES:
        raise BillingError("unknown status %r" % (status,))
    _lockChanges(conn)
    if getAccount(conn, aor) is not None:
        raise DuplicateAccount("account %s exists already" % (aor,))
    realm = domainOf(aor)
    user = username if username is not None else aor[4:].rpartition("@")[0]
    now = time.time() if now is None else now
    values = dict(
        aor=aor,
        username=user,
        realm=realm,
        status=status,
        presence_enabled=presenceEnabled,
        customer=customer if customer is not None else realm,
        created_at=now,
    )
    values.update(_ha1s(user, realm, password))
    try:
        conn.execute(sa.insert(_accounts).values(**values))
    except sa.exc.IntegrityError:
        raise DuplicateAccount("account %s exists already" % (aor,)) from None
    recordChanges(conn, [aor], now)
    account = getAccount(conn, aor)
    assert account is not None
    return account


def _update(conn: Connection, aor: str, values: Dict[str, object]) -> AccountInfo:
    _lockChanges(conn)
    result = conn.execute(sa.update(_accounts).where(_accounts.c.aor == aor).values(**values))
    if result.rowcount != 1:
        raise UnknownAccount("no account %s" % (aor,))
    recordChanges(conn, [aor])
    account = getAccount(conn, aor)
    assert account is not None
    return account


def setPassword(conn: Connection, aor: str, password: str) -> AccountInfo:
    """
    Replace the digest credentials of an account.

    @raise UnknownAccount: if there is no such account.
    """
    account = getAccount(conn, aor)
    if account is None:
        raise UnknownAccount("no account %s" % (aor,))
    return _update(conn, aor, dict(_ha1s(account.username, account.realm, password)))


def setStatus(conn: Connection, aor: str, status: str) -> AccountInfo:
    """
    Block or unblock an account.

    @raise UnknownAccount: if there is no such account.
    """
    if status not in STATUSES:
        raise BillingError("unknown status %r" % (status,))
    return _update(conn, aor, {"status": status})


def setPresenceEnabled(conn: Connection, aor: str, enabled: bool) -> AccountInfo:
    """
    Let an account use presence, or not.

    @raise UnknownAccount: if there is no such account.
    """
    return _update(conn, aor, {"presence_enabled": bool(enabled)})


def setCustomer(conn: Connection, aor: str, customer: str) -> AccountInfo:
    """
    Move an account to another customer.

    @raise UnknownAccount: if there is no such account.
    """
    return _update(conn, aor, {"customer": customer})


def removeAccount(conn: Connection, aor: str) -> None:
    """
    Delete an account with its own watch rules and every rule naming it
    as a watcher (a later account of the same AOR must not inherit them).

    @raise UnknownAccount: if there is no such account.
    """
    _lockChanges(conn)
    if conn.execute(sa.delete(_accounts).where(_accounts.c.aor == aor)).rowcount != 1:
        raise UnknownAccount("no account %s" % (aor,))
    naming = conn.execute(
        sa.select(_policies.c.presentity).where(_policies.c.pattern == aor)
    ).scalars().all()
    conn.execute(sa.delete(_policies).where(_policies.c.presentity == aor))
    conn.execute(sa.delete(_policies).where(_policies.c.pattern == aor))
    recordChanges(conn, [aor] + [str(p) for p in naming])


def setRule(conn: Connection, presentity: str, pattern: str, action: str) -> None:
    """
    Set the rule of C{presentity} for watchers matching C{pattern},
    replacing the one it had for that pattern.

    @raise UnknownAccount: if the presentity has no account.
    """
    if action not in ACTIONS:
        raise BillingError("unknown action %r (allow, block or ask)" % (action,))
    _lockChanges(conn)
    if getAccount(conn, presentity) is None:
        raise UnknownAccount("no account %s" % (presentity,))
    conn.execute(
        sa.delete(_policies).where(
            (_policies.c.presentity == presentity) & (_policies.c.pattern == pattern)
        )
    )
    conn.execute(sa.insert(_policies).values(presentity=presentity, pattern=pattern, action=action))
    recordChanges(conn, [presentity])


def clearRules(conn: Connection, presentity: str, pattern: Optional[str] = None) -> int:
    """
    Remove the rule of C{presentity} for C{pattern}, or all its rules.

    @return: how many rules were removed.
    @raise UnknownAccount: if the presentity has no account.
    """
    _lockChanges(conn)
    if getAccount(conn, presentity) is None:
        raise UnknownAccount("no account %s" % (presentity,))
    condition = _policies.c.presentity == presentity
    if pattern is not None:
        condition = condition & (_policies.c.pattern == pattern)
    removed = conn.execute(sa.delete(_policies).where(condition)).rowcount
    recordChanges(conn, [presentity])
    return int(removed)
