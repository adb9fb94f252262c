"""
PIDF (RFC 3863) with RPID (RFC 4480) and the data model (RFC 4479): parse
and validate published bodies safely, compose a presentity's publications
into one document, render it deterministically.

Pure functions on bytes and value objects, no I/O and no reactor, so the
manager can call them on the reactor thread for every PUBLISH.
"""

from __future__ import annotations

from presence.pidf.compose import (
    DEFAULT_TUPLE_ID,
    basicDocument,
    closedDocument,
    composeDocuments,
    composePidf,
    openDocument,
    renderPidf,
)
from presence.pidf.document import (
    DM_NS,
    PIDF_NS,
    RPID_NS,
    Fragment,
    PidfDocument,
    PidfError,
)
from presence.pidf.entity import entityKey, sameEntity
from presence.pidf.parser import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_SIZE,
    parsePidf,
)

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TUPLE_ID",
    "DM_NS",
    "PIDF_NS",
    "RPID_NS",
    "Fragment",
    "PidfDocument",
    "PidfError",
    "basicDocument",
    "closedDocument",
    "composeDocuments",
    "composePidf",
    "entityKey",
    "openDocument",
    "parsePidf",
    "renderPidf",
    "sameEntity",
]
