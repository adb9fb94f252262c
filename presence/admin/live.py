"""
C{presence-admin live ...}: read and act on running servers through their
control channels (L{presence.admin.control}), as C{kamcmd presence.*}
does for Kamailio.

Each C{--socket} names one process (by default the C{[control] socket} of
the configuration); with several, the command goes to each and the
answers are merged, every item tagged with the node that answered.  The
output is JSON (C{--table} for people): a listing is one array, any other
answer one object keyed by node name.

Exit status, for scripts:

  - 0: done;
  - 1: a command failed in a server, or did not finish its work (a
    drain that left subscriptions behind);
  - 2: bad usage;
  - 3: a control channel cannot be reached (no socket, refused, no
    answer in time);
  - 4: nothing matched (no such subscription; an AOR nobody watches);
  - 5: no process asked runs the part the command needs (yet);
  - 6: C{status}: some process is not healthy.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Dict, Iterator, List, Optional, Tuple

from twisted.python import usage

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_NOT_RUNNING = 5
EXIT_UNHEALTHY = 6


class LiveError(Exception):
    """
    The command ends with exit status C{status} and this one line.
    """

    def __init__(self, message: str, status: int) -> None:
        Exception.__init__(self, message)
        self.status = status


class ChannelError(LiveError):
    """
    A control channel cannot be reached or broke off.
    """

    def __init__(self, message: str) -> None:
        LiveError.__init__(self, message, EXIT_UNREACHABLE)


class RemoteError(Exception):
    """
    A server refused a command: the protocol's error code and message.
    """

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code = code


class ControlClient:
    """
    A blocking client of one control channel: this is a command-line
    tool, with nothing else to do while it waits.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.node = path
        self._sock: Optional[socket.socket] = None
        self._buffer = b""
        self._next = 0

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise ChannelError("cannot reach the control channel %s: %s" % (self.path, e.strerror or e))
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, command: str, args: Optional[Dict[str, Any]] = None) -> Any:
        """
        Run C{command} there and return its result.

        @raise RemoteError: when the server refused it.
        @raise ChannelError: when the channel fails.
        """
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._next += 1
        ident = self._next
        line = json.dumps({"id": ident, "command": command, "args": args or {}}).encode("utf-8") + b"\n"
        try:
            self._sock.sendall(line)
            while True:
                answer = self._readAnswer()
                if answer.get("id") in (ident, None):
                    break
        except socket.timeout:
            raise ChannelError("no answer from %s within %g s" % (self.path, self.timeout))
        except OSError as e:
            raise ChannelError("control channel %s: %s" % (self.path, e.strerror or e))
        self.node = answer.get("node") or self.path
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise RemoteError(str(error.get("code", "failed")), str(error.get("message", "")))
        return answer.get("result")

    def _readAnswer(self) -> Dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise ChannelError("control channel %s closed the connection" % (self.path,))
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            answer = json.loads(line.decode("utf-8"))
        except ValueError:
            raise ChannelError("control channel %s sent something that is not JSON" % (self.path,))
        if not isinstance(answer, dict):
            raise ChannelError("control channel %s sent something that is no answer" % (self.path,))
        return answer


# The sub-commands.


class _NoArgs(usage.Options):
    synopsis = ""


class StatsOptions(_NoArgs):
    longdesc = "Counters: subscriptions, publications, NOTIFYs, transactions, store batches."


class StatusOptions(_NoArgs):
    longdesc = (
        "Health: a manager's state (serving, draining, fenced, overloaded), its cluster "
        "peers and every manager's lease; a dispatcher's managers.  Exit status 6 when "
        "something is not healthy."
    )


class ResumeOptions(_NoArgs):
    longdesc = "Take new work again after a drain."


class PresentitiesOptions(usage.Options):
    synopsis = "[--limit N]"
    longdesc = "The presentities held (with publications or watchers), with counts."
    optParameters = [["limit", "n", None, "At most N (default: all).", int]]


class _AOROptions(usage.Options):
    synopsis = "AOR"

    def parseArgs(self, aor: str) -> None:
        self["aor"] = aor


class PresentityOptions(_AOROptions):
    longdesc = "One presentity: its composed document, publications and watchers."


class WatchersOptions(_AOROptions):
    longdesc = "The subscriptions to AOR (its watchers), in every state."


class RefreshWatchersOptions(_AOROptions):
    longdesc = "Send every active watcher of AOR a NOTIFY with the current state (paced)."


class SubscriptionsOptions(usage.Options):
    synopsis = "[--watcher AOR] [--presentity AOR] [--limit N]"
    longdesc = "Live subscriptions, all or those of a watcher and/or to a presentity."
    optParameters = [
        ["watcher", "w", None, "Only this watcher's."],
        ["presentity", "p", None, "Only those to this presentity."],
        ["limit", "n", None, "At most N (default: all).", int],
    ]


