"""
The C{twistd presence} command: its options and the service tree they make.

This is the one place that wires the parts together.  Options are read
here, merged over the INI file, and checked before anything starts, so a
mistake is a one-line message rather than a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

from twisted.application import service
from twisted.python import usage

from presence.billing.service import BillingService, billingProblem
from presence.config import Config, ConfigError, loadConfig
from presence.manager.service import ManagerService
from presence.preflight import databaseProblem, problems
from presence.logs import JSONLogService
from presence.root import PresenceService
from presence.sip.listen import ListenError, ListenSpec
from presence.sip.service import SIPService
from presence.store import SQLStore, StoreService

DEFAULT_CONFIG = "etc/presence.ini"

# What one process runs: everything (the embedded default), the
# dispatching node alone (SIP and the dispatcher: no store, no manager),
# a subscription manager (store, SIP, billing and manager), or a billing
# node (store and billing served over PB to the managers whose
# [billing] remote names it).
ROLES = ("all", "dispatcher", "manager", "billing")


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
        ["role", None, "all", "What this process runs: all, dispatcher, manager or billing."],
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
        tcp:PORT[:interface=ADDR], tls:PORT:privateKey=KEY.pem:certKey=CERT.pem,
        ws:PORT[:interface=ADDR], wss:PORT:privateKey=KEY.pem:certKey=CERT.pem
        (SIP over WebSocket).  Default: udp:5060 and tcp:5060.
        """
        self["listen"].append(spec)

    opt_l = opt_listen

    def opt_domain(self, domain: str) -> None:
        """
        A SIP domain this server serves; repeatable.
        """
        self["domain"].append(domain)

    def opt_version(self) -> None:
        """
        Show the version of this server (and of Twisted and Python) and exit.
        """
        from presence.version import describe

        sys.stdout.write(describe() + "\n")
        raise SystemExit(0)

    def fail(self, message: str) -> None:
        """
        Stop with one line: twistd would print the whole usage text before a
        C{UsageError}, burying the one line that matters.
        """
        sys.stderr.write("twistd presence: %s\n" % (message,))
        raise SystemExit(1)

    def postOptions(self) -> None:
        try:
            config = loadConfig(self["config"], self.configGiven)
        except ConfigError as e:
            self.fail(str(e))
        overrides: dict = {}
        try:
            if self["listen"]:
                overrides["listen"] = tuple(ListenSpec.fromString(spec) for spec in self["listen"])
        except ListenError as e:
            self.fail("--listen: %s" % (e,))
        for domain in self["domain"]:
            if not domain or any(c in domain for c in " @:;<>"):
                self.fail("--domain: %r is not a domain name" % (domain,))
        if self["domain"]:
            overrides["domains"] = tuple(d.lower() for d in self["domain"])
        if self["database"]:
            overrides["database"] = self["database"]
        if self["advertise"]:
            overrides["advertise"] = self["advertise"]
        self.config = config.replace(**overrides)
        # Kept by the root: SIGHUP reads the file again under them.
        self.overrides = overrides
        if self["role"] not in ROLES:
            self.fail("--role: %r is not one of %s" % (self["role"], ", ".join(ROLES)))
        # What can be checked before the reactor runs (presence.preflight),
        # so a server that could never work stops at once with one line.
        found = problems(self.config, self["role"], database=False)
        if found:
            fromFile = self.configGiven or os.path.exists(self["config"])
            self.fail("%s: %s" % (self["config"], found[0]) if fromFile else found[0])
        if self["role"] == "dispatcher":
            # A dispatcher has no database to check.
            return
        problem = databaseProblem(self.config.database)
        if problem is not None:
            where = "--database" if self["database"] else "%s: [server] database" % (self["config"],)
            self.fail("%s = %r: %s" % (where, self.config.database, problem))


def makeService(options: Any) -> service.IService:
    """
    Build the service tree for C{options}.  Children start in order and stop
    in reverse: the store first up and last down, so that the manager's last
    writes are flushed before it closes.
    """
    config: Config = options.config
    path = options.get("config")
    root = PresenceService(
        config=config,
        configPath=os.path.abspath(path) if path else None,
        configGiven=getattr(options, "configGiven", False),
        overrides=getattr(options, "overrides", {}),
        role=options.get("role") or "all",
    )
    if config.logJsonFile:
        JSONLogService(config).setServiceParent(root)
    if options.get("role") == "dispatcher":
        from presence.dispatcher.service import DispatcherService

        SIPService(config, withDatabase=False).setServiceParent(root)
        DispatcherService(config).setServiceParent(root)
        _addWeb(root, config, options)
        _addAdmin(root, config, options)
        return root
    # Stopped by the tree, after the manager has issued the writes of the
    # requests it took (some wait for billing): not by its own trigger.
    store = StoreService(SQLStore(config.database, stopOnShutdown=False))
    store.setName("store")
    store.setServiceParent(root)
    if options.get("role") == "billing":
        # A billing node: the store for accounts, the embedded authorizer,
        # and the PB server the managers log in to; no SIP.
        from presence.billing.remote import BillingNodeService, billingNodeProblem

        for problem in (billingProblem(config), billingNodeProblem(config)):
            if problem is not None:
                options.fail(problem)
        BillingService(config).setServiceParent(root)
        BillingNodeService(config).setServiceParent(root)
        _addAdmin(root, config, options)
        return root
    SIPService(config).setServiceParent(root)
    # Billing before the manager: the manager waits for its authorizer.
    if config.billingRemote:
        # Accounts and decisions come from a billing node over PB.
        from presence.billing.remote import RemoteBillingService, remoteBillingProblem

        problem = remoteBillingProblem(config)
        if problem is not None:
            options.fail(problem)
        RemoteBillingService(config).setServiceParent(root)
    else:
        problem = billingProblem(config)
        if problem is not None:
            options.fail(problem)
        BillingService(config).setServiceParent(root)
    ManagerService(config).setServiceParent(root)
    if config.clusterPeers:
        # After the manager: the cluster joins once it serves.
        from presence.cluster.service import ClusterService, clusterProblem

        problem = clusterProblem(config)
        if problem is not None:
            options.fail(problem)
        ClusterService(config).setServiceParent(root)
    _addWeb(root, config, options)
    _addAdmin(root, config, options)
    return root


def _addWeb(root: service.MultiService, config: Config, options: Any) -> None:
    """
    The browser buddy list, off by default, in a process serving SIP to
    user agents; imported only when enabled.
    """
    if config.webEnabled:
        from presence.web.service import WebService, webProblem

        problem = webProblem(config)
        if problem is not None:
            options.fail(problem)
        WebService(config).setServiceParent(root)


def _addAdmin(root: service.MultiService, config: Config, options: Any) -> None:
    """
    The operator's windows, off by default; imported only when enabled.
    """
    if config.manholeEnabled:
        from presence.admin.manhole import ManholeService, manholeProblem

        problem = manholeProblem(config)
        if problem is not None:
            options.fail(problem)
        ManholeService(config).setServiceParent(root)
    if config.controlSocket:
        from presence.admin.control import ControlService, controlProblem

        problem = controlProblem(config)
        if problem is not None:
            options.fail(problem)
        ControlService(config, options.get("role") or "all").setServiceParent(root)
    if config.metricsEnabled:
        from presence.admin.metrics import MetricsService

        MetricsService(config).setServiceParent(root)


def servicesOf(root: service.IServiceCollection) -> List[service.IService]:
    """
    The direct children of C{root}, for the admin console and tests.
    """
    return list(root)
