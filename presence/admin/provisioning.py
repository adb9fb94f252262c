"""
The provisioning commands of C{presence-admin}: C{account}, C{policy} and
C{watchers}.

Each command is one transaction on the server's database, through the same
SQL functions the server reads with (L{presence.billing.db}), so a command
either does all it says or nothing, and every change it makes is logged in
C{billing_changes} for running servers to pick up within their poll
interval.  Passwords never appear on the command line: they are read from
a terminal prompt or from C{--password-file FILE} (C{-} for standard
input), and only their HA1 values are stored.
"""

from __future__ import annotations

import datetime
import getopt
import getpass
import sys
import time
from typing import Any, Callable, List, Optional

from twisted.python import usage

from presence.billing import db
from presence.billing.records import (
    ACTIVE,
    ALLOW,
    ASK,
    BLOCK,
    BLOCKED,
    AccountInfo,
    BillingError,
    parseAOR,
    parseCustomer,
    parsePattern,
)


def _yesNo(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "on", "true", "1"):
        return True
    if value in ("no", "off", "false", "0"):
        return False
    raise usage.UsageError("expected yes or no, not %r" % (text,))


class _Interspersed(usage.Options):
    """
    A leaf command whose options may come after its arguments, as in
    C{account add alice@example.test --password-file -} (C{usage.Options}
    alone stops at the first argument, as C{getopt} does).
    """

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        if options is None:
            options = sys.argv[1:]
        try:
            opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e))
        flat: List[str] = []
        for name, value in opts:
            if name.startswith("--"):
                takesValue = name[2:] + "=" in self.longOpt
            else:
                takesValue = name[1:] + ":" in self.shortOpt
            flat.extend([name, value] if takesValue else [name])
        usage.Options.parseOptions(self, flat + ["--"] + args)


class _AOROptions(_Interspersed):
    """
    A command taking one AOR argument.
    """

    synopsis = "AOR"

    def parseArgs(self, aor: str) -> None:
        self["aor"] = aor


class _PasswordOptions(_AOROptions):
    optParameters = [
        ["password-file", "p", None, "Read the password from the first line of FILE (- for standard input)."],
    ]


class AccountAddOptions(_PasswordOptions):
    longdesc = (
        "Provision an account.  Its password is read from a prompt or from "
        "--password-file; only its HA1 values (MD5 and SHA-256) are stored."
    )
    optParameters = _PasswordOptions.optParameters + [
        ["customer", None, None, "The customer (tenant) it belongs to; default: its domain."],
        ["username", None, None, "The digest username; default: the user part of the AOR."],
    ]
    optFlags = [
        ["blocked", None, "Create it blocked."],
        ["no-presence", None, "Create it with presence disabled."],
    ]


class AccountModifyOptions(_AOROptions):
    longdesc = "Change the customer of an account, or whether it may use presence."
    optParameters = [
        ["customer", None, None, "Move it to this customer."],
        ["presence", None, None, "yes or no: whether it may use presence.", _yesNo],
    ]

    def postOptions(self) -> None:
        if self["customer"] is None and self["presence"] is None:
            raise usage.UsageError("nothing to change: give --customer and/or --presence")


class AccountListOptions(_Interspersed):
    synopsis = "[--customer NAME]"
    optParameters = [["customer", None, None, "Only the accounts of this customer."]]


