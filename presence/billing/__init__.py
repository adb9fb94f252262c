"""
Billing: accounts and authorization.

Is the account known and active, may it use presence, what are its digest
credentials, and may watcher W see presentity P?  The subscription manager
asks an L{presence.interfaces.IAuthorizer}; the embedded implementation
(L{presence.billing.authorizer.EmbeddedAuthorizer}) holds every account and
watch rule of the SQL store in memory, loaded and kept current on the
store's reader threads.  C{presence-admin}
provisions accounts and policies with the same SQL functions
(L{presence.billing.db}), synchronously.
"""

from __future__ import annotations

from presence.billing.records import (
    ACTIONS,
    ACTIVE,
    ALLOW,
    ASK,
    BLOCK,
    BLOCKED,
    AccountInfo,
    BillingError,
    DuplicateAccount,
    UnknownAccount,
    parseAOR,
    parsePattern,
)

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "ALLOW",
    "ASK",
    "BLOCK",
    "BLOCKED",
    "AccountInfo",
    "BillingError",
    "DuplicateAccount",
    "UnknownAccount",
    "parseAOR",
    "parsePattern",
]
