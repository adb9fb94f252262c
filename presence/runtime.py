"""
What every service of the C{twistd presence} tree does alike: keep its
configuration apart from what it builds at run time.

twistd pickles the whole service tree into a C{.tap} file (C{presence-admin
mktap}, and the shutdown C{.tap} it writes from the stopped tree on
SIGTERM), to run it later, maybe on another host.  Only configuration
belongs there: what a service builds in C{startService} (the reactor,
listening ports, thread pools, connections, Deferreds, the parts they
drive) cannot be pickled, or would be stale once loaded.  So each service
names those attributes once, in L{RuntimeService.runtimeAttributes}, and
gives them their values before start in L{RuntimeService._resetRuntime};
the pickle leaves them out and a loaded copy starts from those values.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from twisted.application import service


class RuntimeService(service.Service):
    """
    A service whose pickled form is its configuration only.

    @cvar runtimeAttributes: the instance attributes built at run time,
        never pickled; L{_resetRuntime} gives each its value before start.
    @ivar _reactor: the reactor given, or L{None} for the global one.  It is
        never pickled: a loaded copy runs on the reactor twistd installed.
    """

    runtimeAttributes: Tuple[str, ...] = ()
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
        Give every attribute of L{runtimeAttributes} its value before
        start: at construction, and when a pickled copy is loaded.
        """

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
        for name in ("_reactor",) + tuple(self.runtimeAttributes):
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """
        Restore configuration; the runtime starts as before a first start.
        """
        self.__dict__.update(state)
        self._resetRuntime()
