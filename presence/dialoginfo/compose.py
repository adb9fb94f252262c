"""
Composition and rendering of dialog-info documents for watchers (RFC 4235).

A resource may have several live publications: a desk phone publishing
its own calls, and a proxy (Kamailio's pua_dialoginfo) publishing one
document per call, each with its own entity tag. Watchers get one
C{dialog-info} document, C{state="full"}, whose C{entity} is the watched
AOR, built from all of them:

  - dialogs: the union by C{id}, the newest publication winning for the
    same id; order is newest publication first, document order within;
  - one-dialog mode (L{mostRelevant}): only the dialog a busy lamp should
    show -- early over confirmed over proceeding over trying over
    terminated, the newest winning a tie -- because several phones show
    only the first dialog, and a ringing call must be the one they offer
    to pick up;
  - idle mode: a resource with no dialog gets one C{terminated} dummy
    dialog (L{IDLE_DIALOG}), because some phones keep a lamp in its last
    state when the document has no dialog at all.

The document is rendered with C{version="0"}; L{withVersion} gives each
subscription its own counter (RFC 4235 section 4.1: starts at 0, one more
with every NOTIFY of that subscription) without composing again.
Rendering is deterministic, so "has the state changed?" is a comparison of
bytes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from presence.dialoginfo.document import (
    DIALOG_INFO_NS,
    RELEVANCE,
    TERMINATED,
    Dialog,
    DialogInfoDocument,
)
from presence.pidf.document import escapeAttribute

IDLE_DIALOG_ID = "idle"

IDLE_DIALOG = Dialog(
    IDLE_DIALOG_ID,
    TERMINATED,
    '<dialog direction="recipient" id="' + IDLE_DIALOG_ID + '"><state>terminated</state></dialog>',
    direction="recipient",
)

_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<dialog-info xmlns="'
    + DIALOG_INFO_NS
    + '" version="'
).encode("ascii")
_VERSION_ZERO = _HEAD + b'0"'


def composeDialogs(publications: Sequence[DialogInfoDocument]) -> Tuple[Dialog, ...]:
    """
    The union of the publications' dialogs by id.

    @param publications: the parsed publications, newest first.
    @return: the dialogs, newest publication first, document order within.
    """
    if len(publications) == 1:
        return publications[0].dialogs
    seen: Dict[str, None] = {}
    merged: List[Dialog] = []
    for publication in publications:
        for dialog in publication.dialogs:
            if dialog.id not in seen:
                seen[dialog.id] = None
                merged.append(dialog)
    return tuple(merged)


def mostRelevant(dialogs: Sequence[Dialog]) -> Tuple[Dialog, ...]:
    """
    The one dialog a one-dialog watcher is shown (none if there is none).

    @param dialogs: the composed dialogs, newest first.
    """
    best: Optional[Dialog] = None
    for dialog in dialogs:
        if best is None or RELEVANCE[dialog.state] > RELEVANCE[best.state]:
            best = dialog
    return () if best is None else (best,)


def matching(
    dialogs: Sequence[Dialog],
    callId: str,
    fromTag: Optional[str] = None,
    toTag: Optional[str] = None,
) -> Tuple[Dialog, ...]:
    """
    The dialogs a subscription with C{Event: dialog;call-id=...} asks
    for (RFC 4235 section 3.2): the same call-id, and each tag given
    among the dialog's local and remote tags, whichever side published it.
    """
    found = []
    for dialog in dialogs:
        if dialog.callId != callId:
            continue
        tags = (dialog.localTag, dialog.remoteTag)
        if fromTag is not None and fromTag not in tags:
            continue
        if toTag is not None and toTag not in tags:
            continue
        found.append(dialog)
    return tuple(found)


def renderDialogInfo(entity: str, dialogs: Sequence[Dialog], idle: bool = False) -> bytes:
    """
    Render a full-state document with C{version="0"}.

    @param entity: the watched AOR, written as the C{entity}.
    @param dialogs: the dialogs to list.
    @param idle: whether a document without dialogs gets L{IDLE_DIALOG}.
    @return: the UTF-8 body; equal arguments give equal bytes.
    """
    if idle and not dialogs:
        dialogs = (IDLE_DIALOG,)
    parts = [
        ' state="full" entity="',
        escapeAttribute(entity),
        '"',
    ]
    if dialogs:
        parts.append(">")
        parts.extend(dialog.text for dialog in dialogs)
        parts.append("</dialog-info>")
    else:
        parts.append("/>")
    return _VERSION_ZERO + "".join(parts).encode("utf-8")


def composeDialogInfo(
    entity: str,
    publications: Sequence[DialogInfoDocument],
    oneDialog: bool = False,
    idle: bool = False,
) -> bytes:
    """
    Compose live publications and render the result (version 0).

    @param entity: the watched AOR.
    @param publications: the parsed publications, newest first.
    @param oneDialog: show only L{mostRelevant} dialog.
    @param idle: show L{IDLE_DIALOG} when there is no dialog.
    """
    dialogs = composeDialogs(publications)
    if oneDialog:
        dialogs = mostRelevant(dialogs)
    return renderDialogInfo(entity, dialogs, idle)


def withVersion(body: bytes, version: int) -> bytes:
    """
    The same document with its C{version} attribute set, for one NOTIFY.

    @param body: a document from L{renderDialogInfo}.
    @param version: the subscription's counter, a non-negative integer.
    @raise ValueError: if C{body} was not rendered here.
    """
    if version < 0:
        raise ValueError("dialog-info version must be non-negative")
    if not body.startswith(_VERSION_ZERO):
        raise ValueError("not a document rendered by renderDialogInfo")
    if version == 0:
        return body
    return _HEAD + str(version).encode("ascii") + body[len(_VERSION_ZERO) - 1 :]

