"""
The server's configuration: an INI file, checked against the known sections
and keys, turned into one immutable L{Config}.

Every mistake (unknown section or key, bad value) is reported in one line
naming the file, section and key, so that start-up fails fast and plainly.
Command-line options are applied on top with L{Config.replace}.
"""

from __future__ import annotations

import configparser
import re
from typing import Any, Callable, Dict, Optional, Tuple

from presence.sip.listen import ListenError, ListenSpec


class ConfigError(ValueError):
    """
    A configuration mistake, described in one line.
    """


def _positiveFloat(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _positiveInt(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _nonNegativeInt(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _listenList(text: str) -> Tuple[ListenSpec, ...]:
    try:
        return tuple(ListenSpec.fromString(item) for item in text.split() if item)
    except ListenError as e:
        raise ValueError(str(e))


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError("must be yes or no")


def _logLevel(text: str) -> str:
    value = text.strip().lower()
    if value not in ("debug", "info", "warn", "error"):
        raise ValueError("must be debug, info, warn or error")
    return value


def _words(text: str) -> Tuple[str, ...]:
    return tuple(word.lower() for word in text.replace(",", " ").split())


def _text(text: str) -> str:
    return text.strip()


def _endpoint(text: str) -> str:
    """
    A Twisted server endpoint description (C{tcp:PORT:interface=ADDR},
    C{unix:PATH}, ...), checked for syntax only: nothing listens yet.
    """
    from twisted.internet.endpoints import serverFromString

    text = text.strip()
    try:
        # The reactor is only stored by the endpoint, never used here.
        serverFromString(None, text)
    except Exception as e:
        raise ValueError("not a server endpoint: %s" % (" ".join(str(e).split()) or type(e).__name__,))
    return text


def _clientEndpoint(text: str) -> str:
    """
    A Twisted client endpoint description (C{tcp:HOST:PORT},
    C{tls:HOST:PORT[:trustRoots=DIR]}, C{unix:PATH}), or empty for none;
    checked for syntax only: nothing connects yet.
    """
    from twisted.internet.endpoints import clientFromString

    text = text.strip()
    if not text:
        return ""
    try:
        # The reactor is only stored by the endpoint, never used here.
        clientFromString(None, text)
    except Exception as e:
        raise ValueError("not a client endpoint: %s" % (" ".join(str(e).split()) or type(e).__name__,))
    return text


def _websocketURL(text: str) -> str:
    """
    A C{ws://} or C{wss://} URL with a host, or empty for none.
    """
    from urllib.parse import urlsplit

    text = text.strip()
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise ValueError("not a URL: %s" % (e,))
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("must be a ws://HOST[:PORT] or wss://HOST[:PORT] URL")
    return text


def _nonNegativeFloat(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must not be negative")
    return value


def _digestAlgorithms(text: str) -> Tuple[str, ...]:
    """
    Digest algorithms to offer, strongest first: SHA-256 and/or MD5.
    """
    known = {"sha-256": "SHA-256", "md5": "MD5"}
    names = [word.upper() if word.lower() not in known else known[word.lower()] for word in text.replace(",", " ").split()]
    for name in names:
        if name not in known.values():
            raise ValueError("unknown digest algorithm %r (use SHA-256 and/or MD5)" % (name,))
    if not names:
        raise ValueError("at least one algorithm is needed")
    return tuple(dict.fromkeys(names))


def _userAgentAlgorithms(text: str) -> Tuple[Any, ...]:
    """
    C{PRODUCT [< VERSION]: ALGORITHMS} rules, one per line
    (L{presence.billing.quirks.parseQuirks}).
    """
    from presence.billing.quirks import parseQuirks

    return parseQuirks(text)


def _knownQuirks() -> Tuple[Any, ...]:
    from presence.billing.quirks import KNOWN_QUIRKS

    return KNOWN_QUIRKS


def _dispatcherManagers(text: str) -> Tuple[Any, ...]:
    """
    C{name=udp:HOST:PORT name2=tcp:HOST:PORT ...}: the managers a
    dispatcher knows (L{presence.dispatcher.managers.ManagerSpec}).
    """
    from presence.dispatcher.managers import parseManagers

    return parseManagers(text)


def _dispatcherPolicy(text: str) -> str:
    """
    How a dispatcher picks a manager for a new request.
    """
    value = text.strip().lower().replace("-", "_")
    if value not in ("round_robin", "least_loaded", "hash"):
        raise ValueError("must be round_robin, least_loaded or hash")
    return value


def _clusterPeers(text: str) -> Tuple[Any, ...]:
    """
    C{name=tcp:HOST:PORT name2=tls:HOST:PORT:... ...}: the managers of a
    cluster (L{presence.cluster.peers.PeerSpec}).
    """
    from presence.cluster.peers import parsePeers

    return parsePeers(text)


def _clusterQuorum(text: str) -> int:
    """
    Managers (this one included) that must be reachable to adopt a peer;
    0 for a strict majority of the cluster.
    """
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 (a majority) or a number of managers")
    return value


def _optionalServerEndpoint(text: str) -> str:
    """
    A server endpoint description, or empty for none.
    """
    return _endpoint(text) if text.strip() else ""


#: Binary multipliers of L{_byteSize}'s suffixes.
_SIZE_SUFFIXES = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}

#: The largest size L{_byteSize} takes: socket options are C ints, and
#: Linux doubles the buffer size it is given.
MAX_BYTE_SIZE = 1024 ** 3


def _byteSize(text: str) -> int:
    """
    A size in bytes: a whole number, optionally with a binary suffix
    (C{512K}, C{4M}, C{1G}; C{KiB}, C{MB} and the like too), at most
    1 GiB; 0 is allowed and means "not set" where the key says so.
    """
    match = re.match(r"\s*(\d+)\s*(?:([kKmMgG])(?:i?[bB])?|[bB])?\s*\Z", text)
    if match is None:
        raise ValueError("must be a number of bytes, optionally with K, M or G")
    value = int(match.group(1)) * _SIZE_SUFFIXES[(match.group(2) or "").lower()]
    if value > MAX_BYTE_SIZE:
        raise ValueError("must be at most 1G")
    return value


# section -> key -> (attribute, converter, default)
SCHEMA: Dict[str, Dict[str, Tuple[str, Callable[[str], Any], Any]]] = {
    "server": {
        "listen": ("listen", _listenList, (ListenSpec("UDP", 5060), ListenSpec("TCP", 5060))),
        "domain": ("domains", _words, ()),
        "database": ("database", _text, "sqlite:///presence.sqlite"),
        "advertise": ("advertise", _text, ""),
        # The web pages whose browsers may open SIP WebSockets (ws:, wss:
        # listeners), as Origin values (https://phone.example.test); empty
        # allows any.  Clients that send no Origin (no browser) are let in.
        "websocket_origins": ("websocketOrigins", _words, ()),
    },
    "manager": {
        "node": ("node", _text, "manager"),
        "min_expires": ("minExpires", _positiveInt, 60),
        "default_expires": ("defaultExpires", _positiveInt, 3600),
        "max_expires": ("maxExpires", _positiveInt, 86400),
        "publish_min_expires": ("publishMinExpires", _positiveInt, 60),
        "publish_default_expires": ("publishDefaultExpires", _positiveInt, 3600),
        "publish_max_expires": ("publishMaxExpires", _positiveInt, 86400),
        "notify_min_interval": ("notifyMinInterval", _seconds, 1.0),
        "keep_on_timeout": ("keepOnTimeout", _boolean, False),
        # After a restart, send every active watcher the current state
        # once (paced at [cluster] adopt_notify_rate): a publication may
        # have expired, or a NOTIFY been lost with the process, meanwhile.
        "notify_on_start": ("notifyOnStart", _boolean, True),
        # Overload (presence.manager.overload): new SUBSCRIBE and PUBLISH
        # get 503 with Retry-After while more writes than this wait for
        # the database, or the reactor runs this many seconds late; 0
        # turns a signal off.
        "max_pending_writes": ("maxPendingWrites", _nonNegativeInt, 20000),
        "max_reactor_lag": ("maxReactorLag", _seconds, 1.0),
        "overload_retry_after": ("overloadRetryAfter", _positiveInt, 5),
    },
    # The dialog event package (presence.packages.dialog), busy lamp
    # fields: one_dialog shows watchers only the most relevant dialog
    # (early > confirmed > proceeding > trying > terminated), for phones
    # that show only the first; idle_dialog shows a resource without calls
    # as one terminated dummy dialog, for phones that keep a lamp lit on
    # an empty document.
    "dialog": {
        "one_dialog": ("dialogOneDialog", _boolean, False),
        "idle_dialog": ("dialogIdle", _boolean, False),
    },
    # The registrar (presence.registrar): REGISTER at a manager, whose
    # bindings give presence to an AOR that publishes none.
    "registrar": {
        "min_expires": ("registerMinExpires", _positiveInt, 60),
        "default_expires": ("registerDefaultExpires", _positiveInt, 3600),
        "max_expires": ("registerMaxExpires", _positiveInt, 86400),
        "max_bindings": ("registerMaxBindings", _positiveInt, 10),
        # Seconds between the keep-alives a SIP Outbound UA sends on its
        # flow (RFC 5626 §4.4, Flow-Timer); 0: do not say, the UA picks.
        "flow_timer": ("registerFlowTimer", _nonNegativeInt, 0),
    },
    "log": {
        "requests": ("logRequests", _boolean, False),
        "json_file": ("logJsonFile", _text, ""),
        "level": ("logLevel", _logLevel, "info"),
    },
    "sip": {
        "t1": ("t1", _positiveFloat, 0.5),
        "t2": ("t2", _positiveFloat, 4.0),
        "t4": ("t4", _positiveFloat, 5.0),
        "max_message_size": ("maxMessageSize", _positiveInt, 65535),
        "max_headers": ("maxHeaders", _positiveInt, 100),
        "max_line_length": ("maxLineLength", _positiveInt, 8192),
        "max_uri_length": ("maxUriLength", _positiveInt, 1024),
        "max_body_size": ("maxBodySize", _positiveInt, 60000),
        # Kernel buffers of every SIP UDP socket (SO_RCVBUF, SO_SNDBUF),
        # in bytes; 0 leaves the kernel's default.  A burst that overflows
        # the default receive buffer (about 208 KiB) is dropped datagrams.
        "udp_receive_buffer": ("udpReceiveBuffer", _byteSize, 4 * 1024 * 1024),
        "udp_send_buffer": ("udpSendBuffer", _byteSize, 0),
        # Most seconds a new SUBSCRIBE or PUBLISH may wait in the UDP
        # receive buffer and still be served (presence.sip.intake): older
        # ones get 503 or are dropped.  0.5 s is T1: an older request has
        # a retransmission queued behind it.  0 serves them all.
        "max_queue_delay": ("maxQueueDelay", _seconds, 0.5),
    },
    # The SSH manhole (presence.admin.manhole): off unless enabled, loopback
    # only unless listen says otherwise, key authentication only.
    "manhole": {
        "enabled": ("manholeEnabled", _boolean, False),
        "listen": ("manholeListen", _endpoint, "tcp:2222:interface=127.0.0.1"),
        "authorized_keys": ("manholeAuthorizedKeys", _text, ""),
        "host_key": ("manholeHostKey", _text, "manhole_host_key"),
    },
    # Accounts and authorization (presence.billing): digest authentication
    # of SUBSCRIBE and PUBLISH, how often the billing change log is polled,
    # and how long a manager caches the answers of a remote billing node.
    "billing": {
        "no_auth_domains": ("billingNoAuthDomains", _words, ()),
        "cache_ttl": ("billingCacheTtl", _nonNegativeFloat, 30.0),
        "poll_interval": ("billingPollInterval", _positiveFloat, 2.0),
        "secret_file": ("billingSecretFile", _text, ""),
        "nonce_lifetime": ("billingNonceLifetime", _positiveFloat, 300.0),
        "algorithms": ("billingAlgorithms", _digestAlgorithms, ("SHA-256", "MD5")),
        # The offer for clients that fail on the default one, by
        # User-Agent (presence.billing.quirks); set, it replaces the table.
        "user_agent_algorithms": ("billingUserAgentAlgorithms", _userAgentAlgorithms, _knownQuirks()),
        "max_auth_failures": ("billingMaxAuthFailures", _positiveInt, 10),
        "auth_failure_window": ("billingAuthFailureWindow", _positiveFloat, 60.0),
        # A separate billing node over Perspective Broker
        # (presence.billing.remote): where --role=billing listens, the node
        # a manager asks instead of reading accounts itself, the shared
        # secret both log in with, and how long one remote call may take.
        "listen": ("billingListen", _endpoint, "tcp:8790:interface=127.0.0.1"),
        "remote": ("billingRemote", _clientEndpoint, ""),
        "peer_secret_file": ("billingPeerSecretFile", _text, ""),
        "call_timeout": ("billingCallTimeout", _positiveFloat, 2.0),
    },
    # The control channel (presence.admin.control) presence-admin live
    # talks to: a UNIX socket, mode 0600; empty: none.
    "control": {
        "socket": ("controlSocket", _text, ""),
    },
    # The Prometheus metrics endpoint (presence.admin.metrics).
    "metrics": {
        "enabled": ("metricsEnabled", _boolean, False),
        "listen": ("metricsListen", _endpoint, "tcp:9090:interface=127.0.0.1"),
    },
    # The browser buddy list (presence.web): a static page and SIP.js served
    # over HTTP, off unless enabled.  root: a directory to serve instead of
    # the packaged page; sipjs: the SIP.js package directory (empty: found
    # in node_modules, see presence.web.site); websocket: the SIP
    # WebSocket URL the page offers (empty: one of our ws/wss listeners on
    # the host the page came from).
    "web": {
        "enabled": ("webEnabled", _boolean, False),
        "listen": ("webListen", _endpoint, "tcp:8080:interface=127.0.0.1"),
        "root": ("webRoot", _text, ""),
        "sipjs": ("webSipjs", _text, ""),
        "websocket": ("webWebsocket", _websocketURL, ""),
    },
    # The dispatching node (presence.dispatcher, --role=dispatcher): the
    # managers it forwards to, how it picks one, how it checks they live,
    # and the key that signs its Record-Routes.
    "dispatcher": {
        "managers": ("dispatcherManagers", _dispatcherManagers, ()),
        "policy": ("dispatcherPolicy", _dispatcherPolicy, "hash"),
        "ping_interval": ("dispatcherPingInterval", _positiveFloat, 0.5),
        "dead_after": ("dispatcherDeadAfter", _positiveFloat, 1.5),
        "secret": ("dispatcherSecret", _text, ""),
        "secret_file": ("dispatcherSecretFile", _text, ""),
    },
    # A cluster of managers (presence.cluster): where this manager's
    # Perspective Broker listener is, the managers it links to (this
    # node's own entry is skipped), the file of their shared secrets, how
    # long a peer may be unreachable before its subscriptions are
    # adopted (and how many managers must be reachable to adopt), the size
    # of a resynchronisation page, and the links' ping and retry delays.
    # lease_time and lease_interval: this manager's lease in the database
    # (presence.cluster.lease), renewed every lease_interval seconds for
    # lease_time seconds; a peer adopts our subscriptions only once it
    # has expired, and we stop notifying lease_interval before it could.
    # adopt_notify_rate: at most this many NOTIFYs per second to the
    # watchers of adopted subscriptions, and to those of the subscriptions
    # reloaded at start ([manager] notify_on_start), paced by
    # presence.manager.notifier.
    "cluster": {
        "listen": ("clusterListen", _optionalServerEndpoint, ""),
        "peers": ("clusterPeers", _clusterPeers, ()),
        "secret_file": ("clusterSecretFile", _text, ""),
        "adopt_after": ("clusterAdoptAfter", _positiveFloat, 10.0),
        "page_size": ("clusterPageSize", _positiveInt, 200),
        "ping_interval": ("clusterPingInterval", _positiveFloat, 2.0),
        "retry_delay": ("clusterRetryDelay", _positiveFloat, 1.0),
        "quorum": ("clusterQuorum", _clusterQuorum, 0),
        "lease_time": ("clusterLeaseTime", _positiveFloat, 5.0),
        "lease_interval": ("clusterLeaseInterval", _positiveFloat, 1.0),
        "adopt_notify_rate": ("clusterAdoptNotifyRate", _positiveInt, 1000),
    },
}


#: Keys whose values must not decrease along each row (one section each):
#: an expiry range whose default lies outside it, a retransmission
#: interval that starts above its cap, a body or Request-URI limit that a
#: larger limit already cuts.
ORDERED: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("manager", ("min_expires", "default_expires", "max_expires")),
    ("manager", ("publish_min_expires", "publish_default_expires", "publish_max_expires")),
    ("registrar", ("min_expires", "default_expires", "max_expires")),
    ("sip", ("t1", "t2")),
    ("sip", ("max_body_size", "max_message_size")),
    ("sip", ("max_uri_length", "max_line_length", "max_message_size")),
)


def _orderProblem(values: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """
    The first pair of L{ORDERED} keys out of order, or L{None}; the widest
    pair first, so that C{min_expires} above C{max_expires} is named so.
    """
    for section, keys in ORDERED:
        settings = [
            (key, values.get(SCHEMA[section][key][0], SCHEMA[section][key][2])) for key in keys
        ]
        pairs = sorted(
            ((i, j) for i in range(len(keys)) for j in range(i + 1, len(keys))), key=lambda p: p[0] - p[1]
        )
        for i, j in pairs:
            (low, lowValue), (high, highValue) = settings[i], settings[j]
            if lowValue > highValue:
                return (section, "%s = %g must not be more than %s = %g" % (low, lowValue, high, highValue))
    return None


def _crossCheck(values: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """
    Mistakes no single key shows.

    @return: the section and the one-line complaint, or L{None}.
    """
    problem = _orderProblem(values)
    if problem is not None:
        return problem
    if values.get("manholeEnabled") and not values.get("manholeAuthorizedKeys"):
        return (
            "manhole",
            "enabled = yes needs authorized_keys = FILE (the SSH public keys "
            "allowed to log in; the manhole has no password login)",
        )
    if values.get("clusterPeers") and not (values.get("clusterListen") and values.get("clusterSecretFile")):
        return ("cluster", "peers = ... needs listen = ENDPOINT and secret_file = FILE")
    leaseTime = values.get("clusterLeaseTime", SCHEMA["cluster"]["lease_time"][2])
    leaseInterval = values.get("clusterLeaseInterval", SCHEMA["cluster"]["lease_interval"][2])
    if not leaseTime > 2 * leaseInterval:
        return (
            "cluster",
            "lease_time = %g must be more than twice lease_interval = %g (a late renewal "
            "would fence a healthy manager)" % (leaseTime, leaseInterval),
        )
    if values.get("billingRemote") and not values.get("billingPeerSecretFile"):
        return ("billing", "remote = ... needs peer_secret_file = FILE (the secret shared with the billing node)")
    return None


class Config:
    """
    An immutable set of settings; attribute names are those of L{SCHEMA}.
    """

    def __init__(self, **values: Any) -> None:
        defaults = {attr: default for keys in SCHEMA.values() for attr, _, default in keys.values()}
        unknown = set(values) - set(defaults)
        if unknown:
            raise TypeError("unknown settings: %s" % (", ".join(sorted(unknown)),))
        defaults.update(values)
        self.__dict__.update(defaults)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return "Config(%s)" % (", ".join("%s=%r" % item for item in sorted(self.__dict__.items())),)

    def replace(self, **changes: Any) -> Config:
        """
        A copy with C{changes} applied (command-line overrides).
        """
        values = dict(self.__dict__)
        values.update(changes)
        return Config(**values)

    def limits(self) -> Any:
        """
        The parser limits these settings name.
        """
        from presence.sip.parser import Limits

        return Limits(
            maxMessageSize=self.maxMessageSize,
            maxHeaders=self.maxHeaders,
            maxLineLength=self.maxLineLength,
            maxUriLength=self.maxUriLength,
            maxBodySize=self.maxBodySize,
        )

    @classmethod
    def fromString(cls, text: str, source: str = "<string>") -> Config:
        """
        Parse INI text.

        @param source: the file name to name in error messages.
        @raise ConfigError: for any mistake.
        """
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment, method-assign]
        try:
            parser.read_string(text, source)
        except configparser.Error as e:
            raise ConfigError("%s: %s" % (source, " ".join(str(e).split())))
        values: Dict[str, Any] = {}
        for section in parser.sections():
            keys = SCHEMA.get(section)
            if keys is None:
                raise ConfigError("%s: unknown section [%s]" % (source, section))
            for key, raw in parser.items(section):
                if key not in keys:
                    raise ConfigError("%s: [%s] unknown key %r" % (source, section, key))
                attr, convert, _ = keys[key]
                try:
                    values[attr] = convert(raw)
                except ValueError as e:
                    raise ConfigError("%s: [%s] %s = %r: %s" % (source, section, key, raw, e))
        problem = _crossCheck(values)
        if problem is not None:
            raise ConfigError("%s: [%s] %s" % (source, problem[0], problem[1]))
        return cls(**values)

    @classmethod
    def fromFile(cls, path: str) -> Config:
        """
        Read and parse an INI file.

        @raise ConfigError: when it cannot be read or has a mistake.
        """
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("%s: cannot read: %s" % (path, getattr(e, "strerror", None) or e))
        return cls.fromString(text, path)


def loadConfig(path: Optional[str], explicit: bool) -> Config:
    """
    The configuration from C{path}; when the path is only the default and
    the file does not exist, the built-in defaults.
    """
    import os

    if path is None or (not explicit and not os.path.exists(path)):
        return Config()
    return Config.fromFile(path)
