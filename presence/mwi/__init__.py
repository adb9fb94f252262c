"""
Message waiting (RFC 3842): the C{application/simple-message-summary}
body that voicemail systems publish and phones show as a lamp and counts.

Pure functions on bytes and value objects, no I/O and no reactor.
"""

from __future__ import annotations

from presence.mwi.summary import (
    CONTENT_TYPE,
    DEFAULT_MAX_SIZE,
    MAX_COUNT,
    MESSAGE_CLASSES,
    MessageCounts,
    MessageSummary,
    MessageSummaryError,
    noMessages,
    parseMessageSummary,
    renderMessageSummary,
    summaryOf,
)

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_SIZE",
    "MAX_COUNT",
    "MESSAGE_CLASSES",
    "MessageCounts",
    "MessageSummary",
    "MessageSummaryError",
    "noMessages",
    "parseMessageSummary",
    "renderMessageSummary",
    "summaryOf",
]
