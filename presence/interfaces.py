"""
The seams of the presence server, as C{zope.interface} interfaces.

Each part talks to its collaborators only through these, so a test swaps a
real part for a small fake and checks it with
C{zope.interface.verify.verifyObject}.  One block per interface.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


# --- store ------------------------------------------------------------------


class IStore(Interface):
    """
    Durable storage of subscriptions and publications.

    The subscription manager serves from memory and writes through to a
    store, then rebuilds its memory from it on start.  Every method returns
    a Deferred and never blocks the reactor.

    Contract shared by every implementation:

      - a write's Deferred fires only once the write is durable (committed),
        so a 200 OK sent from its callback survives a crash;
      - writes are applied in the order they were issued;
      - a failed write fails only its own Deferred;
      - reads and writes fail with
        L{presence.store.errors.StoreNotRunning} before C{start()} has fired
        or once C{stop()} was called;
      - records cross the interface as the immutable values of
        L{presence.store.records}, never as database rows;
      - lists come back in no particular order.
    """

    pendingWrites = Attribute(
        "Writes issued and not yet committed: how far the database is "
        "behind (the manager sheds load above a threshold, "
        "L{presence.manager.overload})."
    )

    def start():
        """
        Open the storage and bring its schema up to date.

        @return: a Deferred firing with C{None} when reads and writes may be
            issued, or failing (e.g. L{presence.store.errors.SchemaTooNew}).
        """

    def stop():
        """
        Refuse new work, wait for every queued write to be committed and
        every read to finish, then release resources.

        @return: a Deferred firing with C{None} once stopped.
        """

    def addSubscription(record):
        """
        Insert a new subscription.

        @param record: a L{presence.store.records.SubscriptionRecord}.
        @return: a Deferred firing with C{None} once committed; failing with
            L{presence.store.errors.DuplicateRecord} if its id exists.
        """

    def updateSubscription(subscriptionId, **changes):
        """
        Change some fields of a subscription (e.g. C{localCSeq},
        C{expiresAt}, C{state}); the id cannot change.

        @param changes: record field names mapped to new values.
        @return: a Deferred firing with C{None} once committed; failing with
            L{presence.store.errors.NoSuchRecord} if there is no such
            subscription, C{ValueError} for an unknown field.
        """

    def removeSubscription(subscriptionId):
        """
        Delete a subscription; deleting a missing one is not an error.

        @return: a Deferred firing with C{None} once committed.
        """

    def putPublication(record):
        """
        Insert a publication or replace the one with the same entity-tag.

        @param record: a L{presence.store.records.PublicationRecord}.
        @return: a Deferred firing with C{None} once committed.
        """

    def replacePublication(oldEtag, record):
        """
        Replace the publication C{oldEtag} by C{record} (a refresh or a
        modification gives a publication a new entity-tag, RFC 3903 §6),
        atomically, and only if C{oldEtag} is still stored: of two
        managers refreshing one entity-tag at once, one wins.

        @param record: a L{presence.store.records.PublicationRecord}.
        @return: a Deferred firing with C{None} once committed, or failing
            with L{presence.store.errors.NoSuchRecord} (nothing changed)
            when C{oldEtag} is not stored.
        """

    def removePublication(etag):
        """
        Delete a publication; deleting a missing one is not an error.

        @return: a Deferred firing with C{None} once committed.
        """

    def removeExpired(now):
        """
        Delete every subscription and publication whose C{expiresAt} is at
        or before C{now} (epoch seconds).

        @return: a Deferred firing with C{(subscriptionsRemoved,
            publicationsRemoved)} once committed.
        """

    def getSubscription(subscriptionId):
        """
        Read one subscription.

        @return: a Deferred firing with a
            L{presence.store.records.SubscriptionRecord} or C{None}.
        """

    def loadSubscriptions(owner=None, after=None, limit=None):
        """
        Read all subscriptions, or only those of one manager node; or one
        page of them, in id order.

        @param owner: a manager node name, or C{None} for all.
        @param after: only ids above this one (the last id of the
            previous page), or C{None}.
        @param limit: at most this many (ordered by id), or C{None} for all.
        @return: a Deferred firing with a list of
            L{presence.store.records.SubscriptionRecord}.
        """

    def loadPublications():
        """
        Read all publications.

        @return: a Deferred firing with a list of
            L{presence.store.records.PublicationRecord}.
        """

    def getPublication(etag):
        """
        Read one publication (a manager of a cluster asked to refresh an
        entity-tag that replication has not brought it yet).

        @return: a Deferred firing with a
            L{presence.store.records.PublicationRecord} or C{None}.
        """

    def findSubscription(presentity, callId, localTag):
        """
        Read the subscription of one dialog, whoever owns it (a manager of
        a cluster asked to serve a dialog it does not hold).

        @param presentity: the watched AOR (the index the lookup uses).
        @param callId: the dialog's Call-ID.
        @param localTag: our tag in the dialog.
        @return: a Deferred firing with a
            L{presence.store.records.SubscriptionRecord} or C{None}.
        """


class IBindingStore(Interface):
    """
    Durable storage of registration bindings, for the registrar
    (L{presence.registrar}).

    The same contract as L{IStore} (Deferreds, commit before the callback,
    writes applied in issue order, immutable records, refusal when not
    running); both store implementations provide both interfaces, and
    their writes share one group commit.
    """

    def putBinding(record):
        """
        Insert a binding or replace the one with the same id.

        @param record: a L{presence.store.records.BindingRecord}.
        @return: a Deferred firing with C{None} once committed.
        """

    def removeBinding(bindingId):
        """
        Delete a binding; deleting a missing one is not an error.

        @return: a Deferred firing with C{None} once committed.
        """

    def loadBindings(owner=None):
        """
        Read all bindings, or only those one manager node holds.

        @param owner: a manager node name, or C{None} for all.
        @return: a Deferred firing with a list of
            L{presence.store.records.BindingRecord}.
        """


class ILeaseStore(Interface):
    """
    The managers' leases, which fence a manager of a cluster
    (L{presence.cluster.lease}): liveness kept in the database itself,
    so that a manager cut off from its peers, but not from the database,
    is not taken for dead while it still serves its watchers, and stops
    serving them before anyone may adopt them.

    The same contract as L{IStore}; both store implementations provide it
    and lease writes share the group commit.  Times are measured on the
    store's clock: PostgreSQL's C{clock_timestamp()} for the SQL store on
    PostgreSQL (the managers' clocks may differ), the host's clock for
    SQLite (all its users share the host), an injected clock for the
    memory store.  A caller only ever compares durations, never its own
    clock with a stored time.
    """

    def registerLease(node, duration):
        """
        Take a new lease for C{node}, valid for C{duration} seconds: insert
        its row with epoch 1, or bump the epoch of the existing one (which
        fences any earlier incarnation still renewing it).

        @return: a Deferred firing with the
            L{presence.store.records.LeaseRecord} now held.
        """

    def renewLease(node, epoch, duration):
        """
        Extend C{node}'s lease to C{duration} seconds from now if it still
        holds C{epoch}: C{UPDATE ... WHERE node = ? AND epoch = ?}.

        @return: a Deferred firing with the renewed
            L{presence.store.records.LeaseRecord}, or L{None} when the
            epoch changed (another manager fenced C{node}) or the row is
            gone.
        """

    def fenceAndAdopt(formerOwner, owner):
        """
        Make C{owner} the owner of every subscription of C{formerOwner} (a
        manager of the cluster that died), only if C{formerOwner}'s lease
        has expired, in one transaction: bump its epoch where C{expires_at
        < now}, and move the subscriptions only if that matched (or
        C{formerOwner} has no lease at all: it never ran with leases).
        Atomic: when two managers adopt the same one at once, each
        subscription goes to exactly one.

        @return: a Deferred firing, once committed, with
            C{(records, remaining)}: the list of adopted
            L{presence.store.records.SubscriptionRecord} and C{0.0}, or
            L{None} and the seconds the lease still runs when it is live
            (nothing was changed).
        """

    def loadLeases():
        """
        Read every lease.

        @return: a Deferred firing with a list of
            L{presence.store.records.LeaseRecord}.
        """


# --- billing ----------------------------------------------------------------


class IAuthorizer(Interface):
    """
    Billing as a subscription manager sees it: accounts for digest
    authentication, and who may watch whom.

    Small on purpose, so that a remote implementation (a Perspective Broker
    client of a C{twistd presence --role=billing} node shared by a cluster
    of managers) provides it as well as the embedded one reading the store
    (L{presence.billing.authorizer.EmbeddedAuthorizer}).  Contract shared by
    every implementation:

      - every method returning a result returns a Deferred and never blocks
        the reactor; answers may come from memory (a replica of the
        billing tables, or a cache that lives a short time), which follows
        the changes of accounts and policies;
      - values cross the interface as plain immutable data
        (L{presence.billing.records.AccountInfo}, decision strings), never
        database rows, so they can be copied over PB as they are;
      - a failure (database or billing node unreachable) fails the
        Deferred; the caller answers 500 and decides nothing.
    """

    def account(aor):
        """
        Look up an account by its canonical AOR (C{sip:user@domain}).

        @return: a Deferred firing with an
            L{presence.billing.records.AccountInfo} (digest HA1 values,
            status, whether presence is enabled, customer), or L{None} when
            there is no such account.
        """

    def watchDecision(watcher, presentity):
        """
        May C{watcher} see C{presentity}?  Both are canonical AORs.  See
        L{presence.billing.policy.decide} for the resolution order.

        @return: a Deferred firing with C{"allow"} (active subscription),
            C{"ask"} (pending until the owner allows it) or C{"block"}.
        """

    def addChangeListener(listener):
        """
        Call C{listener(aors)} after accounts or policies changed and the
        answers reflect the change: C{aors} is the frozenset of AORs whose
        account or watch rules changed, or L{None} when anything may have
        changed (the listener should then re-check everything it holds).
        """

    def removeChangeListener(listener):
        """
        Stop calling C{listener}; removing an unknown listener is a no-op.
        """


# --- cluster ----------------------------------------------------------------


class IPeerGroup(Interface):
    """
    The cluster as a subscription manager sees it (L{presence.cluster}):
    the manager reports its own publications' changes and asks for help
    with an entity-tag or a dialog it does not hold.  A manager without
    peers has none (C{manager.cluster is None}) and behaves as a single
    process.
    """

    def publicationChanged(publication, replaced):
        """
        A publication this manager accepted is committed: a new one, a
        modification or a refresh (which replaced C{replaced}, a
        L{presence.manager.state.Publication}, or L{None}).  Every peer
        gets it.
        """

    def publicationRemoved(publication):
        """
        A publication this manager holds as its own ended (C{Expires: 0}
        or expiry).  Every peer drops it.
        """

    def publicationMissing(etag):
        """
        A PUBLISH names an entity-tag this manager does not hold (another
        manager may have accepted it an instant ago).

        @return: a Deferred firing once the manager holds it if it exists
            anywhere, or L{None} when there is nothing to wait for.
        """

    def dialogMissing(request, key):
        """
        An in-dialog request names a dialog this manager does not hold:
        its owner may have died, or another manager may hold it.

        @param key: the dialog key (L{presence.manager.state.DialogKey}).
        @return: a Deferred firing once the manager holds the dialog if it
            can get it, or L{None} when there is nothing to wait for.
        """


class IPeer(Interface):
    """
    One manager of a cluster as another sees it: the local node itself
    (L{presence.cluster.group.LocalPeer}) or a peer over Perspective Broker
    (L{presence.cluster.link.RemotePeer}), so the cluster logic runs the
    same over PB and in tests without a network.  Each provider knows who
    is calling (the node that logged in).  Every method returns a Deferred.
    """

    def applyUpdates(updates):
        """
        Apply a list of L{presence.cluster.messages.PublicationUpdate}.

        @return: a Deferred firing with the number applied (duplicates and
            stale ones are not).
        """

    def page(offset, limit):
        """
        One page of the node's replicated state (live publications and
        recent removals): C{offset} 0 takes a new snapshot, the next pages
        continue it.

        @return: a Deferred firing with C{(updates, nextOffset)},
            C{nextOffset} -1 after the last page.
        """

    def adopted(formerOwner, owner):
        """
        C{owner} has adopted the subscriptions of C{formerOwner}; if that
        is the node called, it drops those it no longer owns.
        """

    def handOver(subscriptionId):
        """
        Give the caller the subscription C{subscriptionId}: stop serving
        it and record the caller as its owner in the store.

        @return: a Deferred firing with C{True} once committed, C{False}
            when this node does not hold it.
        """

    def takeOver(items):
        """
        The caller, draining before maintenance, has recorded the node
        called as the owner of these subscriptions in the store: serve
        them.  C{items} is a list of C{[subscriptionId, stale]} pairs;
        a stale one (a change not yet told, or a NOTIFY in flight when it
        was handed over) gets a NOTIFY with the current state.

        @return: a Deferred firing with how many are now served.
        """
