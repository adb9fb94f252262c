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


# --- event packages -----------------------------------------------------------


class IEventPackage(Interface):
    """
    One SIP event package (RFC 6665 §7) served by the subscription
    manager: C{presence} (RFC 3856, L{presence.packages.presence}), and
    any other given to it in its L{IPackageRegistry}.

    The manager does everything an event package shares: the SUBSCRIBE
    dialog, authentication, billing, expiry, the store, NOTIFY with rate
    control, PUBLISH entity-tags (RFC 3903) and cluster replication.  A
    package says only what its bodies mean.  A SUBSCRIBE or PUBLISH is
    routed by its C{Event} header to the package of that name; one that
    names no package is answered 489 Bad Event with C{Allow-Events} listing
    them all.

    How to add an event package:

      1. Write a class providing this interface (a module under
         L{presence.packages}, next to L{presence.packages.presence}):
         its C{event} name, its body types, and pure functions on bytes
         (no I/O, no reactor: they run on the reactor thread for every
         request).  Refuse hostile bodies in L{parse} as
         L{presence.pidf} does for PIDF (size and depth limits, no
         entities, no DTD).
      2. Add it to the registry the manager is built with
         (L{presence.packages.PackageRegistry}, see
         L{presence.packages.defaultPackages}); nothing in the manager or
         its router changes.  The core's C{Allow-Events} and C{Accept}
         follow the registry.
      3. Test it over the sans-IO harness (C{tests/harness.py}) with
         C{verifyObject(IEventPackage, package)}.

    Resources are AORs of the served domains, one state per (resource,
    package): publications of C{dialog} never mix with those of
    C{presence}.
    """

    event = Attribute(
        "The event package name of the C{Event} header, lower case "
        "(C{\"presence\"}, C{\"dialog\"}, ...)."
    )

    bodyTypes = Attribute(
        "The content types of NOTIFY bodies a watcher may C{Accept}, lower "
        "case; the first is the default and the one NOTIFYs carry.  A "
        "SUBSCRIBE whose C{Accept} header names none of them (nor "
        "C{type/*}, C{*/*}) is answered 406 with C{Accept} the default; "
        "one without C{Accept} gets the default."
    )

    publishTypes = Attribute(
        "The content types a PUBLISH body may have, lower case; another is "
        "answered 415 with C{Accept} listing these.  Empty for a package "
        "whose state nobody publishes (a PUBLISH then gets 489)."
    )

    ownerOnly = Attribute(
        "C{True} when only the resource's own account may subscribe (its "
        "mailbox, its watcher list): another watcher gets 403, and billing's "
        "watch rules are not asked.  C{False}: billing decides "
        "(L{IAuthorizer.watchDecision}), as for presence."
    )

    def parse(body, resource):
        """
        Parse and validate a published body of one of L{publishTypes}.

        @param body: the PUBLISH body (bytes, at most the SIP body limit).
        @param resource: the AOR it is published for.
        @return: the document, an immutable value the manager keeps with the
            publication and later gives to L{compose}, never looks into.
        @raise ValueError: the body is malformed, hostile or not about
            C{resource}; the PUBLISH is answered 400 with the message as
            reason phrase (keep it short and free of the body's text).
        """

    def compose(resource, documents):
        """
        Compose the live publications of C{resource} into the one body its
        watchers get.

        @param documents: what L{parse} returned, one per live
            publication, newest first (never empty).
        @return: the body (bytes, of the default body type).  Must be
            deterministic: the same documents give the same bytes, so "has
            the state changed?" is a comparison of bytes and a watcher is
            never notified of a non-change.
        """

    def withoutState(resource, registered):
        """
        The body for C{resource} when nothing is published for it.

        @param registered: the contact of its preferred live registration
            binding, or L{None} when it has none (presence: open with that
            contact, or closed).
        @return: the body (bytes), deterministic as L{compose}.
        """

    def initialState(params):
        """
        The C{packageState} of a new subscription, from the parameters of
        its SUBSCRIBE's C{Event} header (the dialog package's C{call-id},
        C{from-tag} and C{to-tag}, RFC 4235 section 3.2, which ask for one
        dialog).

        @param params: parameter name (lower case) to value (L{None} for a
            parameter without value).
        @return: a string, C{""} for nothing.
        """

    def render(subscription, body):
        """
        Rewrite the composed C{body} for one NOTIFY of C{subscription} (the
        dialog package's C{version}, which grows by one per NOTIFY of a
        subscription).  Called once per NOTIFY that carries state.

        What the package keeps per subscription lives in
        C{subscription.packageState} (a string, C{""} at first): change it
        here and the manager writes it to the store with the subscription,
        so it survives a restart and an adoption by another manager.

        @param subscription: a L{presence.manager.state.Subscription}
            (read C{id}, C{watcher}, C{presentity}, C{eventId},
            C{packageState}; change only C{packageState}).
        @return: the body to send.
        """


