"""
PUBLISH (RFC 3903 §6), for every event package that takes publications:
a new publication, a modification or a refresh (each mints a new
entity-tag), a removal.

A user publishes only its own state.  The body is parsed and validated by
the package (L{IEventPackage.parse}); the state changes in memory when its
write commits; until then the entity-tag being changed is claimed, so that
a racing request naming it gets 412.  In a cluster, an entity-tag this
manager does not hold may be one another manager accepted an instant ago:
the cluster is asked before answering 412.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.python.failure import Failure

from presence.interfaces import IEventPackage
from presence.manager.state import Publication, newId
from presence.manager.subscribe import expiresOf
from presence.sip.headers import HeaderError
from presence.sip.message import Request
from presence.sip.transaction import ServerTransaction
from presence.sip.uri import URIError, normaliseAOR
from presence.store.errors import NoSuchRecord


class PublishHandler:
    """
    Serves the PUBLISHes the manager's router gives it, with the package
    their C{Event} header names.
    """

    def __init__(self, manager: Any) -> None:
        """
        @param manager: the L{presence.manager.manager.SubscriptionManager}
            whose model, store and admission it works with.
        """
        self.manager = manager

    def received(self, request: Request, tx: ServerTransaction, package: IEventPackage, params: Any) -> None:
        manager = self.manager
        core = manager.core
        presentity = manager.resourceOf(request)
        if presentity is None:
            core.respond(tx, 404)
            return
        if "sip-if-match" not in request.headers and manager.shed(tx):
            return
        if manager.gate is None:
            self._admitted(None, request, tx, package, presentity)
            return
        try:
            publisher = normaliseAOR(request.fromAddr().uri)
        except (HeaderError, URIError) as e:
            core.respond(tx, 400, str(e) or "Bad From")
            return
        manager.admission.admit(request, tx, publisher, self._admitted, request, tx, package, presentity)

    def _admitted(
        self,
        publisher: Optional[str],
        request: Request,
        tx: ServerTransaction,
        package: IEventPackage,
        presentity: str,
        askCluster: bool = True,
    ) -> None:
        """
        An authenticated PUBLISH: a user publishes only its own state.

        @param askCluster: ask the cluster for an entity-tag we do not hold.
        """
        manager = self.manager
        core = manager.core
        config = manager.config
        model = manager.model
        if publisher is not None and publisher != presentity:
            core.respond(tx, 403, "Not Your Presentity")
            return
        expires = expiresOf(request, config.publishDefaultExpires, config.publishMaxExpires)
        ifMatch = request.header("sip-if-match")
        body = request.body
        if expires and expires < config.publishMinExpires:
            core.respond(tx, 423, None, [("Min-Expires", str(config.publishMinExpires))])
            return
        document = None
        contentType = ""
        if body and expires:
            contentType = (request.header("content-type") or "").split(";")[0].strip().lower()
            if contentType not in package.publishTypes:
                core.respond(tx, 415, None, [("Accept", ", ".join(package.publishTypes))])
                return
            try:
                document = package.parse(body, presentity)
            except ValueError as e:
                core.respond(tx, 400, str(e))
                return
        elif ifMatch is None:
            core.respond(tx, 400, "Missing Body" if expires else "Missing SIP-If-Match")
            return
        old = None
        if ifMatch is not None:
            old = model.publications.get(ifMatch)
            cluster = manager.cluster
            if old is None and askCluster and cluster is not None:
                # Another manager may have accepted it an instant ago.
                d = cluster.publicationMissing(ifMatch)
                if d is not None:
                    d.addBoth(
                        lambda _: manager.admission.proceed(
                            tx, self._admitted, publisher, request, tx, package, presentity, False
                        )
                    )
                    manager.admission.hold(d)
                    return
            if old is None or old.presentity != presentity or old.event != package.event:
                core.respond(tx, 412)
                return
            # Claim the entity-tag: a racing PUBLISH naming it gets 412.
            model.claim(old)
        if expires == 0:
            assert old is not None
            manager.store.removePublication(old.etag).addCallbacks(
                self._unpublished, self._failed, (tx, old), None, (tx, old, presentity, package.event)
            )
            return
        now = manager.clock.seconds()
        pres = model.resource(presentity, package.event)
        if document is None:
            # A refresh: same state, same age, same version.
            assert old is not None
            body, document, modifiedAt, version = old.body, old.document, old.modifiedAt, old.version
            contentType = old.contentType
        else:
            pres.version += 1
            modifiedAt, version = now, pres.version
        pub = Publication(
            newId(), presentity, body, document, now + expires, modifiedAt, version,
            event=package.event, contentType=contentType,
        )
        if old is None:
            written = manager.store.putPublication(pub.toRecord())
        else:
            # A new entity-tag replaces the old one (RFC 3903 §6), in one
            # write that fails if another manager replaced it first.
            written = manager.store.replacePublication(old.etag, pub.toRecord())
        written.addCallbacks(
            self._published, self._notWritten, (tx, pub, old, expires), None, (tx, pub, old)
        )

    def _notWritten(
        self, failure: Failure, tx: ServerTransaction, pub: Publication, old: Optional[Publication]
    ) -> None:
        """
        The write failed.  If the entity-tag was gone from the store,
        another manager refreshed, modified or removed it first: that one
        won, this one is answered 412 as if we had never held the tag
        (the cluster brings its outcome).  Anything else is a store fault.
        """
        manager = self.manager
        if old is not None and failure.check(NoSuchRecord):
            pres = manager.model.resources[pub.event].get(pub.presentity)
            if pres is not None:
                pres.publications.pop(old.etag, None)
                manager.model.release(pres, pub.event)
            manager.core.respond(tx, 412)
            return
        self._failed(failure, tx, old, pub.presentity, pub.event)

    def _published(
        self, _: Any, tx: ServerTransaction, pub: Publication, old: Optional[Publication], expires: int
    ) -> None:
        manager = self.manager
        pres = manager.model.put(pub, old)
        manager.core.respond(tx, 200, None, [("SIP-ETag", pub.etag), ("Expires", str(expires))])
        if manager.cluster is not None:
            manager.cluster.publicationChanged(pub, old)
        # Always recompose: even an identical body makes this publication
        # the newest, which may change what composition takes from it.
        # changed notifies only if the composed bytes differ.
        manager.changed(pres, pub.event, tx.started)

    def _unpublished(self, _: Any, tx: ServerTransaction, old: Publication) -> None:
        manager = self.manager
        manager.core.respond(tx, 200, None, [("Expires", "0")])
        if manager.cluster is not None:
            manager.cluster.publicationRemoved(old)
        manager.changed(manager.model.drop(old), old.event, tx.started)

    def _failed(
        self,
        failure: Failure,
        tx: ServerTransaction,
        old: Optional[Publication],
        presentity: str,
        event: str,
    ) -> None:
        """
        A PUBLISH could not be written: give the claimed entity-tag back,
        forget a resource created for it, answer 500.
        """
        manager = self.manager
        model = manager.model
        if old is not None:
            model.unclaim(old)
        else:
            pres = model.resources[event].get(presentity)
            if pres is not None:
                model.release(pres, event)
        manager.storeFailed(failure, "publication")
        manager.core.respond(tx, 500, "Database Unavailable", [("Retry-After", "5")])
