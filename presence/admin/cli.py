"""
C{presence-admin}: the operator's command line, built from
C{usage.Options} sub-commands, each naming its implementation.

It works on the same database as the server (C{--database URL}, or the
C{--config FILE} the server reads) and on the server's configuration.
Mistakes end with one line on standard error and a non-zero exit status;
nothing is half-written.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from typing import Any, Callable, List, Optional

import sqlalchemy as sa
from twisted.python import usage

from presence.admin import live as livecli
from presence.admin import mwi, provisioning
from presence.config import Config, ConfigError, loadConfig
from presence.tap import DEFAULT_CONFIG, ROLES
from presence.tap import Options as ServerOptions


class AdminError(Exception):
    """
    A failure to report in one line, with exit status C{status} (1 unless
    said otherwise).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        Exception.__init__(self, message)
        self.status = status


class MktapOptions(ServerOptions):
    """
    The options of C{twistd presence}, plus where to write the .tap file.
    """

    synopsis = "[twistd presence options] [-o presence.tap]"
    longdesc = (
        "Write the service tree the given twistd presence options make into a "
        ".tap file; run it with: twistd -n -f presence.tap"
    )

    optParameters = ServerOptions.optParameters + [
        ["output", "o", "presence.tap", "Where to write the .tap file."],
    ]

    def fail(self, message: str) -> None:
        raise usage.UsageError(message)


class InitdbOptions(usage.Options):
    synopsis = ""
    longdesc = "Create the database schema, or report its version if it exists."


class UpgradedbOptions(usage.Options):
    synopsis = ""
    longdesc = "Upgrade the database schema to the version this code uses."


class CheckconfigOptions(usage.Options):
    synopsis = "[--role ROLE]"
    longdesc = (
        "Validate the configuration file for a twistd presence --role: its values, the files "
        "it names (TLS keys, secrets, log and database folders), and its database, without "
        "creating anything.  Every problem is one line."
    )
    optParameters = [["role", None, "all", "The role to check for: all, dispatcher, manager or billing."]]

    def postOptions(self) -> None:
        if self["role"] not in ROLES:
            raise usage.UsageError("--role: %r is not one of %s" % (self["role"], ", ".join(ROLES)))


class Options(usage.Options):
    """
    C{presence-admin [--config FILE] [--database URL] COMMAND ...}
    """

    synopsis = "[--config FILE] [--database URL] COMMAND [options]"
    optParameters = [
        ["config", "c", None, "INI configuration file (default %s if it exists)." % (DEFAULT_CONFIG,)],
        ["database", "d", None, "Database URL; overrides the configuration."],
    ]
    subCommands = [
        ["mktap", None, MktapOptions, "Write a .tap file for twistd -f."],
        ["initdb", None, InitdbOptions, "Create the database schema."],
        ["upgradedb", None, UpgradedbOptions, "Upgrade the database schema."],
        ["checkconfig", None, CheckconfigOptions, "Validate the configuration."],
        ["account", None, provisioning.AccountOptions, "Accounts: add, remove, passwd, block, unblock, modify, show, list."],
        ["policy", None, provisioning.PolicyOptions, "Who may watch a presentity: allow, block, ask, clear, show."],
        ["watchers", None, provisioning.WatchersOptions, "Who watches an AOR, in which state."],
        ["live", None, livecli.LiveOptions, "The running servers: presentities, watchers, terminate, drain, status."],
        ["mwi", None, mwi.MwiOptions, "Push a mailbox's message summary (RFC 3842) to its phones."],
    ]

    # The same line as twistd presence --version.
    opt_version = ServerOptions.opt_version

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")

    def loadConfig(self) -> Config:
        try:
            config = loadConfig(self["config"] or DEFAULT_CONFIG, self["config"] is not None)
        except ConfigError as e:
            raise AdminError(str(e))
        if self["database"]:
            config = config.replace(database=self["database"])
        return config


def _engine(config: Config) -> Any:
    from presence.preflight import createEngine

    try:
        # Configured as the server's (SQLite: WAL, busy timeout, real
        # transactions), so a command and a running server share the file.
        return createEngine(config.database)
    except ValueError as e:
        raise AdminError("database %r: %s" % (config.database, e))