class IWatcherInfoPackage(IEventPackage):
    """
    An event package whose state is the manager's own: the watchers of
    another package's resources (the C{.winfo} template package, RFC 3857:
    C{presence.winfo}).  Nothing is published for it; the manager gives
    it the subscriptions to a resource (L{bind}) and recomposes its
    resources whenever a watcher of theirs comes, goes or changes state.
    """

    reports = Attribute("The event package whose watchers it lists (C{\"presence\"}).")

    def bind(watchers):
        """
        Called once by the manager serving the package.

        @param watchers: C{watchers(aor)} gives the live subscriptions
            (L{presence.manager.state.Subscription}) to C{aor} in
            L{reports}.
        """

    def changing(subscription, reason):
        """
        Called before the manager recomposes the resource of
        C{subscription} (one in L{reports}) because it came, went or
        changed state, while someone watches that resource's watchers.

        @param reason: why it ended (an RFC 6665 C{reason}: C{rejected},
            C{timeout}, ...), or L{None} if it did not end.
        """


class IPackageRegistry(Interface):
    """
    The event packages a subscription manager serves, by name.
    """

    def get(event):
        """
        @param event: an C{Event} header's package name, lower case.
        @return: the L{IEventPackage} of that name, or L{None}.
        """

    def names():
        """
        @return: the package names in the order given, for C{Allow-Events}.
        """

    def __iter__():
        """
        Iterate over the packages, in the order given.
        """


# --- the subscription manager ----------------------------------------------------


class ISubscriptionManager(Interface):
    """
    A running subscription manager as the admin side sees it: the metrics
    endpoint (L{presence.admin.metrics}), the manhole's console
    (L{presence.admin.console}).  Read and end things; never reach into
    the manager's dictionaries.
    """

    node = Attribute("This manager's node name (the C{owner} of its subscriptions).")

    packages = Attribute("The L{IPackageRegistry} it serves.")

    counters = Attribute(
        "What went wrong, a dict: C{storeErrors} (failed store writes), "
        "C{billingErrors} (requests billing could not decide), C{rejected} "
        "(subscriptions billing refused)."
    )

    notifyCounters = Attribute(
        "NOTIFYs, a dict: C{sent}, C{failed}, C{coalesced} (folded into a "
        "later one), C{held} (held back while fenced), C{paced}."
    )

    publishToNotify = Attribute(
        "Seconds from a PUBLISH's arrival (or its replicated update's) to "
        "each NOTIFY carrying its change, a L{presence.latency.LatencyHistogram}."
    )

    gate = Attribute(
        "The L{presence.billing.gate.AuthGate} in front of both handlers "
        "(its C{counters}), or L{None} without billing."
    )

    authorizer = Attribute(
        "The L{IAuthorizer} it asks (its C{counters}, where it keeps some), "
        "or L{None} without billing."
    )

    overload = Attribute(
        "The L{presence.manager.overload.OverloadGuard} (its C{counters})."
    )

    draining = Attribute(
        "Whether it drains before maintenance (L{setDraining}): new work is "
        "refused, what it holds is served until handed over."
    )

    fenced = Attribute(
        "Whether its NOTIFYs are held back (a manager of a cluster whose "
        "lease is not safe)."
    )

    def setDraining(draining):
        """
        Stop taking new work before maintenance (C{True}: new SUBSCRIBEs,
        initial PUBLISHes, in-dialog requests for dialogs not held and
        OPTIONS get 503, so the dispatcher takes it out of rotation), or
        take it again (C{False}).
        """

    def notifyPaced(subscriptionIds):
        """
        Send each of these subscriptions held a NOTIFY with the current
        state, paced at C{[cluster] adopt_notify_rate} per second (ids not
        held are skipped).

        @return: how many were queued.
        """

    def resourceTable(event="presence"):
        """
        @return: the resources of package C{event} this manager holds (those
            with publications or watchers), a mapping of AOR to
            L{presence.manager.state.Presentity} to read, never change.
        """

    def sizes():
        """
        How much the manager holds, a dict of counts: C{subscriptions},
        C{dialogs}, C{publications} (live, all packages), C{presentities}
        (resources of all packages with publications or watchers) and
        C{pacedWaiting} (subscriptions waiting for a paced NOTIFY).
        """

    def subscription(subscriptionId):
        """
        @return: the live L{presence.manager.state.Subscription} of that
            id, or L{None}.
        """

    def allSubscriptions():
        """
        @return: a list of every live subscription (a copy: ending one while
            iterating is fine).
        """

    def resource(aor, event="presence"):
        """
        @return: the L{presence.manager.state.Presentity} holding the
            publications and watchers of C{aor} in package C{event}, or
            L{None} when it has neither.
        """

    def documentOf(aor, event="presence"):
        """
        @return: the body the watchers of C{aor} in package C{event} get
            now (bytes), composed if need be.
        """

    def terminate(subscription, reason):
        """
        End C{subscription} now: forget it, delete it from the store, then
        send its final NOTIFY with C{Subscription-State:
        terminated;reason=REASON} (none when C{reason} is L{None}).

        @return: a Deferred firing once the store has deleted it.
        """


