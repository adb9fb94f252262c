"""
The dispatching node: a transaction-stateful SIP proxy (RFC 3261 §16) in
front of the subscription managers.

It sends each new SUBSCRIBE and PUBLISH to a live manager chosen by a
policy, keeps in-dialog requests on the manager that owns the dialog, and
relays the managers' NOTIFYs to the user agents over the flow their
subscription arrived on.  Which manager owns a dialog and which flow leads
to its watcher are written, signed, into the Record-Route this node puts in
the dialog's route set, so the node keeps no table that a restart could
lose.
"""

from __future__ import annotations

from presence.dispatcher.dispatcher import Dispatcher
from presence.dispatcher.managers import ManagerSpec, parseManagers
from presence.dispatcher.policy import POLICIES
from presence.dispatcher.route import RouteCodec, RouteError, RouteInfo
from presence.dispatcher.service import DispatcherService

__all__ = [
    "Dispatcher",
    "DispatcherService",
    "ManagerSpec",
    "parseManagers",
    "POLICIES",
    "RouteCodec",
    "RouteError",
    "RouteInfo",
]
