"""
The SQL schema (SQLAlchemy Core) and its versioned upgrade steps.

Two views of the schema live here, on purpose:

  - L{METADATA} describes the B{current} tables; the store builds its queries
    from it.
  - L{UPGRADE_STEPS} is the history: step C{N} turns a version-C{N} database
    into version C{N+1}.  Each step defines the tables it creates with its own
    frozen C{MetaData}, so a later change to L{METADATA} never rewrites what an
    old step does.  Creating a database from scratch is running every step.

A test reflects a freshly upgraded database and compares it with
L{METADATA}, so the two cannot drift apart unnoticed.

To add a table or a column: append a step function to L{UPGRADE_STEPS} and
update L{METADATA}; never edit an existing step.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from presence.store.errors import SchemaTooNew, StoreError

#: The table holding the single row with the schema version.  Its shape never
#: changes, so it is not part of the upgrade history.
VERSION_METADATA = sa.MetaData()
schemaVersionTable = sa.Table(
    "schema_version",
    VERSION_METADATA,
    sa.Column("version", sa.Integer, nullable=False),
)


# --- current schema ---------------------------------------------------------

METADATA = sa.MetaData()

subscriptions = sa.Table(
    "subscriptions",
    METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("call_id", sa.Text, nullable=False),
    sa.Column("local_tag", sa.Text, nullable=False),
    sa.Column("remote_tag", sa.Text, nullable=False),
    sa.Column("watcher", sa.Text, nullable=False),
    sa.Column("presentity", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("accept", sa.Text, nullable=False),
    sa.Column("remote_target", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("transport", sa.Text, nullable=False),
    sa.Column("peer_host", sa.Text, nullable=False),
    sa.Column("peer_port", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("route_set", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("local_cseq", sa.BigInteger, nullable=False),
    sa.Column("remote_cseq", sa.BigInteger, nullable=False),
    sa.Column("flow_token", sa.Text, nullable=False),
    sa.Column("package_state", sa.Text, nullable=False),
    sa.Index("ix_subscriptions_presentity", "presentity"),
    sa.Index("ix_subscriptions_owner", "owner"),
    sa.Index("ix_subscriptions_expires_at", "expires_at"),
)

publications = sa.Table(
    "publications",
    METADATA,
    sa.Column("etag", sa.Text, primary_key=True),
    sa.Column("presentity", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("modified_at", sa.Double, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Index("ix_publications_presentity", "presentity"),
    sa.Index("ix_publications_expires_at", "expires_at"),
)

#: Billing (L{presence.billing}): one row per provisioned account.  Digest
#: credentials are kept only as HA1 values, one per algorithm, bound to
#: C{realm}; C{status} is C{"active"} or C{"blocked"}.
accounts = sa.Table(
    "accounts",
    METADATA,
    sa.Column("aor", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("realm", sa.Text, nullable=False),
    sa.Column("ha1_md5", sa.Text, nullable=False),
    sa.Column("ha1_sha256", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("presence_enabled", sa.Boolean, nullable=False),
    sa.Column("customer", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_accounts_customer", "customer"),
)

#: Who may watch whom: per presentity, a watcher pattern (an AOR,
#: C{"@domain"} or C{"*"}) and an action (C{allow}, C{block}, C{ask}).
watch_policies = sa.Table(
    "watch_policies",
    METADATA,
    sa.Column("presentity", sa.Text, primary_key=True),
    sa.Column("pattern", sa.Text, primary_key=True),
    sa.Column("action", sa.Text, nullable=False),
)

#: Every provisioning change appends the AORs it touched here, in the same
#: transaction, so running managers poll what changed (monotonic C{id}).
billing_changes = sa.Table(
    "billing_changes",
    METADATA,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("aor", sa.Text, nullable=False),
    sa.Column("changed_at", sa.Double, nullable=False),
    sa.Index("ix_billing_changes_changed_at", "changed_at"),
)

#: Record field name -> column name, in record field order.
SUBSCRIPTION_COLUMNS = {
    "id": "id",
    "callId": "call_id",
    "localTag": "local_tag",
    "remoteTag": "remote_tag",
    "watcher": "watcher",
    "presentity": "presentity",
    "event": "event",
    "accept": "accept",
    "remoteTarget": "remote_target",
    "expiresAt": "expires_at",
    "state": "state",
    "owner": "owner",
    "transport": "transport",
    "peerHost": "peer_host",
    "peerPort": "peer_port",
    "createdAt": "created_at",
    "routeSet": "route_set",
    "eventId": "event_id",
    "localCSeq": "local_cseq",
    "remoteCSeq": "remote_cseq",
    "flowToken": "flow_token",
    "packageState": "package_state",
}

PUBLICATION_COLUMNS = {
    "etag": "etag",
    "presentity": "presentity",
    "contentType": "content_type",
    "body": "body",
    "expiresAt": "expires_at",
    "modifiedAt": "modified_at",
    "version": "version",
    "event": "event",
}


#: Registration bindings (L{presence.registrar}): an AOR reachable at a
#: contact until C{expires_at}, with what identifies the binding (contact,
#: or C{+sip.instance} and C{reg-id}), the REGISTER that wrote it (Call-ID,
#: CSeq) and the flow it came over.
bindings = sa.Table(
    "bindings",
    METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("aor", sa.Text, nullable=False),
    sa.Column("contact", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("registered_at", sa.Double, nullable=False),
    sa.Column("call_id", sa.Text, nullable=False),
    sa.Column("cseq", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("transport", sa.Text, nullable=False),
    sa.Column("peer_host", sa.Text, nullable=False),
    sa.Column("peer_port", sa.Integer, nullable=False),
    sa.Column("flow_token", sa.Text, nullable=False),
    sa.Column("instance", sa.Text, nullable=False),
    sa.Column("reg_id", sa.Integer, nullable=False),
    sa.Column("q", sa.Double, nullable=True),
    sa.Index("ix_bindings_aor", "aor"),
    sa.Index("ix_bindings_owner", "owner"),
    sa.Index("ix_bindings_expires_at", "expires_at"),
)

BINDING_COLUMNS = {
    "id": "id",
    "aor": "aor",
    "contact": "contact",
    "expiresAt": "expires_at",
    "registeredAt": "registered_at",
    "callId": "call_id",
    "cseq": "cseq",
    "owner": "owner",
    "transport": "transport",
    "peerHost": "peer_host",
    "peerPort": "peer_port",
    "flowToken": "flow_token",
    "instance": "instance",
    "regId": "reg_id",
    "q": "q",
}


#: Manager leases (L{presence.cluster.lease}): liveness of each manager of
#: a cluster kept in the database itself.  A manager renews its row every
#: lease interval while it holds C{epoch}; C{expires_at} is epoch seconds
#: on the database's clock.  A survivor may adopt a manager's
#: subscriptions only once its lease has expired, and bumps C{epoch} in
#: the same transaction: the former owner's next renewal then matches no
#: row and it knows it was fenced.
manager_leases = sa.Table(
    "manager_leases",
    METADATA,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
)


# --- history ----------------------------------------------------------------


def _createCore(conn: Connection) -> None:
    """
    Version 0 -> 1: the subscription and publication tables.

    Frozen: this is what version 1 looked like, whatever L{METADATA} says now.
    """
    md = sa.MetaData()
    sa.Table(
        "subscriptions",
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("local_tag", sa.Text, nullable=False),
        sa.Column("remote_tag", sa.Text, nullable=False),
        sa.Column("watcher", sa.Text, nullable=False),
        sa.Column("presentity", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("accept", sa.Text, nullable=False),
        sa.Column("remote_target", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("transport", sa.Text, nullable=False),
        sa.Column("peer_host", sa.Text, nullable=False),
        sa.Column("peer_port", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("route_set", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("local_cseq", sa.BigInteger, nullable=False),
        sa.Column("remote_cseq", sa.BigInteger, nullable=False),
        sa.Column("flow_token", sa.Text, nullable=False),
        sa.Index("ix_subscriptions_presentity", "presentity"),
        sa.Index("ix_subscriptions_owner", "owner"),
        sa.Index("ix_subscriptions_expires_at", "expires_at"),
    )
    sa.Table(
        "publications",
        md,
        sa.Column("etag", sa.Text, primary_key=True),
        sa.Column("presentity", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("modified_at", sa.Double, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Index("ix_publications_presentity", "presentity"),
        sa.Index("ix_publications_expires_at", "expires_at"),
    )
    md.create_all(conn)


def _createBilling(conn: Connection) -> None:
    """
    Version 1 -> 2: accounts, watch policies and the change log of billing.

    Frozen: this is what version 2 added, whatever L{METADATA} says now.
    """
    md = sa.MetaData()
    sa.Table(
        "accounts",
        md,
        sa.Column("aor", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("realm", sa.Text, nullable=False),
        sa.Column("ha1_md5", sa.Text, nullable=False),
        sa.Column("ha1_sha256", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("presence_enabled", sa.Boolean, nullable=False),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Index("ix_accounts_customer", "customer"),
    )
    sa.Table(
        "watch_policies",
        md,
        sa.Column("presentity", sa.Text, primary_key=True),
        sa.Column("pattern", sa.Text, primary_key=True),
        sa.Column("action", sa.Text, nullable=False),
    )
    sa.Table(
        "billing_changes",
        md,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("aor", sa.Text, nullable=False),
        sa.Column("changed_at", sa.Double, nullable=False),
        sa.Index("ix_billing_changes_changed_at", "changed_at"),
    )
    md.create_all(conn)


def _createBindings(conn: Connection) -> None:
    """
    Version 2 -> 3: the registrar's bindings.

    Frozen: this is what version 3 added, whatever L{METADATA} says now.
    """
    md = sa.MetaData()
    sa.Table(
        "bindings",
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("aor", sa.Text, nullable=False),
        sa.Column("contact", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("registered_at", sa.Double, nullable=False),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("cseq", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("transport", sa.Text, nullable=False),
        sa.Column("peer_host", sa.Text, nullable=False),
        sa.Column("peer_port", sa.Integer, nullable=False),
        sa.Column("flow_token", sa.Text, nullable=False),
        sa.Column("instance", sa.Text, nullable=False),
        sa.Column("reg_id", sa.Integer, nullable=False),
        sa.Column("q", sa.Double, nullable=True),
        sa.Index("ix_bindings_aor", "aor"),
        sa.Index("ix_bindings_owner", "owner"),
        sa.Index("ix_bindings_expires_at", "expires_at"),
    )
    md.create_all(conn)


def _createLeases(conn: Connection) -> None:
    """
    Version 3 -> 4: the managers' leases, which fence a manager cut off
    from its peers.

    Frozen: this is what version 4 added, whatever L{METADATA} says now.
    """
    md = sa.MetaData()
    sa.Table(
        "manager_leases",
        md,
        sa.Column("node", sa.Text, primary_key=True),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
    )
    md.create_all(conn)


def _addEventPackages(conn: Connection) -> None:
    """
    Version 4 -> 5: event packages (L{presence.interfaces.IEventPackage}).
    A publication names its package (every existing one is presence's),
    and a subscription keeps its package's state (none so far).

    Frozen: this is what version 5 added, whatever L{METADATA} says now.
    """
    conn.execute(sa.text("ALTER TABLE publications ADD COLUMN event TEXT NOT NULL DEFAULT 'presence'"))
    conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN package_state TEXT NOT NULL DEFAULT ''"))


UpgradeStep = Callable[[Connection], None]

#: C{UPGRADE_STEPS[n]} upgrades a version-C{n} database to version C{n+1}.
UPGRADE_STEPS: List[UpgradeStep] = [
    _createCore,
    _createBilling,
    _createBindings,
    _createLeases,
    _addEventPackages,
]

#: The schema version this code writes and reads.
CURRENT_VERSION = len(UPGRADE_STEPS)


def getSchemaVersion(conn: Connection) -> int:
    """
    Read the schema version; 0 for a database we have never touched.

    @raise StoreError: the version table does not hold exactly one row.
    """
    if not sa.inspect(conn).has_table(schemaVersionTable.name):
        return 0
    rows = conn.execute(sa.select(schemaVersionTable.c.version)).scalars().all()
    if len(rows) != 1:
        raise StoreError("schema_version holds %d rows, expected 1" % (len(rows),))
    return int(rows[0])


def upgrade(
    conn: Connection,
    steps: Optional[Sequence[UpgradeStep]] = None,
    target: Optional[int] = None,
) -> int:
    """
    Bring the database up to C{target}, running the missing steps in order.

    Call inside a transaction (C{with conn.begin(): upgrade(conn)}): on
    PostgreSQL and SQLite the DDL is transactional, so a failing step leaves
    the database at its old version.  Concurrent upgraders are serialised:
    by an advisory lock on PostgreSQL (per schema), by C{BEGIN IMMEDIATE}
    (which L{presence.store.sql.SQLStore} uses for writes) on SQLite.

    @param steps: the upgrade history; L{UPGRADE_STEPS} by default (tests
        pass a longer list to exercise a future step).
    @param target: the version wanted; the last one by default.
    @return: the version of the database afterwards.
    @raise SchemaTooNew: the database is newer than C{steps} knows.
    @raise ValueError: C{target} is older than the database (no downgrades).
    """
    if steps is None:
        steps = UPGRADE_STEPS
    if target is None:
        target = len(steps)
    if not 0 <= target <= len(steps):
        raise ValueError("target version %d out of range 0..%d" % (target, len(steps)))
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock("
                "hashtext('presence.schema:' || coalesce(current_schema(), '')))"
            )
        )
    current = getSchemaVersion(conn)
    if current > len(steps):
        raise SchemaTooNew(
            "database schema version %d is newer than this code (%d)" % (current, len(steps))
        )
    if target < current:
        raise ValueError("cannot downgrade schema from %d to %d" % (current, target))
    if not sa.inspect(conn).has_table(schemaVersionTable.name):
        schemaVersionTable.create(conn)
        conn.execute(sa.insert(schemaVersionTable).values(version=0))
    for version in range(current, target):
        steps[version](conn)
        conn.execute(sa.update(schemaVersionTable).values(version=version + 1))
    return max(current, target)
