"""
The registrar (RFC 3261 §10.3, RFC 5626 §6): REGISTER at a subscription
manager, bindings in memory and in the store, and the registration state
that gives presence to an AOR that publishes none.
"""

from __future__ import annotations

from presence.registrar.binding import ContactError, ContactSpec, bindingId, bindingKey, parseContacts
from presence.registrar.registrar import Registrar

__all__ = ["ContactError", "ContactSpec", "Registrar", "bindingId", "bindingKey", "parseContacts"]
