"""
What can be checked about a configuration before anything starts: the
files it names, the database it points at, the secrets of each role.

C{twistd presence} runs these checks before the reactor (the first problem
stops it with one line) and C{presence-admin checkconfig} reports every
problem found, each on its own line.  The checks only read: they create
no SQLite file, no log file and no host key, and they bind no port (a port
in use is found when the server starts: see L{presence.startup}).  Checks
of values alone, such as C{min_expires} above C{max_expires}, are made
when the file is parsed (L{presence.config}).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Iterator, List, Optional

from presence.config import Config
from presence.startup import describe, firstLine

#: The PostgreSQL drivers this server supports, by SQLAlchemy driver name.
_DRIVERS = {"psycopg": "psycopg", "pg8000": "pg8000"}
_INSTALL = "pip install 'presence[postgresql]' (psycopg on CPython, pg8000 on PyPy)"

#: Options of an endpoint description that name a file, or a folder.
_FILE_OPTIONS = ("privateKey", "certKey", "extraCertChain")
_FOLDER_OPTIONS = ("caCertsDir", "trustRoots")


def problems(config: Config, role: str = "all", database: bool = True) -> List[str]:
    """
    Every problem found in C{config} for a process of C{role}, each one
    line naming the section and key.

    @param database: whether to check the database too (C{twistd presence}
        checks it apart, to name C{--database} when that gave it).
    """
    found = list(_files(config, role))
    found.extend(_roleProblems(config, role))
    if database and role != "dispatcher":
        problem = databaseProblem(config.database)
        if problem is not None:
            found.append("[server] database = %r: %s" % (config.database, problem))
    return found


def _files(config: Config, role: str) -> Iterator[str]:
    if role != "billing":
        for spec in config.listen:
            if spec.transport in ("TLS", "WSS"):
                yield from _tlsFiles("[server] listen = %s" % (spec,), spec)
    if config.logJsonFile and config.logJsonFile != "-":
        problem = _writableFile(config.logJsonFile)
        if problem is not None:
            yield "[log] json_file = %r: %s" % (config.logJsonFile, problem)
    if config.webEnabled and config.webRoot and not os.path.isdir(config.webRoot):
        yield "[web] root = %r: no such folder" % (config.webRoot,)
    endpoints = [("manhole", "listen", config.manholeListen, config.manholeEnabled)]
    endpoints.append(("metrics", "listen", config.metricsListen, config.metricsEnabled))
    endpoints.append(("web", "listen", config.webListen, config.webEnabled))
    endpoints.append(("billing", "listen", config.billingListen, role == "billing"))
    endpoints.append(("billing", "remote", config.billingRemote, role in ("all", "manager")))
    endpoints.append(("cluster", "listen", config.clusterListen, bool(config.clusterPeers)))
    for section, key, description, used in endpoints:
        if used and description:
            for problem in _endpointFiles(description):
                yield "[%s] %s = %r: %s" % (section, key, description, problem)
    if config.clusterPeers and role in ("all", "manager"):
        for peer in config.clusterPeers:
            for problem in _endpointFiles(peer.endpoint):
                yield "[cluster] peers: %s: %s" % (peer.name, problem)


def _tlsFiles(where: str, spec: object) -> Iterator[str]:
    """
    The key and certificates of a TLS listener: readable, and a key and
    certificate OpenSSL takes.
    """
    from presence.sip.service import TLS_ERRORS, tlsContext

    options = getattr(spec, "options", {})
    unreadable = False
    for option in _FILE_OPTIONS:
        if option in options:
            problem = _readableFile(options[option])
            if problem is not None:
                unreadable = True
                yield "%s: %s=%s: %s" % (where, option, options[option], problem)
    if unreadable:
        return
    try:
        tlsContext(spec)  # type: ignore[arg-type]
    except TLS_ERRORS as e:
        yield "%s: %s" % (where, describe(e))


def _endpointFiles(description: str) -> Iterator[str]:
    """
    The files and folders a Twisted endpoint description names
    (C{ssl:...:privateKey=KEY:certKey=CERT}, C{tls:...:trustRoots=DIR}).
    """
    for item in description.replace("\\:", "\x00").split(":")[1:]:
        key, eq, value = item.partition("=")
        value = value.replace("\x00", ":")
        if not eq:
            continue
        if key in _FILE_OPTIONS:
            problem = _readableFile(value)
            if problem is not None:
                yield "%s=%s: %s" % (key, value, problem)
        elif key in _FOLDER_OPTIONS and not os.path.isdir(value):
            yield "%s=%s: no such folder" % (key, value)


def _readableFile(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return "no such file"
    if not os.path.isfile(path):
        return "not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permissions)"
    return None


def _writableFile(path: str) -> Optional[str]:
    """
    Why a file the server appends to (a log) cannot be written: the file
    is not writable, or its folder does not exist or is not writable.
    """
    if os.path.exists(path):
        if os.path.isdir(path):
            return "is a folder"
        if not os.access(path, os.W_OK):
            return "cannot be written (permissions)"
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return "the folder %s does not exist" % (folder,)
    if not os.access(folder, os.W_OK | os.X_OK):
        return "cannot create files in %s (permissions)" % (folder,)
    return None


def _roleProblems(config: Config, role: str) -> Iterator[Optional[str]]:
    """
    The checks of each part the role runs: secret files and their modes,
    the manhole's keys, a dispatcher's managers.
    """
    if role == "dispatcher":
        from presence.dispatcher.service import dispatcherProblem

        checks = [dispatcherProblem]
    elif role == "billing":
        from presence.billing.remote import billingNodeProblem
        from presence.billing.service import billingProblem

        checks = [billingProblem, billingNodeProblem]
    else:
        from presence.billing.service import billingProblem

        checks = [billingProblem]
        if config.billingRemote:
            from presence.billing.remote import remoteBillingProblem

            checks = [remoteBillingProblem]
        if config.clusterPeers:
            from presence.cluster.service import clusterProblem

            checks.append(clusterProblem)
    if config.manholeEnabled:
        from presence.admin.manhole import manholeProblem

        checks.append(manholeProblem)
    if config.controlSocket:
        from presence.admin.control import controlProblem

        checks.append(controlProblem)
    for check in checks:
        problem = check(config)
        if problem is not None:
            yield problem


def databaseProblem(url: str) -> Optional[str]:
    """
    Why the database at C{url} cannot be used, in one line, or L{None}.

    An SQLite file that does not exist yet is fine when its folder is
    writable (the server creates it): it is not opened, so checking makes
    no empty file.  An existing one is opened read-only.  Another database
    is connected to.
    """
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        return "bad database URL: %s" % (firstLine(e),)
    if parsed.get_backend_name() == "sqlite":
        return _sqliteProblem(parsed.database or "")
    try:
        engine = createEngine(url)
    except ValueError as e:
        return str(e)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as e:
        return "cannot reach the database: %s" % (firstLine(getattr(e, "orig", None) or e),)
    finally:
        engine.dispose()
    return None


def createEngine(url: str) -> Any:
    """
    The store's engine for C{url} (one connection), for a check or a
    C{presence-admin} command.

    @raise ValueError: why it cannot be built, in one line: a bad URL, an
        unknown driver, or a driver that is not installed (naming the
        package to install, not "bad database URL").
    """
    import sqlalchemy as sa

    from presence.store.sql import createEngine as storeEngine

    try:
        return storeEngine(url, poolSize=1)
    except sa.exc.NoSuchModuleError:
        drivername = sa.engine.make_url(url).drivername
        raise ValueError("unknown database driver %r (use sqlite, postgresql+psycopg or postgresql+pg8000)" % (drivername,))
    except ImportError as e:
        driver = sa.engine.make_url(url).get_driver_name()
        if driver in _DRIVERS:
            raise ValueError("the database driver %s is not installed: %s" % (_DRIVERS[driver], _INSTALL))
        raise ValueError(
            "the database driver %s is not installed (%s): use postgresql+psycopg or postgresql+pg8000, %s"
            % (driver, firstLine(e), _INSTALL)
        )
    except Exception as e:
        raise ValueError("bad database URL: %s" % (firstLine(e),))


def _sqliteProblem(path: str) -> Optional[str]:
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    if not os.path.exists(path):
        problem = _writableFile(path)
        return None if problem is None else "cannot create the database: %s" % (problem,)
    if not os.access(path, os.R_OK | os.W_OK):
        return "cannot read and write %s (permissions)" % (path,)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        # SQLite writes its journal (WAL) beside the file.
        return "cannot create files in %s (permissions): SQLite keeps its journal there" % (folder,)
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % (os.path.abspath(path),), uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return "cannot read the database: %s" % (firstLine(e),)
    return None
