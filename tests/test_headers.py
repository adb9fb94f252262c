"""
Tests for L{presence.sip.headers}: the structured header values of RFC 3261
§20 and §25 (Via, name-addr, CSeq, parameters), built on demand from the
text a message keeps.
"""

from __future__ import annotations

import pytest

from presence.sip.headers import (
    CSeq,
    HeaderError,
    NameAddr,
    Via,
    formatParams,
    parseDelta,
    parseParams,
    parseValueParams,
    splitQuoted,
    unquote,
)


class TestSplitQuoted:
    @pytest.mark.parametrize(
        "text, parts",
        [
            ("a, b,c", ["a", " b", "c"]),
            ("single", ["single"]),
            ('"Bell, Alexander" <sip:a@b>, <sip:c@d>', ['"Bell, Alexander" <sip:a@b>', " <sip:c@d>"]),
            ("<sip:a@b;x=1,2>, <sip:c@d>", ["<sip:a@b;x=1,2>", " <sip:c@d>"]),
            ('"a\\", b" <sip:x@y>, c', ['"a\\", b" <sip:x@y>', " c"]),
            ('"a\\\\", b', ['"a\\\\"', " b"]),
            ('"<", x', ['"<"', " x"]),
            ("a,,b,", ["a", "", "b", ""]),
            ('"unterminated, quote', ['"unterminated, quote']),
        ],
    )
    def test_commas(self, text: str, parts: list) -> None:
        assert splitQuoted(text, ",") == parts

    def test_semicolons(self) -> None:
        assert splitQuoted(';a=1;b="x;y";c', ";") == ["", "a=1", 'b="x;y"', "c"]


class TestParams:
    def test_parse(self) -> None:
        assert parseParams(";Tag=AbC;lr; q = 0.5 ;;") == {"tag": "AbC", "lr": None, "q": "0.5"}

    def test_quotedValueKept(self) -> None:
        params = parseParams(';+sip.instance="<urn:uuid:1;2>";expires=60')
        assert params == {"+sip.instance": '"<urn:uuid:1;2>"', "expires": "60"}
        assert formatParams(params) == ';+sip.instance="<urn:uuid:1;2>";expires=60'

    def test_emptyValue(self) -> None:
        assert parseParams(";a=") == {"a": ""}
        assert formatParams({"a": ""}) == ";a="

    @pytest.mark.parametrize("text", [";=x", "; a b=1", ";a\tb"])
    def test_badName(self, text: str) -> None:
        with pytest.raises(HeaderError):
            parseParams(text)

    def test_roundTrip(self) -> None:
        params = {"branch": "z9hG4bK1", "rport": None, "received": "192.0.2.1"}
        assert parseParams(formatParams(params)) == params


class TestUnquote:
    @pytest.mark.parametrize(
        "value, expected",
        [
            ('"Bob"', "Bob"),
            ('"a\\"b"', 'a"b'),
            ('"a\\\\b"', "a\\b"),
            ("token", "token"),
            ('"', '"'),
            (None, None),
            ('""', ""),
        ],
    )
    def test_unquote(self, value: object, expected: object) -> None:
        assert unquote(value) == expected  # type: ignore[arg-type]


class TestVia:
    def test_typical(self) -> None:
        via = Via.fromString("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport")
        assert via.transport == "UDP"
        assert via.host == "192.0.2.10"
        assert via.port == 5060
        assert via.branch == "z9hG4bK776asdhds"
        assert via.params == {"branch": "z9hG4bK776asdhds", "rport": None}
        assert str(via) == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"

    def test_receivedAndRport(self) -> None:
        via = Via.fromString("SIP/2.0/UDP pc33.example.test;branch=z9hG4bK1;received=192.0.2.101;rport=5062")
        assert via.params["received"] == "192.0.2.101"
        assert via.params["rport"] == "5062"
        via.params["rport"] = "5070"
        assert str(via).endswith(";received=192.0.2.101;rport=5070")

    def test_ipv6(self) -> None:
        via = Via.fromString("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;received=2001:db8::9")
        assert via.host == "[2001:db8::1]"
        assert via.port == 5070
        assert via.sentBy() == ("[2001:db8::1]", 5070)
        assert via.params["received"] == "2001:db8::9"

    def test_transportCase(self) -> None:
        assert Via.fromString("sip/2.0/tcp host").transport == "TCP"

    @pytest.mark.parametrize(
        "transport, port", [("UDP", 5060), ("TCP", 5060), ("TLS", 5061), ("SCTP", 5060)]
    )
    def test_defaultPorts(self, transport: str, port: int) -> None:
        assert Via.fromString("SIP/2.0/%s Host.Example" % (transport,)).sentBy() == (
            "host.example",
            port,
        )

    def test_noBranch(self) -> None:
        assert Via.fromString("SIP/2.0/UDP host").branch is None

    @pytest.mark.parametrize(
        "text, transport, host, branch",
        [
            # RFC 4475 §3.1.1.1 (wsinv), after unfolding.
            ("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw", "UDP", "192.0.2.2", "390skdjuw"),
            (
                "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8",
                "TCP",
                "spindle.example.com",
                "z9hG4bK9ikj8",
            ),
            (
                "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
                "UDP",
                "192.168.255.111",
                "z9hG4bK30239",
            ),
            ("SIP/2.0/UDP\thost.example;branch=b", "UDP", "host.example", "b"),
            ("  SIP/2.0/TLS host.example ;branch=b  ", "TLS", "host.example", "b"),
        ],
    )
    def test_linearWhiteSpace(self, text: str, transport: str, host: str, branch: str) -> None:
        """
        RFC 3261 §25.1 allows LWS around the slashes, before the
        parameters, and around C{=}.
        """
        via = Via.fromString(text)
        assert (via.transport, via.host, via.branch) == (transport, host, branch)

    def test_spacesAroundPortColon(self) -> None:
        via = Via.fromString("SIP/2.0/UDP host.example : 5070;rport")
        assert (via.host, via.port) == ("host.example", 5070)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP ",
            "SIP/2.0 host",
            "SIP/3.0/UDP host",
            "SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
            "HTTP/2.0/UDP host",
            "SIP/2.0/UDP host:0",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host:\u00b2",
            pytest.param("SIP/2.0/UDP host:" + "9" * 5000, id="5000-digit-port"),
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP ho<st",
            "SIP/2.0/UDP host;a b=c",
            ";",
        ],
    )
    def test_refused(self, text: str) -> None:
        """
        Every malformed Via is a L{HeaderError}, never another exception
        (a superscript port once escaped as a bare ValueError).
        """
        with pytest.raises(HeaderError):
            Via.fromString(text)