class TerminateOptions(usage.Options):
    synopsis = "[ID ...] [--watcher AOR] [--presentity AOR] [--reason REASON]"
    longdesc = (
        "End subscriptions with a final NOTIFY (Subscription-State: terminated): those "
        "named by id, or all of a watcher, or all to a presentity (both: the watcher's "
        "to that presentity).  Exit status 4 when none matched."
    )
    optParameters = [
        ["watcher", "w", None, "All subscriptions of this watcher."],
        ["presentity", "p", None, "All subscriptions to this presentity."],
        ["reason", "r", "deactivated", "RFC 6665 reason: deactivated (may subscribe again), rejected, ..."],
    ]

    def parseArgs(self, *ids: str) -> None:
        self["ids"] = list(ids)

    def postOptions(self) -> None:
        if self["ids"] and (self["watcher"] or self["presentity"]):
            raise usage.UsageError("give ids, or --watcher and/or --presentity, not both")
        if not (self["ids"] or self["watcher"] or self["presentity"]):
            raise usage.UsageError("give ids, --watcher or --presentity")


class DrainOptions(usage.Options):
    synopsis = "[--grace SECONDS]"
    longdesc = (
        "Before maintenance: stop taking new subscriptions and publications (the "
        "dispatcher takes the manager out of rotation) and hand every subscription over "
        "to the cluster peers.  Exit status 0 once none is left, 1 otherwise."
    )
    optParameters = [
        ["grace", "g", 2.0, "Seconds between refusing new work and the first hand-over.", float],
    ]


class CleanupOptions(usage.Options):
    synopsis = "[--older-than SECONDS]"
    longdesc = (
        "Delete from the database the subscriptions and publications that expired "
        "more than SECONDS ago (60), left behind by a manager that never came back."
    )
    optParameters = [["older-than", None, 60.0, "Only those expired this long ago.", float]]


