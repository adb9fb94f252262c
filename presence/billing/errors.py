"""
The one failure of billing lookups that callers act on.
"""

from __future__ import annotations


class BillingUnavailable(Exception):
    """
    Billing cannot answer now, whichever authorizer is asked: the embedded
    one has not loaded its accounts (the database could not be read since
    start-up, or it was stopped first); the remote one is not logged in to
    the billing node, the call timed out, the connection was lost or the
    node failed.  The manager answers 500 with Retry-After and decides
    nothing.
    """