class AccountOptions(usage.Options):
    synopsis = "add|remove|passwd|block|unblock|modify|show|list ..."
    subCommands = [
        ["add", None, AccountAddOptions, "Provision an account."],
        ["remove", None, _AOROptions, "Delete an account and its watch rules."],
        ["passwd", None, _PasswordOptions, "Set a new password."],
        ["block", None, _AOROptions, "Block an account (403 to its requests, its subscriptions end)."],
        ["unblock", None, _AOROptions, "Unblock an account."],
        ["modify", None, AccountModifyOptions, "Change customer or presence."],
        ["show", None, _AOROptions, "Show an account."],
        ["list", None, AccountListOptions, "List accounts."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("account: a command is required (add, remove, passwd, block, unblock, modify, show, list)")


class PolicyRuleOptions(_Interspersed):
    synopsis = "PRESENTITY WATCHER  (WATCHER: an AOR, @domain or *)"

    def parseArgs(self, presentity: str, pattern: str) -> None:
        self["presentity"] = presentity
        self["pattern"] = pattern


class PolicyClearOptions(_Interspersed):
    synopsis = "PRESENTITY [WATCHER]"

    def parseArgs(self, presentity: str, pattern: Optional[str] = None) -> None:
        self["presentity"] = presentity
        self["pattern"] = pattern


class PolicyOptions(usage.Options):
    synopsis = "allow|block|ask|clear|show PRESENTITY ..."
    longdesc = (
        "Who may watch a presentity.  By default watchers of its customer may, "
        "nobody else.  Rules per watcher AOR, then per @domain, then for * override "
        "that: allow, block, or ask (the watcher's subscription stays pending, "
        "without state, until the rule becomes allow)."
    )
    subCommands = [
        ["allow", None, PolicyRuleOptions, "Let watchers matching WATCHER see PRESENTITY."],
        ["block", None, PolicyRuleOptions, "Refuse them (their subscriptions end: rejected)."],
        ["ask", None, PolicyRuleOptions, "Keep them pending until allowed."],
        ["clear", None, PolicyClearOptions, "Remove the rule for WATCHER, or every rule."],
        ["show", None, _AOROptions, "Show the rules of PRESENTITY."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("policy: a command is required (allow, block, ask, clear, show)")


class WatchersOptions(_AOROptions):
    longdesc = "Who watches AOR now, and in which state (active or pending)."


# --- implementations ----------------------------------------------------------


def _check(fn: Callable[..., Any], *args: Any) -> Any:
    """
    Call an input check, turning its complaint into the admin's one line.
    """
    from presence.admin.cli import AdminError

    try:
        return fn(*args)
    except BillingError as e:
        raise AdminError(str(e))


def _transaction(options: Any, work: Callable[[Any], Any]) -> Any:
    """
    Run C{work(conn)} in one transaction on a database whose schema is the
    one this code uses; a billing complaint rolls it all back.
    """
    from presence.admin.cli import AdminError, withDatabase
    from presence.store import schema

    def checked(conn: Any) -> Any:
        version = schema.getSchemaVersion(conn)
        if version == 0:
            raise AdminError("the database is not initialised: run presence-admin initdb")
        if version < schema.CURRENT_VERSION:
            raise AdminError(
                "the database schema is version %d, this code needs %d: run presence-admin upgradedb"
                % (version, schema.CURRENT_VERSION)
            )
        if version > schema.CURRENT_VERSION:
            raise AdminError(
                "the database schema is version %d, newer than this code (%d)"
                % (version, schema.CURRENT_VERSION)
            )
        try:
            return work(conn)
        except BillingError as e:
            raise AdminError(str(e))

    return withDatabase(options.loadConfig(), checked)


def readPassword(sub: Any, stdin: Any, prompt: Optional[Callable[[str], str]] = None) -> str:
    """
    The password: the first line of C{--password-file} (C{-}: standard
    input), else typed twice at a terminal prompt (C{getpass}).  Never an
    argument.
    """
    from presence.admin.cli import AdminError

    if prompt is None:
        prompt = getpass.getpass

    path = sub["password-file"]
    if path == "-":
        line = stdin.readline()
    elif path:
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise AdminError("cannot read password file %s: %s" % (path, getattr(e, "strerror", None) or e))
    else:
        if not getattr(stdin, "isatty", lambda: False)():
            raise AdminError("no password: give --password-file FILE (- for standard input) or run on a terminal")
        line = prompt("Password: ")
        if prompt("Password again: ") != line:
            raise AdminError("the passwords differ")
    password = line.rstrip("\r\n")
    if not password:
        raise AdminError("empty password")
    return password


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def describeAccount(account: AccountInfo) -> List[str]:
    """
    The lines of C{account show}.  HA1 values are never shown: they are as
    good as the password for digest authentication.
    """
    return [
        "aor: %s" % (account.aor,),
        "username: %s" % (account.username,),
        "realm: %s" % (account.realm,),
        "customer: %s" % (account.customer,),
        "status: %s" % (account.status,),
        "presence: %s" % ("enabled" if account.presenceEnabled else "disabled",),
        "created: %s" % (_when(account.createdAt),),
    ]


def account(options: Any, out: Any) -> None:
    """
    C{presence-admin account ...}.
    """
    sub = options.subOptions
    command = sub.subCommand
    args = sub.subOptions
    if command == "list":
        customer = args["customer"]
        if customer is not None:
            customer = _check(parseCustomer, customer)
        accounts = _transaction(options, lambda conn: db.listAccounts(conn, customer))
        for acc in accounts:
            out.write(
                "%s customer=%s status=%s presence=%s\n"
                % (acc.aor, acc.customer, acc.status, "on" if acc.presenceEnabled else "off")
            )
        return
    aor = _check(parseAOR, args["aor"])
    if command == "add":
        customer = _check(parseCustomer, args["customer"]) if args["customer"] is not None else None
        username = args["username"]
        if username is not None and (not username.strip() or any(c in username for c in '"\\\r\n')):
            from presence.admin.cli import AdminError

            raise AdminError("malformed username %r" % (username,))
        password = readPassword(args, options.stdin)
        created = _transaction(
            options,
            lambda conn: db.addAccount(
                conn,
                aor,
                password,
                customer=customer,
                username=username,
                status=BLOCKED if args["blocked"] else ACTIVE,
                presenceEnabled=not args["no-presence"],
            ),
        )
        out.write("Account %s added (customer %s)\n" % (created.aor, created.customer))
    elif command == "remove":
        _transaction(options, lambda conn: db.removeAccount(conn, aor))
        out.write("Account %s removed\n" % (aor,))
    elif command == "passwd":
        password = readPassword(args, options.stdin)
        _transaction(options, lambda conn: db.setPassword(conn, aor, password))
        out.write("Password of %s changed\n" % (aor,))
    elif command in ("block", "unblock"):
        status = BLOCKED if command == "block" else ACTIVE
        _transaction(options, lambda conn: db.setStatus(conn, aor, status))
        out.write("Account %s %sed\n" % (aor, command))
    elif command == "modify":
        customer = _check(parseCustomer, args["customer"]) if args["customer"] is not None else None
        presence = args["presence"]

        def modify(conn: Any) -> AccountInfo:
            result = None
            if customer is not None:
                result = db.setCustomer(conn, aor, customer)
            if presence is not None:
                result = db.setPresenceEnabled(conn, aor, presence)
            assert result is not None
            return result

        changed = _transaction(options, modify)
        out.write("".join(line + "\n" for line in describeAccount(changed)))
    elif command == "show":
        found = _transaction(options, lambda conn: db.getAccount(conn, aor))
        if found is None:
            from presence.admin.cli import AdminError

            raise AdminError("no account %s" % (aor,))
        out.write("".join(line + "\n" for line in describeAccount(found)))


def policy(options: Any, out: Any) -> None:
    """
    C{presence-admin policy ...}.
    """
    sub = options.subOptions
    command = sub.subCommand
    args = sub.subOptions
    if command == "show":
        presentity = _check(parseAOR, args["aor"])

        def show(conn: Any) -> Any:
            found = db.getAccount(conn, presentity)
            if found is None:
                from presence.admin.cli import AdminError

                raise AdminError("no account %s" % (presentity,))
            return found, db.rulesOf(conn, presentity)

        found, rules = _transaction(options, show)
        out.write("Rules of %s (customer %s):\n" % (presentity, found.customer))
        # The order they are applied in: AORs, then domains, then everyone.
        for pattern in sorted(rules, key=lambda p: (p == "*", p.startswith("@"), p)):
            out.write("  %s %s\n" % (rules[pattern], pattern))
        out.write("  default: watchers of customer %s allowed, others blocked\n" % (found.customer,))
        return
    presentity = _check(parseAOR, args["presentity"])
    if command == "clear":
        pattern = _check(parsePattern, args["pattern"]) if args["pattern"] is not None else None
        removed = _transaction(options, lambda conn: db.clearRules(conn, presentity, pattern))
        out.write("Removed %d rule%s of %s\n" % (removed, "" if removed == 1 else "s", presentity))
        return
    action = {"allow": ALLOW, "block": BLOCK, "ask": ASK}[command]
    pattern = _check(parsePattern, args["pattern"])
    _transaction(options, lambda conn: db.setRule(conn, presentity, pattern, action))
    out.write("%s: %s %s\n" % (presentity, action, pattern))


def watchers(options: Any, out: Any) -> None:
    """
    C{presence-admin watchers AOR}.
    """
    presentity = _check(parseAOR, options.subOptions["aor"])
    rows = _transaction(options, lambda conn: db.watchersOf(conn, presentity))
    now = time.time()
    if not rows:
        out.write("Nobody watches %s\n" % (presentity,))
        return
    for watcher, state, expiresAt, owner in rows:
        out.write(
            "%s %s expires in %ds (manager %s)\n"
            % (watcher, state, max(0, int(expiresAt - now)), owner)
        )