class LiveOptions(usage.Options):
    """
    C{presence-admin live [--socket PATH ...] [--table] COMMAND ...}
    """

    synopsis = "[--socket PATH ...] [--json|--table] [--timeout SECONDS] COMMAND [options]"
    longdesc = (
        "Read and act on running servers over their control channels.  Exit status: 0 done, "
        "1 failed, 2 usage, 3 channel unreachable, 4 nothing matched, 5 not running here, "
        "6 not healthy (status)."
    )
    optFlags = [
        ["json", "j", "Print JSON (the default)."],
        ["table", "t", "Print a table for people instead of JSON."],
    ]
    optParameters = [
        ["timeout", None, None, "Seconds to wait for each answer (default 30; drain 600).", float],
    ]
    subCommands = [
        ["stats", None, StatsOptions, "Counters of each process."],
        ["status", None, StatusOptions, "Health of each process and of the cluster."],
        ["presentities", None, PresentitiesOptions, "The presentities held."],
        ["presentity", None, PresentityOptions, "One presentity in detail."],
        ["watchers", None, WatchersOptions, "The watchers of an AOR."],
        ["subscriptions", None, SubscriptionsOptions, "Subscriptions, of a watcher or to a presentity."],
        ["terminate", None, TerminateOptions, "End subscriptions with a final NOTIFY."],
        ["refresh-watchers", None, RefreshWatchersOptions, "Re-send the current state to an AOR's watchers."],
        ["drain", None, DrainOptions, "Hand a manager's subscriptions over before maintenance."],
        ["resume", None, ResumeOptions, "Take new work again after a drain."],
        ["cleanup", None, CleanupOptions, "Delete expired rows from the database."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["sockets"] = []

    def opt_socket(self, path: str) -> None:
        """
        A process's control socket; repeatable (default: [control] socket).
        """
        self["sockets"].append(path)

    opt_s = opt_socket

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a live command is required")
        if self["json"] and self["table"]:
            raise usage.UsageError("--json or --table, not both")


# Running them.


def _pages(client: ControlClient, command: str, args: Dict[str, Any], limit: Optional[int], cursor: Any) -> Iterator[Dict[str, Any]]:
    """
    Every item of a paged listing, page after page.
    """
    seen = 0
    args = dict(args)
    while limit is None or seen < limit:
        page = 1000 if limit is None else min(1000, limit - seen)
        args["limit"] = page
        items = client.call(command, args)
        for item in items:
            yield item
        seen += len(items)
        if len(items) < page:
            return
        args["after"] = cursor(items[-1])


def _listing(sub: Any, command: str) -> Tuple[str, Dict[str, Any], Optional[int], Any]:
    if command == "presentities":
        return "presentities", {}, sub["limit"], lambda item: item["aor"]
    args: Dict[str, Any] = {}
    if command == "watchers":
        args["presentity"] = sub["aor"]
        limit = None
    else:
        for name in ("watcher", "presentity"):
            if sub[name]:
                args[name] = sub[name]
        limit = sub["limit"]
    return "subscriptions", args, limit, lambda item: [item["presentity"], item["watcher"], item["id"]]


_LISTINGS = ("presentities", "watchers", "subscriptions")


def _request(command: str, sub: Any) -> Tuple[str, Dict[str, Any]]:
    """
    The protocol command and arguments of a non-listing sub-command.
    """
    if command in ("stats", "status", "resume"):
        return command, {}
    if command == "presentity":
        return "presentity", {"aor": sub["aor"]}
    if command == "refresh-watchers":
        return "refresh", {"aor": sub["aor"]}
    if command == "drain":
        return "drain", {"grace": sub["grace"]}
    if command == "cleanup":
        return "cleanup", {"olderThan": sub["older-than"]}
    args: Dict[str, Any] = {"reason": sub["reason"]}
    if sub["ids"]:
        args["ids"] = sub["ids"]
    for name in ("watcher", "presentity"):
        if sub[name]:
            args[name] = sub[name]
    return "terminate", args


def runLive(options: LiveOptions, sockets: List[str], out: Any, err: Any) -> int:
    """
    Run the live sub-command of C{options} against C{sockets}.

    @return: the exit status.
    """
    command = options.subCommand
    sub = options.subOptions
    timeout = options["timeout"] or (600.0 if command == "drain" else 30.0)
    if not sockets:
        raise LiveError(
            "no control channel: give --socket PATH, or set [control] socket in the configuration",
            EXIT_UNREACHABLE,
        )
    items: List[Dict[str, Any]] = []
    answers: Dict[str, Any] = {}
    errors: List[Tuple[str, RemoteError]] = []
    unreachable: List[str] = []
    for path in sockets:
        client = ControlClient(path, timeout)
        try:
            if command in _LISTINGS:
                name, args, limit, cursor = _listing(sub, command)
                # client.node is known once the first page is in; a
                # listing cut short is left out whole.
                items.extend([{"node": client.node, **item} for item in _pages(client, name, args, limit, cursor)])
            else:
                name, args = _request(command, sub)
                result = client.call(name, args)
                key = client.node if client.node not in answers else path
                answers[key] = result
        except RemoteError as e:
            errors.append((client.node, e))
        except ChannelError as e:
            # The others are asked all the same: one process down is
            # when an operator most wants to hear from the rest.
            unreachable.append(str(e))
        finally:
            client.close()
    for problem in unreachable:
        err.write("presence-admin: %s\n" % (problem,))
    for node, error in errors:
        err.write("presence-admin: %s: %s (%s)\n" % (node, error, error.code))
    if command in _LISTINGS:
        if items or not (errors or unreachable):
            _write(out, items, options["table"])
    elif answers:
        _write(out, answers, options["table"])
    if unreachable:
        return EXIT_UNREACHABLE
    return _status(command, answers, items, errors, len(sockets))


def _status(command: str, answers: Dict[str, Any], items: List[Any], errors: List[Tuple[str, RemoteError]], asked: int) -> int:
    codes = [error.code for _, error in errors]
    if "failed" in codes:
        return EXIT_FAILED
    if "usage" in codes:
        return EXIT_USAGE
    if codes and len(codes) == asked:
        return EXIT_NOT_FOUND if all(code == "not-found" for code in codes) else EXIT_NOT_RUNNING
    if command == "terminate":
        terminated = sum(answer["terminated"] for answer in answers.values())
        if not terminated:
            return EXIT_NOT_FOUND
        missing = set.intersection(*(set(answer["notFound"]) for answer in answers.values()))
        return EXIT_NOT_FOUND if missing else 0
    if command == "refresh-watchers":
        return 0 if sum(answer["watchers"] for answer in answers.values()) else EXIT_NOT_FOUND
    if command == "drain":
        return 0 if all(not a["remaining"] and not a["failed"] for a in answers.values()) else EXIT_FAILED
    if command == "status":
        return 0 if all(answer.get("healthy") for answer in answers.values()) else EXIT_UNHEALTHY
    return 0


# Output.


def _write(out: Any, data: Any, table: bool) -> None:
    if not table:
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        return
    if isinstance(data, list):
        out.write(_table(data))
        return
    for node, result in data.items():
        out.write("== %s ==\n" % (node,))
        out.write("".join(_lines(result, "")))


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return "-"
    return str(value)


def _table(rows: List[Dict[str, Any]]) -> str:
    """
    Rows as aligned columns (those of the first row), or a note when none.
    """
    if not rows:
        return "(none)\n"
    columns = list(rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [columns] + cells
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() + "\n" for line in lines
    )


def _lines(value: Any, indent: str) -> Iterator[str]:
    """
    A nested answer as indented C{key: value} lines; lists of objects as
    tables.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                yield "%s%s:\n" % (indent, key)
                yield from _lines(item, indent + "  ")
            elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
                yield "%s%s:\n" % (indent, key)
                yield from (indent + "  " + line + "\n" for line in _table(item).splitlines())
            elif isinstance(item, str) and "\n" in item:
                yield "%s%s:\n" % (indent, key)
                yield from (indent + "  " + line + "\n" for line in item.splitlines())
            else:
                yield "%s%s: %s\n" % (indent, key, _cell(item))
    else:
        yield "%s%s\n" % (indent, _cell(value))
