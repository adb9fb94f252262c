"""
Tests for L{presence.sip.uri}: SIP and SIPS URIs (RFC 3261 §19.1), other
schemes kept opaque, and the AOR the server files subscriptions under.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.sip.uri import (
    AbsoluteURI,
    SipURI,
    URIError,
    normaliseAOR,
    normaliseEscapes,
    parseURI,
    splitHostPort,
)


class TestSipURIParsing:
    def test_userAndHost(self) -> None:
        uri = SipURI.fromString("sip:alice@example.test")
        assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
            "sip",
            "alice",
            None,
            "example.test",
            None,
        )
        assert uri.params == {}
        assert uri.headers == ""

    def test_hostOnly(self) -> None:
        uri = SipURI.fromString("sip:example.test")
        assert uri.user is None
        assert uri.host == "example.test"

    def test_passwordAndPort(self) -> None:
        uri = SipURI.fromString("sip:alice:secret@example.test:5070")
        assert uri.user == "alice"
        assert uri.password == "secret"
        assert uri.port == 5070

    def test_emptyPassword(self) -> None:
        uri = SipURI.fromString("sip:alice:@example.test")
        assert uri.password == ""
        assert str(uri) == "sip:alice:@example.test"

    def test_sipsAndSchemeCase(self) -> None:
        assert SipURI.fromString("sips:bob@example.test").scheme == "sips"
        assert SipURI.fromString("SIP:bob@example.test").scheme == "sip"

    def test_params(self) -> None:
        """
        Parameter names are case-insensitive, so lower-cased; values are
        kept as they came; a parameter without a value maps to L{None}.
        """
        uri = SipURI.fromString("sip:bob@example.test;Transport=TCP;lr;maddr=192.0.2.1")
        assert uri.params == {"transport": "TCP", "lr": None, "maddr": "192.0.2.1"}

    def test_headers(self) -> None:
        uri = SipURI.fromString("sip:alice@atlanta.example?subject=project%20x&priority=urgent")
        assert uri.host == "atlanta.example"
        assert uri.headers == "subject=project%20x&priority=urgent"
        assert str(uri) == "sip:alice@atlanta.example?subject=project%20x&priority=urgent"

    def test_paramsAndHeaders(self) -> None:
        uri = SipURI.fromString("sip:atlanta.example;method=REGISTER?to=alice%40atlanta.example")
        assert uri.user is None
        assert uri.params == {"method": "REGISTER"}
        assert uri.headers == "to=alice%40atlanta.example"

    def test_ipv6(self) -> None:
        uri = SipURI.fromString("sip:alice@[2001:db8::1]:5070;transport=tcp")
        assert uri.host == "[2001:db8::1]"
        assert uri.port == 5070
        assert uri.params == {"transport": "tcp"}
        assert str(uri) == "sip:alice@[2001:db8::1]:5070;transport=tcp"

    def test_ipv6WithoutPort(self) -> None:
        uri = SipURI.fromString("sips:[2001:db8::10]")
        assert uri.host == "[2001:db8::10]"
        assert uri.port is None

    def test_semicolonInUser(self) -> None:
        """
        RFC 4475 §3.1.1.9 (semiuri): a user part may hold C{;}; the
        parameters start after the host.
        """
        uri = SipURI.fromString("sip:user;par=u%40example.net@example.com")
        assert uri.user == "user;par=u%40example.net"
        assert uri.host == "example.com"
        assert uri.params == {}

    def test_unusualUserAndPassword(self) -> None:
        """
        RFC 4475 §3.1.1.2 (intmeth): C{?} and C{,} are legal in the user
        part and the password; the first C{@} ends the userinfo.
        """
        text = (
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
            ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
        )
        uri = SipURI.fromString(text)
        assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        assert uri.host == "example.com"
        assert uri.headers == ""
        assert str(uri) == text

    def test_escapedUser(self) -> None:
        """
        RFC 4475 §3.1.1.3 (esc01): escapes are kept as they came in the
        parts; only L{SipURI.aor} interprets them.
        """
        uri = SipURI.fromString("sip:sips%3Auser%40example.com@example.net")
        assert uri.user == "sips%3Auser%40example.com"
        assert uri.host == "example.net"

    @pytest.mark.parametrize(
        "text",
        [
            "sip:alice@example.test",
            "sips:alice:pw@example.test:5061;transport=tls?subject=hi",
            "sip:[2001:db8::1]:5070;lr",
            "sip:+15551234567@gw.example.test;user=phone",
            "sip:alice@example.test;lr;ttl=15",
        ],
    )
    def test_roundTrip(self, text: str) -> None:
        assert str(SipURI.fromString(text)) == text

    def test_repr(self) -> None:
        assert repr(SipURI.fromString("sip:a@b")) == "SipURI('sip:a@b')"


class TestSipURIErrors:
    @pytest.mark.parametrize(
        "text",
        [
            "tel:+15551234567",
            "sip",
            "sipx:alice@example.test",
            "sip:",
            "sip:@example.test",
            "sip:alice@",
            "sip:alice@example.test:",
            "sip:alice@example.test:0",
            "sip:alice@example.test:65536",
            "sip:alice@example.test:123456",
            "sip:alice@example.test:50a",
            "sip:alice@example.test:\u00b2",
            "sip:alice@example.test:\u0663",
            "sip:alice@example.test:-5",
            "sip:alice@[2001:db8::1",
            "sip:alice@[]",
            "sip:alice@[2001:db8::1]x",
            "sip:alice@[zz::1]",
            "sip:alice@exa mple.test",
            "sip:alice@example.test\r\nX-Evil: 1",
            "sip:alice@example.test\n",
            "sip:alice@example.test\x00",
            "sip:alice@example.test\x7f",
            "sip:<alice@example.test>",
            'sip:"alice"@example.test',
            "sip:alice@example/test",
            "sip:alice@ex@mple.test",
        ],
    )
    def test_refused(self, text: str) -> None:
        with pytest.raises(URIError):
            SipURI.fromString(text)

    def test_errorIsValueError(self) -> None:
        """
        Callers may catch L{ValueError}; URIError must be one.
        """
        with pytest.raises(ValueError):
            SipURI.fromString("sip:")


class TestSplitHostPort:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("example.test", ("example.test", None)),
            ("example.test:5060", ("example.test", 5060)),
            ("192.0.2.1:1", ("192.0.2.1", 1)),
            ("192.0.2.1:65535", ("192.0.2.1", 65535)),
            ("[2001:db8::1]", ("[2001:db8::1]", None)),
            ("[2001:db8::1]:5070", ("[2001:db8::1]", 5070)),
            ("[::ffff:192.0.2.1]:5060", ("[::ffff:192.0.2.1]", 5060)),
            ("sip_proxy.example.test", ("sip_proxy.example.test", None)),
        ],
    )
    def test_valid(self, text: str, expected: tuple) -> None:
        assert splitHostPort(text) == expected

    @pytest.mark.parametrize(
        "text",
        ["", ":5060", "host:", "host:0", "host:65536", "host:5060x", "host:\u00b9", "[::1", "[]:5",
         "[::1]5060", "2001:db8::1", "ho st", "host\t", "a<b", "ex\u00e4mple.test",
         pytest.param("host:" + "9" * 5000, id="5000-digit-port")],
    )
    def test_invalid(self, text: str) -> None:
        """
        Every failure is a L{URIError}: never a bare ValueError from
        C{int()} (C{"\u00b9".isdigit()} is true yet C{int("\u00b9")} raises),
        and never slow on a huge port.
        """
        with pytest.raises(URIError):
            splitHostPort(text)


class TestEquality:
    def test_hostCaseInsensitive(self) -> None:
        assert SipURI.fromString("sip:alice@EXAMPLE.test") == SipURI.fromString(
            "sip:alice@example.test"
        )

    def test_hashFollowsEquality(self) -> None:
        a = SipURI.fromString("sip:alice@EXAMPLE.test;transport=udp")
        b = SipURI.fromString("sip:alice@example.test")
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    def test_escapedUnreservedEqualsPlain(self) -> None:
        """
        RFC 3261 §19.1.4: C{%75} is C{u}.
        """
        assert SipURI.fromString("sip:%75ser@example.test") == SipURI.fromString(
            "sip:user@example.test"
        )

    def test_userCaseSensitive(self) -> None:
        assert SipURI.fromString("sip:Alice@example.test") != SipURI.fromString(
            "sip:alice@example.test"
        )

    def test_portMatters(self) -> None:
        assert SipURI.fromString("sip:a@example.test:5060") != SipURI.fromString(
            "sip:a@example.test"
        )

    def test_schemeMatters(self) -> None:
        assert SipURI.fromString("sips:a@example.test") != SipURI.fromString("sip:a@example.test")

    def test_otherTypes(self) -> None:
        assert SipURI.fromString("sip:a@b") != "sip:a@b"
        assert AbsoluteURI("tel:+1") != SipURI.fromString("sip:a@b")


class TestAOR:
    @pytest.mark.parametrize(
        "text, aor",
        [
            ("sip:alice@example.test", "sip:alice@example.test"),
            ("sip:alice@EXAMPLE.Test:5070;transport=tcp?x=y", "sip:alice@example.test"),
            ("sips:alice@example.test", "sip:alice@example.test"),
            ("sip:example.test", "sip:example.test"),
            ("sip:alice:secret@example.test", "sip:alice@example.test"),
            # esc01: escaped unreserved characters are the characters.
            ("sip:%75se%72@example.com", "sip:user@example.com"),
            ("sip:I%20have%20spaces@example.net", "sip:I%20have%20spaces@example.net"),
            # esc01: escaped reserved characters stay escaped, in upper case.
            ("sip:sips%3auser%40example.com@example.net", "sip:sips%3Auser%40example.com@example.net"),
            # escnull: NUL stays escaped and distinct users stay distinct.
            ("sip:null-%00-null@example.com", "sip:null-%00-null@example.com"),
            ("sip:%00@host5.example.com", "sip:%00@host5.example.com"),
            ("sip:%00%00@host5.example.com", "sip:%00%00@host5.example.com"),
            ("pres:bob@Example.TEST", "sip:bob@example.test"),
            ("pres:b%6Fb@example.test;x", "sip:bob@example.test"),
            ("tel:+15551234567", "tel:+15551234567"),
        ],
    )
    def test_normaliseAOR(self, text: str, aor: str) -> None:
        assert normaliseAOR(text) == aor

    def test_noControlCharacters(self) -> None:
        """
        RFC 4475 §3.1.1.4: an AOR is a database key; decoding C{%00} into
        NUL would break PostgreSQL text columns.
        """
        aor = normaliseAOR("sip:null-%00-null@example.com")
        assert "\x00" not in aor

    def test_normaliseAORErrors(self) -> None:
        with pytest.raises(URIError):
            normaliseAOR("sip:")
        with pytest.raises(URIError):
            normaliseAOR("<sip:alice@example.test>")

    @settings(max_examples=150, deadline=None)
    @given(
        st.text(
            alphabet="abcXYZ09-_.!~*'()&=+$,;?/%2F4fa0",
            min_size=1,
            max_size=20,
        ),
        st.sampled_from(["example.test", "EXAMPLE.test", "[2001:db8::1]"]),
    )
    def test_aorIdempotent(self, user: str, host: str) -> None:
        """
        The canonical AOR of a canonical AOR is itself, and it is again a
        valid SIP URI.
        """
        try:
            aor = normaliseAOR("sip:%s@%s" % (user, host))
        except URIError:
            return
        assert normaliseAOR(aor) == aor

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("abc", "abc"),
            ("%41%62%63", "Abc"),
            ("%7e%2D", "~-"),
            ("%3a%3A", "%3A%3A"),
            ("%zz%4", "%zz%4"),
            # Not recursive (RFC 4475 §3.1.1.3): %25 stays, so no new escape forms.
            ("%25%32%35", "%2525"),
        ],
    )
    def test_normaliseEscapes(self, text: str, expected: str) -> None:
        assert normaliseEscapes(text) == expected


class TestAbsoluteURI:
    def test_tel(self) -> None:
        uri = parseURI("tel:+1-201-555-0123")
        assert isinstance(uri, AbsoluteURI)
        assert uri.scheme == "tel"
        assert str(uri) == "tel:+1-201-555-0123"

    def test_schemeCase(self) -> None:
        assert AbsoluteURI("URN:uuid:f81d4fae").scheme == "urn"

    def test_novelScheme(self) -> None:
        """
        RFC 4475 §3.3.2-3 (unkscm, novelsc): unknown schemes are URIs too;
        the server answers them with 416, so they must parse.
        """
        assert parseURI("nobodyKnowsThisScheme:totallyopaquecontent").scheme == (
            "nobodyknowsthisscheme"
        )
        assert parseURI("soap.beep://192.0.2.103:3002").scheme == "soap.beep"

    @pytest.mark.parametrize(
        "text",
        ["", "tel", ":x", "1tel:+1", "te l:+1", "tel:+1 555", "tel:\r\n", "tel:<x>", "<sip:a@b>",
         "t@l:x"],
    )
    def test_refused(self, text: str) -> None:
        with pytest.raises(URIError):
            AbsoluteURI(text)

    def test_equality(self) -> None:
        assert AbsoluteURI("tel:+1") == AbsoluteURI("tel:+1")
        assert hash(AbsoluteURI("tel:+1")) == hash(AbsoluteURI("tel:+1"))
        assert AbsoluteURI("tel:+1") != AbsoluteURI("tel:+2")


class TestParseURI:
    @pytest.mark.parametrize(
        "text, kind",
        [
            ("sip:a@b", SipURI),
            ("SIP:a@b", SipURI),
            ("sips:a@b", SipURI),
            ("SiPs:a@b", SipURI),
            ("tel:+1", AbsoluteURI),
            ("sipx:foo", AbsoluteURI),
            # A scheme that merely starts with "sips" is not SIPS.
            ("sipsx:foo", AbsoluteURI),
            ("sips-like:foo", AbsoluteURI),
        ],
    )
    def test_dispatch(self, text: str, kind: type) -> None:
        assert isinstance(parseURI(text), kind)

    def test_ltgtRequestURI(self) -> None:
        """
        RFC 4475 §3.1.2.7 (ltgtruri): a Request-URI in angle brackets is
        no URI; the server answers 400 from this L{URIError}.
        """
        with pytest.raises(URIError):
            parseURI("<sip:user@example.com>")

    def test_escapedHeadersInRequestURI(self) -> None:
        """
        RFC 4475 §3.1.2.11 (escruri): deliberately accepted; the headers
        part is kept apart and never becomes a header of the request.
        """
        uri = parseURI("sip:user@example.com?Route=%3Csip:example.com%3E")
        assert isinstance(uri, SipURI)
        assert uri.headers == "Route=%3Csip:example.com%3E"
        assert uri.aor() == "sip:user@example.com"

    def test_lwsInRequestURI(self) -> None:
        """
        RFC 4475 §3.1.2.8 (lwsruri).
        """
        with pytest.raises(URIError):
            parseURI("sip:user@example.com; lr")