class IClusterMember(Interface):
    """
    A subscription manager as its cluster (L{presence.cluster.group})
    sees it: replicated publications in, NOTIFYs held while fenced, and
    subscriptions that change owner.  The group attaches itself by setting
    L{cluster}.
    """

    store = Attribute("The L{IStore} (with L{ILeaseStore}) the manager writes to.")

    config = Attribute("The L{presence.config.Config} it runs with.")

    cluster = Attribute(
        "The L{IPeerGroup} the manager reports to, or L{None} without peers; "
        "set by the group when it attaches and detaches."
    )

    node = Attribute("Its node name.")

    draining = Attribute("Whether it drains (L{ISubscriptionManager.setDraining}).")

    def setDraining(draining):
        """
        See L{ISubscriptionManager.setDraining}.
        """

    def subscription(subscriptionId):
        """
        @return: the live L{presence.manager.state.Subscription} of that id,
            or L{None}.
        """

    def notifyPaced(subscriptionIds):
        """
        See L{ISubscriptionManager.notifyPaced}.
        """

    def fence():
        """
        Hold back every NOTIFY from now on (the lease is not safe).
        """

    def unfence():
        """
        Send what was held back, each held subscription its current state
        once.

        @return: how many subscriptions were held.
        """

    def heldNotifies():
        """
        @return: the ids of the subscriptions whose NOTIFY is held back
            (final ones of ended subscriptions included).
        """

    def dropHeld(subscriptionIds):
        """
        Forget the held-back NOTIFYs of these subscriptions (another manager
        serves them now).

        @return: how many were held.
        """

    def holdsDialog(key):
        """
        @param key: a L{presence.manager.state.DialogKey}.
        @return: whether the manager serves that dialog.
        """

    def subscriptionIds():
        """
        @return: a set of the ids of the subscriptions it serves.
        """

    def isStale(subscriptionId):
        """
        @return: whether that subscription's watcher may not have the
            current state (a change not yet told, a NOTIFY in flight or
            waiting for its paced turn): one to NOTIFY after a hand-over.
        """

    def adopt(records, notify=True):
        """
        Serve subscriptions whose ownership just moved to this manager in
        the store (L{presence.store.records.SubscriptionRecord}).

        @param notify: send each active watcher its current state, paced.
        @return: how many are now served (expired ones end instead).
        """

    def release(subscriptionId, owner):
        """
        Hand a subscription over to the manager C{owner}, without a final
        NOTIFY.

        @return: a Deferred firing with C{True} once committed, C{False}
            when not held or the write failed.
        """

    def disown(subscriptionIds):
        """
        Stop serving subscriptions another manager now owns, without a final
        NOTIFY.

        @return: how many were dropped.
        """

    def parsePublication(event, body, resource):
        """
        Parse a replicated body with the package C{event}
        (L{IEventPackage.parse}).

        @raise ValueError: unknown package, or a body the package refuses.
        """

    def applyRemote(puts, removes):
        """
        Apply publications another manager accepted (C{puts}, a list of
        L{presence.manager.state.Publication}) and ended (C{removes}:
        C{(presentity, etag)} pairs); recompose and notify once per
        resource.  Nothing is written.

        @return: how many changed the manager's memory.
        """

    def publication(etag):
        """
        @return: the live publication of that entity-tag, or L{None} (also
            while a request has claimed it to refresh or modify it).
        """

    def heldPublication(presentity, etag):
        """
        @return: the publication of that entity-tag held for C{presentity},
            claimed ones included, or L{None}.
        """

    def publicationKeys():
        """
        @return: a list of C{(presentity, etag)} of every publication held,
            claimed ones included: what a resync walks.
        """


class INotifyHost(Interface):
    """
    What the L{presence.manager.notifier.Notifier} asks of its manager
    while it builds, sends and follows up NOTIFYs.
    """

    def notifyBody(subscription):
        """
        The current state for a NOTIFY of C{subscription}, rendered for it
        by its package (L{IEventPackage.render}; a changed C{packageState}
        is written to the store).

        @return: C{(contentType, body)}.
        """

    def flowFor(subscription):
        """
        @return: the L{presence.sip.target.Target} of the flow the watcher
            registered its contact over (RFC 5626), or L{None}.
        """

    def terminate(subscription, reason):
        """
        End C{subscription} (L{ISubscriptionManager.terminate}).
        """

    def storeFailed(failure, what):
        """
        Count and log a failed store write of C{what}.
        """
