"""
The managers of a cluster, as C{[cluster] peers} names them::

    peers = m1=tcp:10.0.0.3:7400 m2=tcp:10.0.0.4:7400 m3=tls:10.0.0.5:7400:trustRoots=/etc/presence/ca

Each entry is a node name (the C{[manager] node} of that manager, which
is also the name the dispatcher gives it) and a Twisted client endpoint
description.  The same line may go on every manager: a manager skips its
own name.
"""

from __future__ import annotations

import re
from typing import Tuple

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z").match


class PeerSpec:
    """
    One manager of the cluster: its name and how to reach its PB listener.

    @ivar name: the node name.
    @ivar endpoint: a Twisted client endpoint description.
    """

    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint

    @classmethod
    def fromString(cls, text: str) -> PeerSpec:
        """
        Parse C{NAME=ENDPOINT}.

        @raise ValueError: with a one-line reason.
        """
        from twisted.internet.endpoints import clientFromString

        name, eq, endpoint = text.partition("=")
        if not eq or _NAME(name) is None:
            raise ValueError("%r: expected NAME=tcp:HOST:PORT (NAME of letters, digits, '_.-')" % (text,))
        try:
            # The reactor is only stored by the endpoint, never used here.
            clientFromString(None, endpoint)
        except Exception as e:
            raise ValueError(
                "%r: not a client endpoint: %s" % (text, " ".join(str(e).split()) or type(e).__name__)
            )
        return cls(name, endpoint)

    def __str__(self) -> str:
        return "%s=%s" % (self.name, self.endpoint)

    def __repr__(self) -> str:
        return "PeerSpec(%r)" % (str(self),)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerSpec):
            return NotImplemented
        return (self.name, self.endpoint) == (other.name, other.endpoint)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash((self.name, self.endpoint))


def parsePeers(text: str) -> Tuple[PeerSpec, ...]:
    """
    Parse the C{peers} value: entries separated by white space.

    @raise ValueError: a bad entry, or a name given twice.
    """
    specs = tuple(PeerSpec.fromString(item) for item in text.split())
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise ValueError("%s is named twice" % (name,))
    return specs
