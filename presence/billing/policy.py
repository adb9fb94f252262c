"""
Who may watch whom: the decision, as a pure function of what billing
stores, so it is the same in every implementation of the authorizer and is
tested without a database.

Resolution order, first match wins:

  1. the owner of a presentity always sees itself;
  2. a presentity whose account is blocked or has presence disabled is
     seen by nobody, and a watcher in that state sees nobody (its existing
     subscriptions end when that changes);
  3. the presentity's rule for the watcher's AOR (C{allow}, C{ask} or
     C{block}; one rule per pattern, so an explicit block for the AOR is
     what it says);
  4. its rule for the watcher's domain (C{@domain});
  5. its rule for everyone (C{*});
  6. the default: watchers of the presentity's customer are allowed,
     everyone else is blocked.
"""

from __future__ import annotations

from typing import Mapping, Optional

from presence.billing.records import (
    ALLOW,
    BLOCK,
    EVERYONE,
    AccountInfo,
    customerOf,
    domainOf,
)


def decide(
    watcher: str,
    presentity: str,
    watcherAccount: Optional[AccountInfo],
    presentityAccount: Optional[AccountInfo],
    rules: Mapping[str, str],
) -> str:
    """
    Decide whether C{watcher} may see C{presentity}.

    @param watcher: the watcher's canonical AOR.
    @param presentity: the presentity's canonical AOR.
    @param watcherAccount: the watcher's account, or L{None} if it has none.
    @param presentityAccount: likewise for the presentity.
    @param rules: the presentity's watch rules, pattern to action.
    @return: C{"allow"}, C{"ask"} or C{"block"}.
    """
    if watcher == presentity:
        return ALLOW
    if presentityAccount is not None and not presentityAccount.usable:
        return BLOCK
    if watcherAccount is not None and not watcherAccount.usable:
        return BLOCK
    for pattern in (watcher, "@" + domainOf(watcher), EVERYONE):
        action = rules.get(pattern)
        if action is not None:
            return action
    if customerOf(watcher, watcherAccount) == customerOf(presentity, presentityAccount):
        return ALLOW
    return BLOCK
