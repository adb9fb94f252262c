"""
What a REGISTER asks for, read from its Contact headers, and how bindings
are identified (RFC 3261 §10.3 and §19.1.4, RFC 5626 §6, RFC 5627).

Pure functions on text: the registrar calls them for every REGISTER, and
hypothesis feeds them hostile input.
"""

from __future__ import annotations

import hashlib
import re
from typing import List, Optional, Tuple

from presence.sip.headers import HeaderError, NameAddr, parseDelta, unquote
from presence.sip.uri import SipURI, URIError, normaliseEscapes, parseURI

_Q = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z")

#: The largest reg-id accepted (RFC 5626 §4.2: 1 to 2**31-1).
MAX_REG_ID = 2**31 - 1
#: The longest +sip.instance value kept.
MAX_INSTANCE = 256


class ContactError(ValueError):
    """
    A Contact header a registrar cannot take; its text is the reason
    phrase of the 400.
    """


class ContactSpec:
    """
    One Contact of a REGISTER, checked.

    @ivar uri: the contact URI, as written (without brackets).
    @ivar expires: its C{expires} parameter, or L{None}.
    @ivar q: its C{q} preference, or L{None}.
    @ivar instance: its C{+sip.instance}, unquoted (C{<urn:uuid:...>}),
        or empty.
    @ivar regId: its C{reg-id}, or 0.
    """

    __slots__ = ("uri", "expires", "q", "instance", "regId")

    def __init__(
        self,
        uri: str,
        expires: Optional[int] = None,
        q: Optional[float] = None,
        instance: str = "",
        regId: int = 0,
    ) -> None:
        self.uri = uri
        self.expires = expires
        self.q = q
        self.instance = instance
        self.regId = regId

    def __repr__(self) -> str:
        return "<ContactSpec %s expires=%r q=%r instance=%r reg-id=%d>" % (
            self.uri, self.expires, self.q, self.instance, self.regId
        )

    @property
    def key(self) -> str:
        """
        What identifies the binding this contact makes: see L{bindingKey}.
        """
        return bindingKey(self.uri, self.instance, self.regId)


def parseContacts(values: List[str]) -> Tuple[bool, List[ContactSpec]]:
    """
    Read the Contact values of a REGISTER (one per element, as the codec
    splits them).

    @return: C{(True, [])} for the wildcard C{*}, else C{(False, specs)};
        no Contact at all gives C{(False, [])}, a query for the bindings.
    @raise ContactError: for a malformed contact, or a wildcard that is
        not alone (RFC 3261 §10.3 step 6: the Expires condition is the
        caller's).
    """
    stripped = [value.strip() for value in values]
    if "*" in stripped:
        if len(stripped) != 1:
            raise ContactError("Wildcard Contact Not Alone")
        return True, []
    specs = []
    for value in stripped:
        try:
            address = NameAddr.fromString(value)
            parseURI(address.uri)
        except (HeaderError, URIError) as e:
            raise ContactError(str(e) or "Bad Contact")
        params = address.params
        expires = None
        text = params.get("expires")
        if "expires" in params:
            try:
                expires = parseDelta(text or "")
            except HeaderError:
                raise ContactError("Bad Contact expires")
        q = None
        if "q" in params:
            text = params.get("q") or ""
            if not _Q.match(text):
                raise ContactError("Bad Contact q")
            q = float(text)
        instance = unquote(params.get("+sip.instance")) or ""
        if len(instance) > MAX_INSTANCE or any(c < " " or c == "\x7f" for c in instance):
            raise ContactError("Bad +sip.instance")
        regId = 0
        if "reg-id" in params:
            text = params.get("reg-id") or ""
            if not text.isdigit() or not text.isascii() or len(text) > 10 or not 0 < int(text) <= MAX_REG_ID:
                raise ContactError("Bad reg-id")
            if not instance:
                # RFC 5626 §5.2: reg-id only with +sip.instance.
                raise ContactError("reg-id Without +sip.instance")
            regId = int(text)
        specs.append(ContactSpec(address.uri, expires, q, instance, regId))
    return False, specs


def canonicalContact(uri: str) -> str:
    """
    The contact URI reduced to what RFC 3261 §19.1.4 compares: scheme,
    user (escapes normalised) and password, host (case-folded) and port,
    and the C{transport}, C{maddr} and C{user} parameters.  Other
    parameters do not make a different binding.  A URI of another scheme
    compares as written.
    """
    try:
        parsed = parseURI(uri)
    except URIError:
        return uri
    if not isinstance(parsed, SipURI):
        return str(parsed)
    user = "" if parsed.user is None else normaliseEscapes(parsed.user)
    if parsed.password is not None:
        user += ":" + parsed.password
    extra = "".join(
        ";%s=%s" % (name, (parsed.params.get(name) or "").lower())
        for name in ("transport", "maddr", "user")
        if name in parsed.params
    )
    port = "" if parsed.port is None else ":%d" % (parsed.port,)
    return "%s:%s@%s%s%s" % (parsed.scheme, user, parsed.host.lower(), port, extra)


def bindingKey(uri: str, instance: str = "", regId: int = 0) -> str:
    """
    What identifies a binding within its AOR: the instance and reg-id when
    the contact has an instance (RFC 5626 §6, RFC 5627 §7: a new contact
    of the same instance replaces the old one), else the contact URI
    compared as RFC 3261 §10.3 step 7 says.
    """
    if instance:
        return "instance %s %d" % (instance, regId)
    return "contact " + canonicalContact(uri)


def bindingId(aor: str, key: str) -> str:
    """
    The store id of the binding C{key} of C{aor}: derived, not random, so
    that two REGISTERs writing the same binding at once write one row.
    """
    return hashlib.sha256((aor + "\n" + key).encode("utf-8")).hexdigest()[:32]


def formatContact(uri: str, expires: int, q: Optional[float], instance: str, regId: int) -> str:
    """
    A Contact value of the 200 to a REGISTER: one current binding with the
    seconds it has left (RFC 3261 §10.3 step 8).
    """
    text = "<%s>;expires=%d" % (uri, expires)
    if q is not None:
        text += ";q=%s" % (formatQ(q),)
    if instance:
        text += ';+sip.instance="%s"' % (instance.replace("\\", "\\\\").replace('"', '\\"'),)
    if regId:
        text += ";reg-id=%d" % (regId,)
    return text


def formatQ(q: float) -> str:
    """
    A q-value as RFC 3261 §20.10 writes it: at most three decimals.
    """
    text = "%.3f" % (q,)
    text = text.rstrip("0")
    return text + "0" if text.endswith(".") else text