class TestNameAddr:
    def test_quotedDisplay(self) -> None:
        addr = NameAddr.fromString('"Alice" <sip:alice@example.test>;tag=1928301774')
        assert addr.display == '"Alice"'
        assert unquote(addr.display) == "Alice"
        assert addr.uri == "sip:alice@example.test"
        assert addr.tag == "1928301774"
        assert str(addr) == '"Alice" <sip:alice@example.test>;tag=1928301774'

    def test_noDisplay(self) -> None:
        addr = NameAddr.fromString("<sip:bob@example.test>")
        assert addr.display is None
        assert addr.tag is None
        assert str(addr) == "<sip:bob@example.test>"

    def test_uriParamsStayInURI(self) -> None:
        """
        In name-addr form, parameters inside the brackets belong to the URI.
        """
        addr = NameAddr.fromString("<sip:alice@192.0.2.10:5060;transport=udp;tag=x>;expires=60")
        assert addr.uri == "sip:alice@192.0.2.10:5060;transport=udp;tag=x"
        assert addr.params == {"expires": "60"}
        assert addr.tag is None

    def test_addrSpecParamsAreHeaderParams(self) -> None:
        """
        RFC 3261 §20.10: in addr-spec form, parameters after the URI are
        header parameters (RFC 4475 §3.3.11 cparam01).
        """
        addr = NameAddr.fromString("sip:+19725552222@gw1.example.net;unknownparam;tag=7")
        assert addr.uri == "sip:+19725552222@gw1.example.net"
        assert addr.params == {"unknownparam": None, "tag": "7"}
        assert str(addr) == "<sip:+19725552222@gw1.example.net>;unknownparam;tag=7"

    def test_bracketsKeepURIParams(self) -> None:
        """
        RFC 4475 §3.3.12 (cparam02): the same parameter inside brackets.
        """
        addr = NameAddr.fromString("<sip:+19725552222@gw1.example.net;unknownparam>")
        assert addr.uri == "sip:+19725552222@gw1.example.net;unknownparam"
        assert addr.params == {}

    def test_displayWithSpecials(self) -> None:
        """
        A quoted display name may hold C{<}, C{>}, C{;}, C{,} and escaped
        quotes; none of them ends it.
        """
        addr = NameAddr.fromString('"a <b>; c, \\"d\\"" <sip:x@y>;tag=1')
        assert addr.display == '"a <b>; c, \\"d\\""'
        assert addr.uri == "sip:x@y"
        assert addr.tag == "1"

    def test_tortuousDisplay(self) -> None:
        """
        RFC 4475 §3.1.1.1 (wsinv), after unfolding.
        """
        addr = NameAddr.fromString(
            '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8'
        )
        assert addr.display == '"J Rosenberg \\\\\\""'
        assert unquote(addr.display) == 'J Rosenberg \\"'
        assert addr.tag == "98asjd8"

    def test_tokenDisplay(self) -> None:
        """
        RFC 4475 §3.1.1.6 (lwsdisp): no space before C{<} is accepted.
        """
        addr = NameAddr.fromString("caller<sip:caller@example.com>;tag=323")
        assert addr.display == "caller"
        assert str(addr) == "caller <sip:caller@example.com>;tag=323"

    def test_tokensDisplay(self) -> None:
        """
        RFC 4475 §3.1.1.2 (intmeth): several tokens with all the odd token
        characters form an unquoted display name.
        """
        addr = NameAddr.fromString("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>")
        assert addr.display == "token1~` token2'+_ token3*%!.-"

    def test_nonTokenDisplayIsQuoted(self) -> None:
        """
        RFC 4475 §3.1.2.15 (baddn): an unquoted display name with a comma
        is invalid; we infer the missing quotes so that the error is never
        passed on.
        """
        addr = NameAddr.fromString("Bell, Alexander <sip:a.g.bell@example.com>;tag=43")
        assert addr.display == '"Bell, Alexander"'
        assert str(addr) == '"Bell, Alexander" <sip:a.g.bell@example.com>;tag=43'

    def test_utf8Display(self) -> None:
        addr = NameAddr.fromString('"Zoë Ærøskøbing 小明" <sip:zoe@example.test>')
        assert unquote(addr.display) == "Zoë Ærøskøbing 小明"
        unquoted = NameAddr.fromString('Zoë "Z" <sip:zoe@example.test>')
        assert unquoted.display == '"Zoë \\"Z\\""'
        assert unquote(unquoted.display) == 'Zoë "Z"'

    def test_spacesInBrackets(self) -> None:
        """
        RFC 4475 §3.1.2.14 (badaspec): deliberately tolerated, and the
        spaces are not reproduced.
        """
        addr = NameAddr.fromString('"Watson, Thomas" < sip:t.watson@example.org >')
        assert addr.uri == "sip:t.watson@example.org"
        assert str(addr) == '"Watson, Thomas" <sip:t.watson@example.org>'

    def test_nonSipScheme(self) -> None:
        """
        RFC 4475 §3.3.4 (unksm2): To may name any URI scheme.
        """
        assert NameAddr.fromString("isbn:2983792873").uri == "isbn:2983792873"

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "<>",
            "<sip:alice@example.test",
            '"Mr. J. User <sip:j.user@example.com>',
            '"Bob" sip:bob@example.test',
            '"Bob" x <sip:bob@example.test>',
            "<sip:alice@example.test> junk",
            "<alice>",
            "<sip:a b@c>",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "sip:a,b@example.com",
            "*",
        ],
    )
    def test_refused(self, text: str) -> None:
        """
        Including RFC 4475 §3.1.2.6 (quotbal, unterminated quote) and
        §3.1.2.13 (regbadct, an addr-spec with C{?} needs brackets).
        """
        with pytest.raises(HeaderError):
            NameAddr.fromString(text)

    def test_escapedHeadersInBrackets(self) -> None:
        """
        RFC 4475 §3.3.15 (regescrt): fine inside brackets.
        """
        addr = NameAddr.fromString("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")
        assert addr.uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


