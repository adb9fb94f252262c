"""
What every service of the C{twistd presence} tree does alike: keep its
configuration apart from what it builds at run time.

twistd pickles the whole service tree into a C{.tap} file (C{presence-admin
mktap}, and the shutdown C{.tap} it writes from the stopped tree on
SIGTERM), to run it later, maybe on another host.  Only configuration
belongs there: what a service builds in C{startService} (the reactor,
listening ports, thread pools, connections, Deferreds, the parts they
drive) cannot be pickled, or would be stale once loaded.  So each service
gives those attributes their values before start in one place,
L{RuntimeService._resetRuntime}; the pickle leaves out every attribute that
method sets, and a loaded copy starts from those values.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Optional

from twisted.application import service


class RuntimeService(service.Service):
    """
    A service whose pickled form is its configuration only.

    @ivar _reactor: the reactor given, or L{None} for the global one.  It is
        never pickled: a loaded copy runs on the reactor twistd installed.
    """

    _reactor: Any = None

    def __init__(self, reactor: Optional[Any] = None) -> None:
        """
        @param reactor: the reactor to run on (tests give a fake one), or
            L{None} for the global reactor.
        """
        self._reactor = reactor
        self._resetRuntime()

    def _resetRuntime(self) -> None:
        """
        Give every attribute built at run time its value before start: at
        construction, and when a pickled copy is loaded.  Only assign
        attributes here: what it sets is what the pickle leaves out
        (L{_runtimeNames}).
        """

    @classmethod
    def _runtimeNames(cls) -> FrozenSet[str]:
        """
        The attributes L{_resetRuntime} sets, found by running it on a
        blank instance once per class.
        """
        names = cls.__dict__.get("_runtimeNamesFound")
        if names is None:
            blank = cls.__new__(cls)
            blank._resetRuntime()
            names = frozenset(vars(blank)) | {"_reactor"}
            setattr(cls, "_runtimeNamesFound", names)
        return names

    @property
    def reactor(self) -> Any:
        """
        The reactor given, or else the global one, imported only when first
        used: importing it installs the default reactor, and building the
        tree (C{mktap}, C{makeService}) must not choose the reactor twistd
        installs later.
        """
        if self._reactor is None:
            from twisted.internet import reactor

            return reactor
        return self._reactor

    def __getstate__(self) -> Dict[str, Any]:
        """
        Configuration only (and, as C{Service} does, no C{running}).
        """
        state = service.Service.__getstate__(self)
        for name in self._runtimeNames():
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """
        Restore configuration; the runtime starts as before a first start.
        """
        self.__dict__.update(state)
        self._resetRuntime()
