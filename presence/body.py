"""
The one error every event-package body parser raises.

PIDF, dialog-info, message-summary and watcherinfo bodies all come from the
network, and the manager does the same with every refusal: answer the
PUBLISH with 400 and the reason as the reason phrase. So there is one base
class, and its reason is forced to short printable ASCII with no CR or LF,
whatever text went into it.
"""

from __future__ import annotations

import re

_REASON_MAX = 120
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class BodyError(ValueError):
    """
    A body was refused: malformed, hostile, or not valid for its type.

    @cvar default: the reason used when the given one is empty.
    @ivar reason: a short, human-readable, header-safe explanation.
    """

    default = "invalid body"

    def __init__(self, reason: str) -> None:
        reason = _UNPRINTABLE.sub("?", str(reason))[:_REASON_MAX].strip()
        reason = reason or self.default
        super().__init__(reason)
        self.reason = reason