def _oneLine(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def withDatabase(config: Config, work: Callable[[Any], Any]) -> Any:
    """
    Run C{work(connection)} in one transaction: all of it, or nothing.
    """
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            # SQLite: take the write lock up front (BEGIN IMMEDIATE), so a
            # command waits for the server's writer instead of failing
            # half-way.
            conn.execution_options(presenceWrite=True)
            with conn.begin():
                return work(conn)
    except sa.exc.OperationalError as e:
        raise AdminError("cannot reach database %s: %s" % (_redact(config.database), _oneLine(e)))
    finally:
        engine.dispose()


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def initdb(options: Options, out: Any) -> None:
    from presence.store import schema

    def work(conn: Any) -> int:
        before = schema.getSchemaVersion(conn)
        if before:
            return -before
        return schema.upgrade(conn)

    version = withDatabase(options.loadConfig(), work)
    if version < 0:
        out.write("Database already initialised, schema version %d\n" % (-version,))
    else:
        out.write("Database initialised, schema version %d\n" % (version,))


def upgradedb(options: Options, out: Any) -> None:
    from presence.store import schema

    def work(conn: Any) -> Any:
        before = schema.getSchemaVersion(conn)
        return before, schema.upgrade(conn)

    try:
        before, after = withDatabase(options.loadConfig(), work)
    except schema.SchemaTooNew as e:  # type: ignore[attr-defined]
        raise AdminError(str(e))
    out.write("Database schema upgraded from version %d to %d\n" % (before, after))


def checkconfig(options: Options, out: Any) -> None:
    from presence.preflight import problems

    config = options.loadConfig()
    found = problems(config, options.subOptions["role"])
    if found:
        raise AdminError("\n".join(found))
    listen = " ".join(str(spec) for spec in config.listen)
    out.write(
        "Configuration OK: listen %s; domains %s; database %s\n"
        % (listen, " ".join(config.domains) or "(any)", _redact(config.database))
    )


def mktap(options: Options, out: Any) -> None:
    from twisted.application import service

    from presence.tap import makeService

    sub = options.subOptions
    application = service.Application("presence")
    makeService(sub).setServiceParent(service.IServiceCollection(application))
    try:
        writePrivately(sub["output"], lambda f: pickle.dump(application, f, 2))
    except OSError as e:
        raise AdminError("cannot write %s: %s" % (sub["output"], e.strerror or e))
    out.write("Wrote %s; run it with: twistd -n -f %s\n" % (sub["output"], sub["output"]))


def writePrivately(path: str, write: Callable[[Any], None]) -> None:
    """
    Write a file only its owner may read (mode 0600): a .tap file holds
    the configuration's secrets.  It is written to a new file created
    with that mode, then renamed over C{path}, so an existing file with a
    wider mode is replaced rather than rewritten in place, and a failure
    leaves the old file as it was.  The pickle is what
    C{twisted.persisted.sob} writes (protocol 2), for C{twistd -f}.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".%s-" % (os.path.basename(path),), dir=directory)
    try:
        with os.fdopen(handle, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def live(options: Options, out: Any) -> int:
    """
    C{live ...}: over the control channels of running servers.
    """
    sub = options.subOptions
    sockets = list(sub["sockets"])
    if not sockets:
        configured = options.loadConfig().controlSocket
        sockets = [configured] if configured else []
    try:
        return livecli.runLive(sub, sockets, out, options.err)
    except livecli.LiveError as e:
        raise AdminError(str(e), e.status)


COMMANDS = {
    "mktap": mktap,
    "initdb": initdb,
    "upgradedb": upgradedb,
    "checkconfig": checkconfig,
    "account": provisioning.account,
    "policy": provisioning.policy,
    "watchers": provisioning.watchers,
    "live": live,
    "mwi": mwi.mwi,
}


def run(argv: List[str], out: Any = None, err: Any = None, stdin: Any = None) -> int:
    """
    Run one command; return the exit status.

    @param stdin: where C{--password-file -} reads (standard input by
        default).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    options = Options()
    options.stdin = stdin if stdin is not None else sys.stdin
    options.err = err
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write("presence-admin: %s\n" % (e,))
        return 2
    try:
        status = COMMANDS[options.subCommand](options, out)  # type: ignore[index]
    except AdminError as e:
        # One line each: checkconfig reports every problem it found.
        for line in str(e).splitlines():
            err.write("presence-admin: %s\n" % (line,))
        return e.status
    return status or 0


def main(argv: Optional[List[str]] = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))
