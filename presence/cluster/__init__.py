"""
The cluster of subscription managers (C{--role=manager}, several
processes): Perspective Broker links between them that replicate
publications, resynchronise a manager that (re)joins, and let the
survivors adopt a dead manager's subscriptions from the shared store.

L{group} holds the logic (no I/O), L{lease} each manager's lease in the
database that fences a manager cut off from its peers, L{link} the PB
transport, L{service} the service that wires them into C{twistd
presence}.
"""

from __future__ import annotations
