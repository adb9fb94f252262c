"""
SIGHUP: reopen the log files and apply what changed in the configuration
file, without a restart.

Operators send SIGHUP after logrotate has moved the log files away, and
after editing the configuration.  Without a handler the signal kills the
process, silently.  With this one, the root of the tree
(L{presence.root.PresenceService}) reopens twistd's log file and the
C{[log] json_file}, reads the file again (the command-line options still
win over it), and applies the changes of the keys in L{LIVE}; every other
change is logged as needing a restart, and stays unapplied, so the
configuration in force is always what the process runs.

A service takes the new settings in C{reconfigure(config)}: it is given
the configuration in force (the old one with the live keys changed) and
pushes the values into the objects it runs.  Accounts and watch rules need
none of this: the server reads their changes from the database.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Tuple

from twisted.logger import Logger, globalLogPublisher

from presence import preflight
from presence.config import SCHEMA, Config, ConfigError, loadConfig

#: The keys whose changes take effect on SIGHUP, as C{(section, key)}.
LIVE = frozenset(
    [
        ("log", "level"),
        ("log", "requests"),
        ("sip", "max_message_size"),
        ("sip", "max_headers"),
        ("sip", "max_line_length"),
        ("sip", "max_uri_length"),
        ("sip", "max_body_size"),
        ("sip", "max_queue_delay"),
        ("manager", "max_pending_writes"),
        ("manager", "max_reactor_lag"),
        ("manager", "overload_retry_after"),
        ("dispatcher", "managers"),
    ]
)

_log = Logger(namespace="presence.reload")


class Change:
    """
    One key whose value differs between two configurations.
    """

    def __init__(self, section: str, key: str, attribute: str, old: Any, new: Any) -> None:
        self.section = section
        self.key = key
        self.attribute = attribute
        self.old = old
        self.new = new

    @property
    def live(self) -> bool:
        return (self.section, self.key) in LIVE

    def __str__(self) -> str:
        return "[%s] %s %s -> %s" % (self.section, self.key, _show(self.old), _show(self.new))

    def __repr__(self) -> str:
        return "<Change %s>" % (self,)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(item) for item in value) or "(none)"
    if value == "":
        return "(empty)"
    return str(value)


def changes(old: Config, new: Config) -> List[Change]:
    """
    The keys whose values differ, in the order of the schema.
    """
    found = []
    for section, keys in SCHEMA.items():
        for key, (attribute, _, _) in keys.items():
            before, after = getattr(old, attribute), getattr(new, attribute)
            if before != after:
                found.append(Change(section, key, attribute, before, after))
    return found


def applyLive(old: Config, found: Iterable[Change]) -> Config:
    """
    C{old} with the live changes of C{found} applied: the configuration
    in force after a reload.
    """
    return old.replace(**{change.attribute: change.new for change in found if change.live})


def summary(found: Iterable[Change]) -> Tuple[List[str], List[str]]:
    """
    The changes applied and those that need a restart, as text.
    """
    found = list(found)
    return [str(c) for c in found if c.live], [str(c) for c in found if not c.live]


def reopenTwistdLogs() -> int:
    """
    Reopen the files twistd logs to (C{--logfile}), so that lines go to a
    new file once logrotate has moved the old one away.

    twistd keeps its C{LogFile} to itself (its only hook is SIGUSR1, which
    renames the file itself, against logrotate); its observer on the
    global publisher is a C{FileLogObserver} holding that file, which is
    found there.

    @return: how many files were reopened.
    """
    count = 0
    for observer in list(getattr(globalLogPublisher, "_observers", ())):
        outFile = getattr(observer, "_outFile", None)
        reopen = getattr(outFile, "reopen", None)
        if reopen is not None:
            reopen()
            count += 1
    return count


def reloadTree(root: Any) -> None:
    """
    What SIGHUP does to the tree under C{root}, logging each step (see the
    module docstring).

    @param root: a L{presence.root.PresenceService}, which has
        C{configPath}, C{configGiven}, C{overrides}, C{role} and C{config}.
    """
    _log.info("SIGHUP: reopening the log files and reading {path} again", path=root.configPath or "(no file)")
    try:
        reopenTwistdLogs()
    except OSError as e:
        _log.error("SIGHUP: cannot reopen the twistd log file: {error}", error=e)
    for child in root:
        reopen = getattr(child, "reopen", None)
        if reopen is not None:
            try:
                reopen()
            except Exception as e:
                _log.error("SIGHUP: cannot reopen a log file: {error}", error=e)
    try:
        loaded = loadConfig(root.configPath, root.configGiven)
    except ConfigError as e:
        _log.error("SIGHUP: the configuration is not reloaded: {error}", error=str(e))
        return
    new = loaded.replace(**root.overrides)
    # What would stop a start stops a reload: nothing of a file with a
    # mistake is applied.
    problems = preflight.problems(new, root.role, database=False)
    if problems:
        _log.error("SIGHUP: the configuration is not reloaded: {error}", error=problems[0])
        return
    found = changes(root.config, new)
    applied, restart = summary(found)
    inForce = applyLive(root.config, found)
    if applied:
        for child in root:
            reconfigure = getattr(child, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(inForce)
        root.config = inForce
    if applied:
        _log.info("SIGHUP: applied {changes}", changes="; ".join(applied), applied=applied)
    if restart:
        _log.warn(
            "SIGHUP: these changes need a restart and are not applied: {changes}",
            changes="; ".join(restart),
            restart=restart,
        )
    if not found:
        _log.info("SIGHUP: the configuration has not changed")
