"""
The C{dialog} event package (RFC 4235): busy lamp fields.

Desk phones (Yealink, Snom, Polycom, Grandstream) SUBSCRIBE with C{Event:
dialog} to each colleague and light a lamp while that colleague's phone
rings or talks; a ringing lamp offers call pickup, for which the phone
needs the dialog's call-id, tags and C{<local>}/C{<remote>} targets.
Phones publish their own calls, and a proxy publishes every call it
routes (Kamailio's pua_dialoginfo: one document per call and party); the
watchers of a resource get one C{dialog-info} document composed from all
of them by L{presence.dialoginfo}.

Per subscription the package keeps, in C{packageState}, the C{version}
of the next NOTIFY (RFC 4235 section 4.1: 0 first, then one more per
NOTIFY, also across a restart and an adoption, because the state is
stored with the subscription) and the C{call-id}/C{from-tag}/C{to-tag}
of a SUBSCRIBE that asked for one dialog only (section 3.2).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from zope.interface import implementer

from presence.dialoginfo import (
    CONTENT_TYPE,
    DialogInfoDocument,
    composeDialogInfo,
    matching,
    parseDialogInfo,
    renderDialogInfo,
    withVersion,
)
from presence.interfaces import IEventPackage

# The SUBSCRIBE Event parameters that select one dialog (RFC 4235 3.2).
FILTERS = ("call-id", "from-tag", "to-tag")


@implementer(IEventPackage)
class DialogPackage:
    """
    Dialog state for busy lamp fields.

    @ivar oneDialog: watchers see only the most relevant dialog (early,
        then confirmed, proceeding, trying, terminated), because some
        phones show only the first one and a ringing call must be the one
        they offer to pick up ([dialog] one_dialog).
    @ivar idle: a resource without dialogs is shown with one
        C{terminated} dummy dialog, because some phones keep the lamp in
        its last state on a document without dialogs ([dialog]
        idle_dialog).
    """

    event = "dialog"
    bodyTypes = (CONTENT_TYPE,)
    publishTypes = (CONTENT_TYPE,)
    ownerOnly = False

    def __init__(self, oneDialog: bool = False, idle: bool = False) -> None:
        self.oneDialog = oneDialog
        self.idle = idle

    def parse(self, body: bytes, resource: str) -> DialogInfoDocument:
        return parseDialogInfo(body, resource)

    def compose(self, resource: str, documents: List[DialogInfoDocument]) -> bytes:
        return composeDialogInfo(resource, documents, self.oneDialog, self.idle)

    def withoutState(self, resource: str, registered: Optional[str]) -> bytes:
        return renderDialogInfo(resource, (), self.idle)

    def initialState(self, params: Mapping[str, str]) -> str:
        """
        The package state of a new subscription from its C{Event} header
        parameters: the dialog it asks for, if it names one.
        """
        wanted = {name: params[name] for name in FILTERS if params.get(name)}
        if "call-id" not in wanted:
            return ""
        return _dump(wanted)

    def render(self, subscription: Any, body: bytes) -> bytes:
        state = _load(subscription.packageState)
        version = state.pop("version", 0)
        if "call-id" in state:
            body = self._only(body, state)
        state["version"] = version + 1
        subscription.packageState = _dump(state)
        return withVersion(body, version)

    def _only(self, body: bytes, wanted: Dict[str, Any]) -> bytes:
        """
        The composed document cut down to the dialog a subscription asked
        for (the document is ours: parsing it again is safe).
        """
        document = parseDialogInfo(body)
        dialogs = matching(document.dialogs, wanted["call-id"], wanted.get("from-tag"), wanted.get("to-tag"))
        return renderDialogInfo(document.entity, dialogs, self.idle)


def _load(text: str) -> Dict[str, Any]:
    if not text:
        return {}
    try:
        state = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("version", 0), int):
        return {}
    return state


def _dump(state: Dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"))
