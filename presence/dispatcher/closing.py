"""
A dispatcher's part in ending the registrations of a connection that
closes: it remembers which managers it relayed REGISTERs of each user
agent's TCP, TLS, WS or WSS connection to, and when that connection
closes it sends those managers a signed notice
(L{presence.registrar.flownotice}), so that watchers see the user go
offline at once rather than when the binding expires.

Only the managers that got a REGISTER of the connection are told (a
manager holds only the bindings it registered; they are not adopted),
and the notices of the connections that close in one reactor turn (a
network drop, or the dispatcher stopping) are sent together, one request per manager for up to
L{MAX_FLOWS} of them.  A manager that is unreachable then, or does not
answer 200, keeps those bindings until they expire: the loss is logged
and counted.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Set

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from presence.dispatcher.health import ManagerState
from presence.registrar.flownotice import MAX_FLOWS, NoticeSigner
from presence.sip.message import Response


class ClosedFlowNotifier:
    """
    Follows the user agents' connections that carried REGISTERs, and
    tells their managers when one closes.

    @ivar counters: C{notices} sent, C{flows} named in them, C{lost}
        (flows whose manager could not be told).
    """

    log = Logger()

    def __init__(
        self,
        core: Any,
        clock: Any,
        secret: bytes,
        boot: str,
        managerNamed: Callable[[str], Optional[ManagerState]],
    ) -> None:
        """
        @param core: the dispatcher's L{SIPCore}.
        @param clock: an C{IReactorTime}.
        @param secret: the cluster's C{[dispatcher] secret}.
        @param boot: the dispatcher's boot id: a flow is named
            C{boot.token}, as in its routes.
        @param managerNamed: the state of a manager by name, or L{None}
            once it is no longer configured.
        """
        self.core = core
        self.clock = clock
        self.signer = NoticeSigner(secret)
        self.boot = boot
        self.managerNamed = managerNamed
        self.counters = {"notices": 0, "flows": 0, "lost": 0}
        self._registered: Dict[str, Set[str]] = {}
        self._pending: Dict[str, List[str]] = {}
        self._flush: Optional[IDelayedCall] = None

    def start(self) -> None:
        self.core.flows.addCloseListener(self.flowClosed)

    def stop(self) -> None:
        """
        Stop following the connections.  Stopping the dispatcher closes
        every one of them: their managers are told now, while the links to
        them are still open, and not when the bindings expire.
        """
        self.core.flows.removeCloseListener(self.flowClosed)
        for token in list(self._registered):
            self.flowClosed(token)
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._send()

    def registered(self, token: str, manager: str) -> None:
        """
        A REGISTER that came over the connection C{token} was relayed to
        C{manager}.
        """
        self._registered.setdefault(token, set()).add(manager)

    def flowClosed(self, token: str) -> None:
        """
        The flow table's close listener.
        """
        managers = self._registered.pop(token, None)
        if not managers:
            return
        name = self.boot + "." + token
        for manager in managers:
            self._pending.setdefault(manager, []).append(name)
        if self._flush is None:
            self._flush = self.clock.callLater(0, self._send)

    def _send(self) -> None:
        self._flush = None
        pending, self._pending = self._pending, {}
        for name, flows in sorted(pending.items()):
            manager = self.managerNamed(name)
            target = manager.target() if manager is not None else None
            if manager is None or target is None:
                self._lost(name, flows, "no connection to it")
                continue
            spec = manager.spec
            host = "[%s]" % (spec.host,) if ":" in spec.host else spec.host
            uri = "sip:%s:%d" % (host, spec.port)
            for start in range(0, len(flows), MAX_FLOWS):
                chunk = flows[start : start + MAX_FLOWS]
                request = self.signer.notice(uri, chunk)
                callId = os.urandom(8).hex()
                request.setHeader("From", "<sip:dispatcher@%s>;tag=%s" % (self.core.localHost(target), callId[:8]))
                request.setHeader("To", "<%s>" % (uri,))
                request.setHeader("Call-ID", callId)
                request.setHeader("CSeq", "1 " + request.method)
                self.counters["notices"] += 1
                self.counters["flows"] += len(chunk)
                tx = self.core.sendRequest(request, target)
                tx.deferred.addCallback(self._answered, name, chunk)

    def _answered(self, response: Response, name: str, flows: List[str]) -> None:
        if response.code != 200:
            self._lost(name, flows, "%d %s" % (response.code, response.reason))

    def _lost(self, name: str, flows: List[str], why: str) -> None:
        self.counters["lost"] += len(flows)
        self.log.warn(
            "Manager {name} was not told that {count} connections closed ({why}): "
            "their bindings last until they expire",
            name=name,
            count=len(flows),
            why=why,
        )