class TestCSeq:
    def test_parse(self) -> None:
        cseq = CSeq.fromString("314159 SUBSCRIBE")
        assert (cseq.number, cseq.method) == (314159, "SUBSCRIBE")
        assert str(cseq) == "314159 SUBSCRIBE"

    def test_leadingZerosAndWhitespace(self) -> None:
        """
        RFC 4475 §3.1.1.1 (wsinv): C{0009 INVITE} after unfolding.
        """
        cseq = CSeq.fromString("0009  INVITE")
        assert (cseq.number, cseq.method) == (9, "INVITE")

    def test_limits(self) -> None:
        assert CSeq.fromString("0 OPTIONS").number == 0
        assert CSeq.fromString("2147483647 OPTIONS").number == 2**31 - 1

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "1",
            "OPTIONS",
            "-1 OPTIONS",
            "+1 OPTIONS",
            "x OPTIONS",
            "2147483648 OPTIONS",
            "36893488147419103232 REGISTER",
            pytest.param("9" * 5000 + " OPTIONS", id="5000-digits"),
            "\u0661\u0662 OPTIONS",
            "1 OPTIONS extra",
        ],
    )
    def test_refused(self, text: str) -> None:
        """
        Including RFC 4475 §3.1.2.4 (scalar02); 5000 digits once escaped
        as a ValueError from C{int()} on CPython 3.11.
        """
        with pytest.raises(HeaderError):
            CSeq.fromString(text)


class TestDelta:
    def test_values(self) -> None:
        assert parseDelta("3600") == 3600
        assert parseDelta(" 0 ") == 0
        assert parseDelta("4294967295") == 2**32 - 1
        assert parseDelta("60", maximum=60) == 60

    @pytest.mark.parametrize(
        "text", ["", "-1", "1.5", "abc", "4294967296", "10000000000000", "\u0663",
         pytest.param("9" * 5000, id="5000-digits")]
    )
    def test_refused(self, text: str) -> None:
        with pytest.raises(HeaderError):
            parseDelta(text)

    def test_maximum(self) -> None:
        with pytest.raises(HeaderError):
            parseDelta("61", maximum=60)


class TestValueParams:
    def test_event(self) -> None:
        assert parseValueParams("presence") == ("presence", {})
        assert parseValueParams("Presence ; ID = 5a") == ("presence", {"id": "5a"})

    def test_subscriptionState(self) -> None:
        assert parseValueParams("active;expires=3599") == ("active", {"expires": "3599"})
        assert parseValueParams("terminated;reason=timeout;retry-after=30") == (
            "terminated",
            {"reason": "timeout", "retry-after": "30"},
        )
        assert parseValueParams("pending") == ("pending", {})
