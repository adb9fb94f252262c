"""
The service that joins a subscription manager to its cluster
(C{twistd presence --role=manager} with C{[cluster] peers}).

Once the manager has loaded its state from the store and serves, it
builds the L{PeerGroup}, listens for its peers' PB logins and opens a
L{PeerLink} to each of them.  The group keeps this manager's lease in
the store (C{[cluster] lease_time}, C{lease_interval}; see
L{presence.cluster.lease}) from the moment it is attached.  Only the configuration is pickled into a
C{.tap} file; the group, the listener and the links are built in
L{ClusterService.startService}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.cluster.group import PeerGroup
from presence.cluster.link import ClusterServerFactory, PeerLink, SecretError, loadSecrets
from presence.cluster.messages import MAX_BODY
from presence.config import Config
from presence.runtime import RuntimeService
from presence.startup import failStartup


def clusterProblem(config: Config) -> Optional[str]:
    """
    Why this manager could not join its cluster, in one line, or L{None}.
    Checked before the reactor runs.
    """
    if not config.clusterPeers:
        return None
    try:
        secrets = loadSecrets(config.clusterSecretFile)
    except SecretError as e:
        return str(e)
    names = [spec.name for spec in config.clusterPeers] + [config.node]
    missing = sorted(set(name for name in names if name not in secrets))
    if missing:
        return "[cluster] secret_file = %r has no secret for %s" % (config.clusterSecretFile, ", ".join(missing))
    if config.maxBodySize > MAX_BODY:
        return "[sip] max_body_size = %d: a publication over %d bytes cannot be replicated" % (
            config.maxBodySize, MAX_BODY,
        )
    return None


class ClusterService(RuntimeService):
    """
    Runs this manager's L{PeerGroup}, PB listener and links.

    @ivar group: the running group, or L{None}.
    @ivar links: peer name to its L{PeerLink}.
    """

    log = Logger()
    name = "cluster"

    def __init__(self, config: Config, reactor: Optional[Any] = None) -> None:
        self.config = config
        RuntimeService.__init__(self, reactor)

    def _resetRuntime(self) -> None:
        self.group: Optional[PeerGroup] = None
        self.links: Dict[str, PeerLink] = {}
        self.port: Any = None
        self._factory: Optional[ClusterServerFactory] = None
        self._starting: Optional[Deferred] = None

    def startService(self) -> None:
        service.Service.startService(self)
        assert self.parent is not None, "the cluster needs the service tree as its parent"
        d = self.parent.getServiceNamed("manager").whenReady()
        d.addCallback(self._managerReady)
        d.addErrback(self._failed)
        self._starting = d

    def _managerReady(self, manager: Any) -> Optional[Deferred]:
        if manager is None or not self.running:
            return None
        config = self.config
        secrets = loadSecrets(config.clusterSecretFile)
        peers = [spec for spec in config.clusterPeers if spec.name != config.node]
        group = PeerGroup(
            config.node,
            [spec.name for spec in peers],
            self.reactor,
            adoptAfter=config.clusterAdoptAfter,
            pageSize=config.clusterPageSize,
            quorum=config.clusterQuorum,
            leaseTime=config.clusterLeaseTime,
            leaseInterval=config.clusterLeaseInterval,
        )
        factory = ClusterServerFactory(group, secrets)
        d = serverFromString(self.reactor, config.clusterListen).listen(factory)

        def listening(port: Any) -> None:
            if not self.running:
                port.stopListening()
                return
            self.port = port
            self._factory = factory
            self.group = group
            group.attach(manager)
            for spec in peers:
                link = PeerLink(
                    group,
                    spec.name,
                    spec.endpoint,
                    secrets[config.node],
                    self.reactor,
                    retryDelay=config.clusterRetryDelay,
                    pingInterval=config.clusterPingInterval,
                )
                self.links[spec.name] = link
                link.start()
            address = port.getHost()
            self.log.info(
                "Cluster node {node} listening on {host}:{port}; peers {peers}",
                node=config.node,
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", 0),
                peers=" ".join(str(spec) for spec in peers) or "none",
            )

        return d.addCallback(listening)

    def _failed(self, failure: Failure) -> None:
        failStartup(self, "cluster", failure)

    def stopService(self) -> Deferred:
        """
        Leave the cluster: the manager stops replicating, the links and
        the listener close.  Subscriptions stay ours in the store: a peer
        adopts them only if we are not back within C{adopt_after}.
        """
        service.Service.stopService(self)
        waits: List[Deferred] = []
        if self.group is not None:
            self.group.stop()
        for link in self.links.values():
            waits.append(link.stop())
        if self.port is not None:
            waits.append(maybeDeferred(self.port.stopListening))
        if self._factory is not None:
            self._factory.closeAll()
        self._resetRuntime()
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
