"""
Durable storage for the subscription manager and the registrar:
subscriptions, publications and registration bindings.

L{SQLStore} runs SQLAlchemy Core on its own thread pool with group commit
(SQLite embedded, PostgreSQL for a cluster); L{MemoryStore} keeps the same
Deferred contract in memory for unit tests.  Both provide
L{presence.interfaces.IStore} and exchange only the immutable records of
L{presence.store.records}.
"""

from __future__ import annotations

from presence.store.errors import (
    DuplicateRecord,
    NoSuchRecord,
    SchemaTooNew,
    StoreError,
    StoreNotRunning,
)
from presence.store.memory import MemoryStore
from presence.store.records import BindingRecord, PublicationRecord, SubscriptionRecord
from presence.store.schema import CURRENT_VERSION
from presence.store.service import StoreService
from presence.store.sql import SQLStore

__all__ = [
    "BindingRecord",
    "CURRENT_VERSION",
    "DuplicateRecord",
    "MemoryStore",
    "NoSuchRecord",
    "PublicationRecord",
    "SQLStore",
    "SchemaTooNew",
    "StoreError",
    "StoreNotRunning",
    "StoreService",
    "SubscriptionRecord",
]
