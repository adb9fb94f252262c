"""
The dialog event package's body (RFC 4235, C{application/dialog-info+xml}):
parse and validate published documents safely, compose a resource's
publications into one document for its watchers, give each subscription
its own version.

Pure functions on bytes and value objects, no I/O and no reactor, like
L{presence.pidf}.
"""

from __future__ import annotations

from presence.dialoginfo.compose import (
    IDLE_DIALOG,
    IDLE_DIALOG_ID,
    composeDialogInfo,
    composeDialogs,
    matching,
    mostRelevant,
    renderDialogInfo,
    withVersion,
)
from presence.dialoginfo.document import (
    CONFIRMED,
    CONTENT_TYPE,
    DIALOG_INFO_NS,
    EARLY,
    PROCEEDING,
    RELEVANCE,
    TERMINATED,
    TRYING,
    Dialog,
    DialogInfoDocument,
    DialogInfoError,
)
from presence.dialoginfo.parser import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_SIZE,
    parseDialogInfo,
)

__all__ = [
    "CONFIRMED",
    "CONTENT_TYPE",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_SIZE",
    "DIALOG_INFO_NS",
    "EARLY",
    "IDLE_DIALOG",
    "IDLE_DIALOG_ID",
    "PROCEEDING",
    "RELEVANCE",
    "TERMINATED",
    "TRYING",
    "Dialog",
    "DialogInfoDocument",
    "DialogInfoError",
    "composeDialogInfo",
    "composeDialogs",
    "matching",
    "mostRelevant",
    "parseDialogInfo",
    "renderDialogInfo",
    "withVersion",
]
