"""
Exceptions a store's Deferreds fail with.

Every L{presence.interfaces.IStore} implementation raises these same types,
so the manager handles a duplicate or a missing row without knowing whether
SQLite, PostgreSQL or memory is behind the interface.
"""

from __future__ import annotations


class StoreError(Exception):
    """
    Base class of the store's own errors.
    """


class StoreNotRunning(StoreError):
    """
    The store was asked to read or write while not started, or after
    C{stop()} began.
    """


class DuplicateRecord(StoreError):
    """
    A record with the same key already exists (e.g. a subscription id).
    """


class NoSuchRecord(StoreError):
    """
    The record to update does not exist.
    """


class SchemaTooNew(StoreError):
    """
    The database schema is newer than this code knows; refuse to touch it
    rather than corrupt data written by a newer release.
    """
