"""
The change listeners every authorizer keeps (L{IAuthorizer.addChangeListener}).

Why a module: the embedded and the remote authorizer tell the
subscription manager about billing changes the same way, and one listener
that raises must not keep the others from hearing.
"""

from __future__ import annotations

from typing import Callable, FrozenSet, List, Optional

from twisted.logger import Logger

#: Called with the AORs whose accounts or rules changed, or L{None} when
#: anything may have.
ChangeListener = Callable[[Optional[FrozenSet[str]]], None]


class ChangeListeners:
    """
    A mixin holding an authorizer's change listeners; the authorizer sets
    C{self._listeners = []} when it is made.
    """

    log = Logger()

    _listeners: List[ChangeListener]

    def _tell(self, aors: Optional[FrozenSet[str]]) -> None:
        """
        Tell every listener that C{aors} (or anything, for L{None}) changed.
        """
        for listener in list(self._listeners):
            try:
                listener(aors)
            except Exception:
                self.log.failure("Billing change listener failed")

    def addChangeListener(self, listener: ChangeListener) -> None:
        """
        See L{IAuthorizer.addChangeListener}.
        """
        if listener not in self._listeners:
            self._listeners.append(listener)

    def removeChangeListener(self, listener: ChangeListener) -> None:
        """
        See L{IAuthorizer.removeChangeListener}.
        """
        if listener in self._listeners:
            self._listeners.remove(listener)
