"""
The SIP event packages the subscription manager serves, each an
L{presence.interfaces.IEventPackage}, and the registry the manager is
given (L{PackageRegistry}): adding a package is adding it here, never
touching the manager's router (see the interface for how).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Iterator, List, Optional

from zope.interface import implementer
from zope.interface.verify import verifyObject

from presence.interfaces import IEventPackage, IPackageRegistry
from presence.packages.presence import PresencePackage


@implementer(IPackageRegistry)
class PackageRegistry:
    """
    Event packages by name, in the order given (the order of
    C{Allow-Events}).
    """

    def __init__(self, packages: Iterable[IEventPackage]) -> None:
        """
        @raise ValueError: two packages of one name, or none at all.
        @raise zope.interface.exceptions.Invalid: one does not provide
            L{IEventPackage}.
        """
        self._byName: Dict[str, IEventPackage] = {}
        for package in packages:
            verifyObject(IEventPackage, package)
            if package.event in self._byName:
                raise ValueError("two event packages named %r" % (package.event,))
            self._byName[package.event] = package
        if not self._byName:
            raise ValueError("a subscription manager needs at least one event package")

    def get(self, event: str) -> Optional[IEventPackage]:
        return self._byName.get(event)

    def names(self) -> List[str]:
        return list(self._byName)

    def __iter__(self) -> Iterator[IEventPackage]:
        return iter(list(self._byName.values()))

    def bodyTypes(self) -> List[str]:
        """
        Every package's body types, each once, for the core's C{Accept}.
        """
        types: Dict[str, None] = {}
        for package in self._byName.values():
            for contentType in package.bodyTypes:
                types[contentType] = None
        return list(types)


def defaultPackages(config: Any = None) -> PackageRegistry:
    """
    The packages a manager serves unless told otherwise: presence, dialog
    (with the options of C{config}'s [dialog] section), message-summary and
    presence.winfo.
    """
    from presence.packages.dialog import DialogPackage
    from presence.packages.messagesummary import MessageSummaryPackage
    from presence.packages.winfo import WatcherInfoPackage

    return PackageRegistry(
        [
            PresencePackage(),
            DialogPackage(
                oneDialog=getattr(config, "dialogOneDialog", False),
                idle=getattr(config, "dialogIdle", False),
            ),
            MessageSummaryPackage(),
            WatcherInfoPackage(),
        ]
    )


def acceptable(package: IEventPackage, accepts: List[str]) -> bool:
    """
    Whether a SUBSCRIBE's C{Accept} media ranges (lower case, parameters
    stripped; empty when it has no C{Accept}) admit one of C{package}'s
    body types.
    """
    if not accepts:
        return True
    for contentType in package.bodyTypes:
        if contentType in accepts or contentType.split("/")[0] + "/*" in accepts:
            return True
    return "*/*" in accepts
