"""
The C{twistd presence} command: its options and the service tree they make.

This is the one place that wires the parts together.  Options are read
here, merged over the INI file, and checked before anything starts, so a
mistake is a one-line message rather than a traceback.
"""

from __future__ import annotations

from typing import Any, List

from twisted.application import service
from twisted.python import usage

from presence.config import Config, ConfigError, loadConfig
from presence.manager.service import ManagerService
from presence.sip.listen import ListenError, ListenSpec
from presence.sip.service import SIPService
from presence.store import SQLStore, StoreService

DEFAULT_CONFIG = "etc/presence.ini"


class Options(usage.Options):
    """
    Options of C{twistd presence}; each overrides the configuration file.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the SIP presence server.  Settings come from the INI file named by "
        "--config (default %s, if it exists); the options below override it." % (DEFAULT_CONFIG,)
    )

    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "INI configuration file."],
        ["database", "d", None, "Database URL (default sqlite:///presence.sqlite)."],
        ["advertise", None, None, "Host or address to put in our Via and Contact headers."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["listen"] = []
        self["domain"] = []
        self.configGiven = False

    def opt_config(self, path: str) -> None:
        """
        INI configuration file.
        """
        self["config"] = path
        self.configGiven = True

    opt_c = opt_config

    def opt_listen(self, spec: str) -> None:
        """
        Listen on this address; repeatable.  Forms: udp:PORT[:interface=ADDR],
        tcp:PORT[:interface=ADDR], tls:PORT:privateKey=KEY.pem:certKey=CERT.pem.
        Default: udp:5060 and tcp:5060.
        """
        try:
            self["listen"].append(ListenSpec.fromString(spec))
        except ListenError as e:
            raise usage.UsageError("--listen: %s" % (e,))

    opt_l = opt_listen

    def opt_domain(self, domain: str) -> None:
        """
        A SIP domain this server serves; repeatable.
        """
        if not domain or any(c in domain for c in " @:;<>"):
            raise usage.UsageError("--domain: %r is not a domain name" % (domain,))
        self["domain"].append(domain.lower())

    def postOptions(self) -> None:
        try:
            config = loadConfig(self["config"], self.configGiven)
        except ConfigError as e:
            raise usage.UsageError(str(e))
        overrides: dict = {}
        if self["listen"]:
            overrides["listen"] = tuple(self["listen"])
        if self["domain"]:
            overrides["domains"] = tuple(self["domain"])
        if self["database"]:
            overrides["database"] = self["database"]
        if self["advertise"]:
            overrides["advertise"] = self["advertise"]
        self.config = config.replace(**overrides)


def makeService(options: Any) -> service.IService:
    """
    Build the service tree for C{options}.  Children start in order and stop
    in reverse: the store first up and last down, so that the manager's last
    writes are flushed before it closes.
    """
    config: Config = options.config
    root = service.MultiService()
    store = StoreService(SQLStore(config.database))
    store.setName("store")
    store.setServiceParent(root)
    SIPService(config).setServiceParent(root)
    ManagerService(config).setServiceParent(root)
    return root


def servicesOf(root: service.IServiceCollection) -> List[service.IService]:
    """
    The direct children of C{root}, for the admin console and tests.
    """
    return list(root)
