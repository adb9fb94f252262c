"""
Tests for L{presence.sip.parser}: bytes to SIP messages (RFC 3261 §7, §18.3)
for datagrams and streams, the RFC 4475 torture messages, hostile input,
L{StreamFramer}, and hypothesis properties (round trip, fuzzing, mutation).

RFC 4475 messages we deliberately accept although they are invalid (the
codec keeps header values as text and parses them only on demand, which
keeps the hot path short; the structured accessors or L{parseURI} refuse
them, and the server answers 400/416 from that):

 - §3.1.2.1 badinv01: empty Via/Contact elements; the top Via still parses,
   L{Message.vias} refuses the stray C{;} element.
 - §3.1.2.6 quotbal: unterminated quote in To; L{Message.toAddr} refuses it.
 - §3.1.2.7 ltgtruri: Request-URI in C{<>}; L{parseURI} refuses it.
 - §3.1.2.11 escruri: escaped headers in the Request-URI; RFC 4475 allows
   ignoring them; they never become headers.
 - §3.1.2.12 baddate: Date is never interpreted.
 - §3.1.2.13 regbadct: Contact addr-spec with C{?}; NameAddr refuses it.
 - §3.1.2.14 badaspec: spaces inside C{<>}; tolerated, not reproduced.
 - §3.1.2.15 baddn: unquoted display names with commas; quoted on output.

And one valid message we refuse: §3.1.1.2 intmeth carries a NUL byte (as
an escaped quoted-pair in a display name); any NUL in a message head is
refused, since NUL in a header value is a classic injection and truncation
vector and no real client needs it.
"""

from __future__ import annotations

import random
import string
import time
from typing import List, Optional, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.samples import NOTIFY, PIDF, SUBSCRIBE
from presence.sip.headers import HeaderError, NameAddr, parseValueParams, unquote
from presence.sip.message import LIST_HEADERS, Message, Request, Response
from presence.sip.parser import (
    PING,
    FramingError,
    Limits,
    ParseError,
    StreamFramer,
    parseMessage,
)
from presence.sip.uri import AbsoluteURI, SipURI, URIError, parseURI


def crlf(text: str) -> bytes:
    """
    A message written with C{\\n} line ends, as SIP needs them: CRLF.
    """
    return text.replace("\n", "\r\n").encode("utf-8")


def sdp(origin: str, connection: str, timing: Optional[str] = "0 0", session: bool = True) -> bytes:
    """
    The SDP body the RFC 4475 messages carry, whose length they declare.
    """
    lines = ["v=0", "o=mhandley 29739 7272939 IN IP4 " + origin]
    if session:
        lines.append("s=-")
    lines.append("c=IN IP4 " + connection)
    if timing is not None:
        lines.append("t=" + timing)
    lines += ["m=audio 49217 RTP/AVP 0 12", "m=video 3227 RTP/AVP 31", "a=rtpmap:31 LPC"]
    return crlf("\n".join(lines) + "\n")


def parseError(data: bytes, limits: Limits = Limits(), stream: bool = False) -> ParseError:
    with pytest.raises(ParseError) as info:
        parseMessage(data, limits, stream)
    return info.value


def checkErrorResponse(error: ParseError) -> Optional[Response]:
    """
    C{error.errorResponse()}, checked to be a response that can be sent:
    no CR, LF or NUL anywhere but between lines.
    """
    response = error.errorResponse()
    if response is None:
        return None
    assert isinstance(response, Response)
    assert response.code == error.code
    for values in response.headers.values():
        for value in values:
            assert "\r" not in value and "\n" not in value and "\x00" not in value
    data = response.toBytes()
    assert data.endswith(b"\r\n\r\n")
    lines = data[:-4].split(b"\r\n")
    assert lines[0].startswith(b"SIP/2.0 %d " % (error.code,))
    for line in lines:
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line
    return response


REQUEST = crlf(
    "OPTIONS sip:bob@example.test SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport\n"
    "Max-Forwards: 70\n"
    'From: "Alice" <sip:alice@example.test>;tag=9fxced76sl\n'
    "To: <sip:bob@example.test>\n"
    "Call-ID: 3848276298220188511@atlanta.example.test\n"
    "CSeq: 63104 OPTIONS\n"
    "Accept: application/sdp\n"
    "Content-Length: 0\n"
    "\n"
)


def withHeaders(*lines: str, start: str = "OPTIONS sip:bob@example.test SIP/2.0", body: bytes = b"",
                length: Optional[str] = None) -> bytes:
    """
    A request with the mandatory headers of L{REQUEST} replaced or
    extended by C{lines} (C{"Name: value"}; a name alone removes it).
    """
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport"),
        ("From", '"Alice" <sip:alice@example.test>;tag=9fxced76sl'),
        ("To", "<sip:bob@example.test>"),
        ("Call-ID", "3848276298220188511@atlanta.example.test"),
        ("CSeq", "63104 OPTIONS"),
    ]
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            headers = [h for h in headers if h[0] != name]
        elif name in [h[0] for h in headers]:
            headers = [(h[0], value.strip()) if h[0] == name else h for h in headers]
        else:
            headers.append((name, value.strip()))
    text = start + "\n" + "".join("%s: %s\n" % h for h in headers)
    if length is None:
        length = str(len(body))
    if length != "-":
        text += "Content-Length: %s\n" % (length,)
    return crlf(text + "\n") + body


class TestRequests:
    def test_subscribe(self) -> None:
        message = parseMessage(SUBSCRIBE)
        assert isinstance(message, Request)
        assert message.method == "SUBSCRIBE"
        assert message.uri == "sip:bob@example.test"
        assert message.header("max-forwards") == "70"
        assert message.header("Event") == "presence"
        assert message.header("expires") == "3600"
        assert message.headerValues("accept") == [
            "application/pidf+xml",
            "application/rlmi+xml",
            "multipart/related",
        ]
        assert message.headerValues("supported") == ["eventlist", "replaces"]
        assert message.headerValues("allow") == [
            "INVITE", "ACK", "CANCEL", "BYE", "NOTIFY", "SUBSCRIBE", "OPTIONS"
        ]
        assert message.headerValues("contact") == [
            '<sip:alice@192.0.2.10:5060;transport=udp>;'
            '+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
        ]
        assert message.header("user-agent") == "baresip v3.10.1 (x86_64/linux)"
        assert message.body == b""
        assert message.cseq().number == 314159
        assert message.topVia().params == {"branch": "z9hG4bK776asdhds", "rport": None}
        assert message.fromAddr().tag == "1928301774"
        assert unquote(message.toAddr().display) == "Bob"

    def test_notify(self) -> None:
        message = parseMessage(NOTIFY)
        assert isinstance(message, Request)
        assert message.method == "NOTIFY"
        assert message.uri == "sip:alice@192.0.2.10:5060;transport=udp"
        assert message.body == PIDF
        assert message.header("content-type") == "application/pidf+xml"
        assert parseValueParams(message.header("subscription-state") or "") == (
            "active",
            {"expires": "3599"},
        )
        assert parseValueParams(message.header("o") or "") == ("presence", {})

    def test_methodsAreCaseSensitive(self) -> None:
        """
        RFC 3261 §7.1: C{invite} is not C{INVITE}; with C{CSeq: 1 invite}
        it is a well-formed request of an unknown method.
        """
        message = parseMessage(
            withHeaders("CSeq: 1 invite", start="invite sip:bob@example.test SIP/2.0")
        )
        assert isinstance(message, Request)
        assert message.method == "invite"

    def test_versionCaseInsensitive(self) -> None:
        """
        RFC 3261 §7.1: the SIP-Version string is case-insensitive.
        """
        message = parseMessage(withHeaders(start="OPTIONS sip:bob@example.test sip/2.0"))
        assert isinstance(message, Request)
        response = parseMessage(crlf("sip/2.0 200 OK\nContent-Length: 0\n\n").replace(
            b"\r\n\r\n", b"\r\n" + REQUEST.split(b"\r\n", 1)[1].split(b"\r\nAccept")[0] + b"\r\n\r\n"
        ))
        assert isinstance(response, Response)

    def test_leadingCRLFsIgnored(self) -> None:
        """
        RFC 3261 §7.5: CRLFs before the start line are ignored.
        """
        message = parseMessage(b"\r\n\r\n\r\n" + REQUEST)
        assert isinstance(message, Request)
        assert message.method == "OPTIONS"

    def test_otherSchemes(self) -> None:
        """
        RFC 4475 §3.3.2, §3.3.3 (unkscm, novelsc): a Request-URI of any
        scheme parses; the server answers 416 from L{parseURI}.
        """
        for uri in ("nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002"):
            message = parseMessage(withHeaders(start="OPTIONS %s SIP/2.0" % (uri,)))
            assert isinstance(message, Request)
            assert isinstance(parseURI(message.uri), AbsoluteURI)


class TestResponses:
    def test_ok(self) -> None:
        data = crlf(
            "SIP/2.0 200 OK\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;received=192.0.2.10\n"
            "From: <sip:alice@example.test>;tag=9fxced76sl\n"
            "To: <sip:bob@example.test>;tag=8321234356\n"
            "Call-ID: 3848276298220188511@atlanta.example.test\n"
            "CSeq: 63104 SUBSCRIBE\n"
            "Expires: 3600\n"
            "Content-Length: 0\n\n"
        )
        message = parseMessage(data)
        assert isinstance(message, Response)
        assert (message.code, message.reason) == (200, "OK")
        assert message.toAddr().tag == "8321234356"
        assert message.cseq().method == "SUBSCRIBE"

    @pytest.mark.parametrize(
        "line, code, reason",
        [
            ("SIP/2.0 202 Accepted", 202, "Accepted"),
            ("SIP/2.0 489 Bad  Event here", 489, "Bad  Event here"),
            # RFC 4475 §3.1.1.13 (noreason): empty reason phrase.
            ("SIP/2.0 100 ", 100, ""),
            ("SIP/2.0 699 ", 699, ""),
            # RFC 4475 §3.1.1.12 (unreason): UTF-8 reason phrase.
            (
                "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
                200,
                "= 2**3 * 5**2 но сто девяносто девять - простое",
            ),
        ],
    )
    def test_statusLines(self, line: str, code: int, reason: str) -> None:
        data = crlf(
            line + "\n"
            "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
            "Call-ID: unreason.1234ksdfak3j2erwedfsASdf\n"
            "CSeq: 35 INVITE\n"
            "From: sip:user@example.com;tag=11141343\n"
            "To: sip:user@example.edu;tag=2229\n"
            "Content-Type: application/sdp\n"
            "Contact: <sip:user@host198.example.com>\n"
            "Content-Length: 154\n\n"
        ) + sdp("192.0.2.198", "192.0.2.198")
        message = parseMessage(data)
        assert isinstance(message, Response)
        assert (message.code, message.reason) == (code, reason)
        assert len(message.body) == 154

    @pytest.mark.parametrize(
        "line",
        [
            "SIP/2.0 99 Low",
            "SIP/2.0 700 High",
            "SIP/2.0 2000 OK",
            "SIP/2.0 20x OK",
            "SIP/2.0  200 OK",
            "SIP/2.0 \u0662\u0660\u0660 OK",
            # RFC 4475 §3.1.2.19 (bigcode).
            "SIP/2.0 4294967301 better not break the receiver",
            "SIP/3.0 200 OK",
        ],
    )
    def test_badStatusLines(self, line: str) -> None:
        """
        A broken response is never answered: code L{None}.
        """
        error = parseError(crlf(line + "\nContent-Length: 0\n\n"))
        assert error.code is None
        assert error.errorResponse() is None

    def test_brokenResponseNotAnswered(self) -> None:
        """
        Even when a well-formed status line comes with a bad header, a
        response is never answered.
        """
        error = parseError(crlf("SIP/2.0 200 OK\nCSeq: x\nContent-Length: 0\n\n"))
        assert error.code is None
        assert isinstance(error.partial, Response)
        assert error.errorResponse() is None


class TestHeaderSyntax:
    def test_compactForms(self) -> None:
        """
        RFC 3261 §7.3.3 compact forms, and RFC 6665 C{o} and C{u}, in
        either case.
        """
        data = crlf(
            "NOTIFY sip:alice@192.0.2.10 SIP/2.0\n"
            "v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\n"
            "V: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2\n"
            "f: <sip:bob@example.test>;tag=1\n"
            "T: <sip:alice@example.test>;tag=2\n"
            "i: compact@example.test\n"
            "CSeq: 2 NOTIFY\n"
            "m: <sip:192.0.2.1>\n"
            "o: presence\n"
            "u: presence, dialog\n"
            "k: eventlist\n"
            "s: hello\n"
            "c: text/plain\n"
            "e: identity\n"
            "Subscription-State: active\n"
            "l: 5\n\n"
            "hello"
        )
        message = parseMessage(data)
        assert message.headerValues("via") == [
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
            "SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2",
        ]
        assert message.header("from") == "<sip:bob@example.test>;tag=1"
        assert message.header("to") == "<sip:alice@example.test>;tag=2"
        assert message.header("call-id") == "compact@example.test"
        assert message.header("contact") == "<sip:192.0.2.1>"
        assert message.header("event") == "presence"
        assert message.headerValues("allow-events") == ["presence", "dialog"]
        assert message.header("supported") == "eventlist"
        assert message.header("subject") == "hello"
        assert message.header("content-type") == "text/plain"
        assert message.header("content-encoding") == "identity"
        assert message.header("content-length") == "5"
        assert message.body == b"hello"

    def test_namesCaseInsensitiveAndMixedForms(self) -> None:
        """
        RFC 4475 §3.1.1.7 (longreq): mixed case, compact and long forms of
        one header, and space before the colon, all make one list.
        """
        lines = "".join(
            "%s: SIP/2.0/TCP sip%d.example.com\n" % (name, i)
            for i, name in enumerate(["Via", "v", "V", "ViA", "VIa", "VIA", "via", "V ", "v  ", "Via  "])
        )
        message = parseMessage(withHeaders("Via") .replace(
            b"OPTIONS sip:bob@example.test SIP/2.0\r\n",
            crlf("OPTIONS sip:bob@example.test SIP/2.0\n" + lines),
        ))
        assert [via.host for via in message.vias()] == ["sip%d.example.com" % (i,) for i in range(10)]

    def test_commaSplitOutsideQuotesAndBrackets(self) -> None:
        message = parseMessage(
            withHeaders(
                'Contact: "Bell, Alexander" <sip:a.g.bell@example.com;x=1,2>;q=0.5, '
                "<sip:watson@example.org>, sip:other@example.net",
                "Route: <sip:p1.example;lr>,<sip:p2.example;lr>",
                "Via: SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example;branch=z9hG4bK2",
            )
        )
        assert message.headerValues("contact") == [
            '"Bell, Alexander" <sip:a.g.bell@example.com;x=1,2>;q=0.5',
            "<sip:watson@example.org>",
            "sip:other@example.net",
        ]
        contact = NameAddr.fromString(message.headerValues("contact")[0])
        assert unquote(contact.display) == "Bell, Alexander"
        assert contact.params == {"q": "0.5"}
        assert message.headerValues("route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        assert [via.host for via in message.vias()] == ["a.example", "b.example"]

    def test_emptyListElementsDropped(self) -> None:
        message = parseMessage(withHeaders("Allow: INVITE,, ACK ,", "Supported: "))
        assert message.headerValues("allow") == ["INVITE", "ACK"]
        assert message.headerValues("supported") == [""]

    def test_nonListHeadersNotSplit(self) -> None:
        """
        Authorization, WWW-Authenticate, Subject and unknown headers keep
        their commas: they are not comma-separated lists.
        """
        authorization = (
            'Digest username="alice", realm="example.test", nonce="dcd98b7102dd2f0e", '
            'uri="sip:example.test", response="6629fae49393a05397450978507c4ef1", '
            "algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\""
        )
        message = parseMessage(
            withHeaders(
                "Authorization: " + authorization,
                'WWW-Authenticate: Digest realm="a", nonce="b", qop="auth,auth-int"',
                "Subject: one, two",
                "X-Unknown: ;;,,;;,;",
                "Date: Sat, 13 Nov 2010 23:29:00 GMT",
            )
        )
        assert message.headerValues("authorization") == [authorization]
        assert len(message.headerValues("www-authenticate")) == 1
        assert message.header("subject") == "one, two"
        assert message.header("x-unknown") == ";;,,;;,;"
        assert message.header("date") == "Sat, 13 Nov 2010 23:29:00 GMT"

    def test_lineFolding(self) -> None:
        """
        RFC 3261 §7.3.1: a line starting with white space continues the
        previous one; the fold becomes one space.
        """
        data = crlf(
            "OPTIONS sip:bob@example.test SIP/2.0\n"
            "Via: SIP/2.0/UDP 192.0.2.10\n"
            " ;branch=z9hG4bK74bf9\n"
            "From: <sip:alice@example.test>\n"
            "\t;tag=9fxced76sl\n"
            "To: <sip:bob@example.test>\n"
            "Call-ID: fold@example.test\n"
            "CSeq:\n"
            "   63104\n"
            "   OPTIONS\n"
            "Subject: first line   \n"
            "     second line\n"
            "Content-Length: 0\n\n"
        )
        message = parseMessage(data)
        assert message.header("via") == "SIP/2.0/UDP 192.0.2.10 ;branch=z9hG4bK74bf9"
        assert message.topVia().branch == "z9hG4bK74bf9"
        assert message.fromAddr().tag == "9fxced76sl"
        assert message.header("cseq") == "63104 OPTIONS"
        assert message.header("subject") == "first line second line"

    def test_foldedFirstHeader(self) -> None:
        message = parseMessage(
            withHeaders("Via").replace(
                b"SIP/2.0\r\n", b"SIP/2.0\r\nVia:\r\n\tSIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n", 1
            )
        )
        assert message.header("via") == "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"

    def test_startLineNotFolded(self) -> None:
        """
        A continuation line right after the start line continues nothing.
        """
        error = parseError(
            withHeaders().replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n  SIP/2.0\r\n", 1)
        )
        assert (error.code, error.reason) == (400, "Malformed header line")
        assert isinstance(error.partial, Request)
        assert error.partial.uri == "sip:bob@example.test"

    def test_foldingAfterMalformedLine(self) -> None:
        """
        Unfolding restarts the header loop; errors found before the fold
        are found again, not lost or doubled.
        """
        data = withHeaders("Subject: a", "X: b").replace(b"X: b", b"bad line\r\n folded")
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Malformed header line")
        assert error.partial is not None
        assert error.partial.header("subject") == "a"
        assert error.partial.headerValues("via") == [
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport"
        ]

    def test_utf8DisplayNames(self) -> None:
        message = parseMessage(
            withHeaders('From: "Zoë Ærøskøbing 小明" <sip:zoe@example.test>;tag=1')
        )
        assert unquote(message.fromAddr().display) == "Zoë Ærøskøbing 小明"

    def test_whitespaceAroundValues(self) -> None:
        message = parseMessage(withHeaders("Expires:    60   ", "Subject:\t tabbed \t"))
        assert message.header("expires") == "60"
        assert message.header("subject") == "tabbed"

    def test_colonInValue(self) -> None:
        message = parseMessage(withHeaders("X-Time: 12:30:45"))
        assert message.header("x-time") == "12:30:45"


class TestDatagramBody:
    def test_truncatedToContentLength(self) -> None:
        """
        RFC 3261 §18.3: bytes beyond Content-Length in a datagram are
        ignored.
        """
        message = parseMessage(withHeaders(body=b"hello world", length="5"))
        assert message.body == b"hello"

    def test_shorterBodyIs400(self) -> None:
        error = parseError(withHeaders(body=b"hello", length="6"))
        assert error.code == 400
        assert error.reason == "Content-Length Mismatch"
        assert checkErrorResponse(error) is not None

    def test_missingContentLengthTakesTheRest(self) -> None:
        message = parseMessage(withHeaders(body=b"the rest\r\n\r\nof it", length="-"))
        assert message.body == b"the rest\r\n\r\nof it"

    def test_missingContentLengthOnStreamIs400(self) -> None:
        error = parseError(withHeaders(body=b"the rest", length="-"), stream=True)
        assert error.code == 400
        assert error.reason == "Missing Content-Length"
        message = parseMessage(withHeaders(length="-"), stream=True)
        assert message.body == b""

    def test_bodyIsBinary(self) -> None:
        body = bytes(range(256)) * 2
        message = parseMessage(withHeaders(body=body))
        assert message.body == body

    def test_noBlankLine(self) -> None:
        """
        Leniency: a datagram whose head is not closed by an empty line is
        taken as a head without body.
        """
        message = parseMessage(withHeaders(length="-").rstrip(b"\r\n"))
        assert isinstance(message, Request)
        assert message.body == b""

    def test_repeatedEqualContentLength(self) -> None:
        data = withHeaders("X: y", body=b"abc").replace(
            b"X: y\r\n", b"Content-Length: 3\r\n"
        )
        assert parseMessage(data).body == b"abc"


# RFC 4475 §3.1.1: valid messages.

WSINV = crlf(
    r"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

"""
) + sdp("192.0.2.3", "192.0.2.4")

INTMETH_URI = (
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
)
INTMETH_METHOD = "!interesting-Method0123456789_*+`.%indeed'~"


def intmeth(nul: bool) -> bytes:
    """
    RFC 4475 §3.1.1.2; C{nul} keeps the escaped NUL of the To display name.
    """
    display = "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" if nul else "BEL:\\\x07 DEL:\\\x7f"
    return crlf(
        INTMETH_METHOD + " " + INTMETH_URI + " SIP/2.0\n"
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
        'To: "' + display + '" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>\n'
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;"
        "fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.\n"
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
        "CSeq: 139122385 " + INTMETH_METHOD + "\n"
        "Max-Forwards: 255\n"
        "extensionHeader-!.%*+_`'~: \ufeff大停電\n"
        "Content-Length: 0\n\n"
    )


class TestRFC4475Valid:
    def test_wsinv(self) -> None:
        """
        §3.1.1.1: folding everywhere, LWS around separators, escaped
        quotes, mixed forms, unknown headers and parameters.
        """
        message = parseMessage(WSINV)
        assert isinstance(message, Request)
        assert message.method == "INVITE"
        uri = parseURI(message.uri)
        assert isinstance(uri, SipURI)
        assert uri.params == {"unknownparam": None}
        to = message.toAddr()
        assert to.uri == "sip:vivekg@chair-dnrc.example.com"
        assert to.tag == "1918181833n"
        sender = message.fromAddr()
        assert unquote(sender.display) == 'J Rosenberg \\"'
        assert sender.uri == "sip:jdrosen@example.com"
        assert sender.tag == "98asjd8"
        assert message.header("max-forwards") == "0068"
        assert message.cseq().number == 9
        vias = message.vias()
        assert [(v.transport, v.host, v.branch) for v in vias] == [
            ("UDP", "192.0.2.2", "390skdjuw"),
            ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111", "z9hG4bK30239"),
        ]
        assert message.header("subject") == ""
        assert message.header("newfangledheader") == "newfangled value continued newfangled value"
        assert message.header("unknownheaderwithunusualvalue") == ";;,,;;,;"
        assert message.headerValues("route") == [
            "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
        ]
        contacts = message.headerValues("contact")
        assert len(contacts) == 1
        contact = NameAddr.fromString(contacts[0])
        assert unquote(contact.display) == 'Quoted string ""'
        assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
        assert len(message.body) == 150

    def test_intmeth(self) -> None:
        """
        §3.1.1.2 without its escaped NUL: token characters in the method,
        user and password characters in the Request-URI, UTF-8 values.
        """
        message = parseMessage(intmeth(nul=False))
        assert isinstance(message, Request)
        assert message.method == INTMETH_METHOD
        assert message.cseq().method == INTMETH_METHOD
        uri = parseURI(message.uri)
        assert isinstance(uri, SipURI)
        assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        assert uri.host == "example.com"
        assert message.topVia().branch == "z9hG4bK-.!%66*_+`'~"
        assert unquote(message.toAddr().display) == "BEL:\x07 DEL:\x7f"
        sender = message.fromAddr()
        assert sender.display == "token1~` token2'+_ token3*%!.-"
        assert sender.params == {
            "fromparam''~+*_!.-%": '"работающий"',
            "tag": "_token~1'+`*%!-.",
        }
        assert message.callId == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
        assert message.header("EXTENSIONHEADER-!.%*+_`'~") == "\ufeff大停電"

    def test_intmethWithNulRefused(self) -> None:
        """
        Deliberate: the escaped NUL is refused (400, and no answer since it
        sits in To, which a response must copy).
        """
        error = parseError(intmeth(nul=True))
        assert error.code == 400
        assert error.reason == "NUL in message header"
        assert error.errorResponse() is None

    def test_esc01(self) -> None:
        body = sdp("192.0.2.1", "192.0.2.1")
        message = parseMessage(
            crlf(
                "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\n"
                "To: sip:%75se%72@example.com\n"
                "From: <sip:I%20have%20spaces@example.net>;tag=938\n"
                "Max-Forwards: 87\n"
                "i: esc01.239409asdfakjkn23onasd0-3234\n"
                "CSeq: 234234 INVITE\n"
                "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\n"
                "C: application/sdp\n"
                "Contact:\n"
                "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\n"
                "Content-Length: 150\n\n"
            )
            + body
        )
        assert parseURI(message.uri).aor() == "sip:sips%3Auser%40example.com@example.net"
        assert parseURI(message.toAddr().uri).aor() == "sip:user@example.com"
        assert parseURI(message.fromAddr().uri).aor() == "sip:I%20have%20spaces@example.net"
        contact = parseURI(NameAddr.fromString(message.header("m") or "").uri)
        assert isinstance(contact, SipURI)
        assert contact.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
        assert message.header("content-type") == "application/sdp"
        assert message.body == body

    def test_escnull(self) -> None:
        message = parseMessage(
            crlf(
                "REGISTER sip:example.com SIP/2.0\n"
                "To: sip:null-%00-null@example.com\n"
                "From: sip:null-%00-null@example.com;tag=839923423\n"
                "Max-Forwards: 70\n"
                "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\n"
                "CSeq: 14398234 REGISTER\n"
                "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
                "Contact: <sip:%00@host5.example.com>\n"
                "Contact: <sip:%00%00@host5.example.com>\n"
                "L:0\n\n"
            )
        )
        aor = parseURI(message.toAddr().uri).aor()
        assert aor == "sip:null-%00-null@example.com"
        contacts = [parseURI(NameAddr.fromString(v).uri) for v in message.headerValues("contact")]
        assert contacts[0] != contacts[1]
        assert contacts[0].aor() != contacts[1].aor()

    def test_esc02(self) -> None:
        message = parseMessage(
            crlf(
                "RE%47IST%45R sip:registrar.example.com SIP/2.0\n"
                'To: "%Z%45" <sip:resource@example.com>\n'
                'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23\n'
                "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\n"
                "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\n"
                "CSeq: 29344 RE%47IST%45R\n"
                "Max-Forwards: 70\n"
                "Contact: <sip:alias1@host1.example.com>\n"
                "C%6Fntact: <sip:alias2@host2.example.com>\n"
                "Contact: <sip:alias3@host3.example.com>\n"
                "l: 0\n\n"
            )
        )
        assert isinstance(message, Request)
        assert message.method == "RE%47IST%45R"
        assert unquote(message.toAddr().display) == "%Z%45"
        assert message.headerValues("contact") == [
            "<sip:alias1@host1.example.com>",
            "<sip:alias3@host3.example.com>",
        ]
        assert message.header("c%6fntact") == "<sip:alias2@host2.example.com>"
        assert message.topVia().branch == "z9hG4bK209%fzsnel234"

    def test_lwsdisp(self) -> None:
        message = parseMessage(
            crlf(
                "OPTIONS sip:user@example.com SIP/2.0\n"
                "To: sip:user@example.com\n"
                "From: caller<sip:caller@example.com>;tag=323\n"
                "Max-Forwards: 70\n"
                "Call-ID: lwsdisp.1234abcd@funky.example.com\n"
                "CSeq: 60 OPTIONS\n"
                "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\n"
                "l: 0\n\n"
            )
        )
        assert message.fromAddr().display == "caller"
        assert message.fromAddr().tag == "323"

    def test_longreq(self) -> None:
        """
        §3.1.1.7: long values, long names, 34 Vias under every spelling.
        """
        long = "long" * 20
        display = "I have a user name of " + "extreme" * 10 + " proportion"
        tag = "1298" * 40 + "424"
        caller = "amazinglylongcallername" * 5
        names = ["Via", "v", "V", "Via", "ViA", "VIa", "VIA", "via", "viA", "vIa", "vIA", "V ", "v ",
                 "V  ", "v  ", "Via ", "Via  "] + ["Via"] * 16
        vias = "".join(
            "%s: SIP/2.0/TCP sip%d.example.com\n" % (name, 33 - i) for i, name in enumerate(names)
        )
        to = (
            '"%s"<sip:user@example.com:6000;unknownparam1=very%svalue;'
            "longparam%s=shortvalue;very%sParameterNameWithNoValue>" % (display, long, "name" * 25, long)
        )
        sender = "sip:%s@example.net;tag=%s;unknownheaderparam%s=unknowheaderparam%s;%s" % (
            caller, tag, "name" * 20, "value" * 15, "unknownValuelessparam" + "paramname" * 10
        )
        unknown = "Unknown-%s-Name: unknown-%s-value; unknown-%s-parameter-name = %s" % (
            "Long" * 20, long, long, "unknown-%s-parameter-value" % (long,)
        )
        body = sdp("192.0.2.1", "192.0.2.1")
        data = crlf(
            "INVITE sip:user@example.com SIP/2.0\n"
            "To: " + to + "\n"
            "F: " + sender + "\n"
            "Call-ID: longreq.one" + "really" * 20 + "longcallid\n"
            "CSeq: 3882340 INVITE\n"
            + unknown + "\n"
            + vias
            + "Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very"
            + "long" * 50 + "branchvalue\n"
            "Max-Forwards: 70\n"
            "Contact: <sip:" + caller + "@host5.example.net>\n"
            "Content-Type: application/sdp\n"
            "l: 150\n\n"
        ) + body
        message = parseMessage(data)
        assert unquote(message.toAddr().display) == display
        to = parseURI(message.toAddr().uri)
        assert isinstance(to, SipURI)
        assert to.port == 6000
        assert len(to.params) == 3
        assert message.fromAddr().tag == tag
        hosts = [via.host for via in message.vias()]
        assert hosts == ["sip%d.example.com" % (i,) for i in range(33, 0, -1)] + ["host.example.com"]
        assert message.vias()[-1].params["received"] == "192.0.2.5"
        assert message.body == body

    def test_dblreq(self) -> None:
        """
        §3.1.1.8: octets after Content-Length in a datagram are noise, even
        when they look like a request.
        """
        invite = crlf(
            "INVITE sip:joe@example.com SIP/2.0\n"
            "t: sip:joe@example.com\n"
            "From: sip:caller@example.net;tag=141334\n"
            "Max-Forwards: 8\n"
            "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\n"
            "Content-Type: application/sdp\n"
            "Content-Length: 150\n\n"
        ) + sdp("192.0.2.15", "192.0.2.15")
        data = crlf(
            "REGISTER sip:example.com SIP/2.0\n"
            "To: sip:j.user@example.com\n"
            "From: sip:j.user@example.com;tag=43251j3j324\n"
            "Max-Forwards: 8\n"
            "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\n"
            "Contact: sip:j.user@host.example.com\n"
            "CSeq: 8 REGISTER\n"
            "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\n"
            "Content-Length: 0\n\n\n"
        ) + invite
        message = parseMessage(data)
        assert isinstance(message, Request)
        assert message.method == "REGISTER"
        assert message.body == b""
        assert message.callId == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"

    def test_semiuri(self) -> None:
        message = parseMessage(
            crlf(
                "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\n"
                "To: sip:j_user@example.com\n"
                "From: sip:caller@example.org;tag=33242\n"
                "Max-Forwards: 3\n"
                "Call-ID: semiuri.0ha0isndaksdj\n"
                "CSeq: 8 OPTIONS\n"
                "Accept: application/sdp, application/pkcs7-mime,\n"
                "        multipart/mixed, multipart/signed,\n"
                "        message/sip, message/sipfrag\n"
                "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\n"
                "l: 0\n\n"
            )
        )
        uri = parseURI(message.uri)
        assert isinstance(uri, SipURI)
        assert uri.user == "user;par=u%40example.net"
        assert uri.host == "example.com"
        assert message.headerValues("accept") == [
            "application/sdp",
            "application/pkcs7-mime",
            "multipart/mixed",
            "multipart/signed",
            "message/sip",
            "message/sipfrag",
        ]

    def test_transports(self) -> None:
        message = parseMessage(
            crlf(
                "OPTIONS sip:user@example.com SIP/2.0\n"
                "To: sip:user@example.com\n"
                "From: <sip:caller@example.com>;tag=323\n"
                "Max-Forwards: 70\n"
                "Call-ID:  transports.kijh4akdnaqjkwendsasfdj\n"
                "Accept: application/sdp\n"
                "CSeq: 60 OPTIONS\n"
                "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\n"
                "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\n"
                "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\n"
                "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\n"
                "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\n"
                "l: 0\n\n"
            )
        )
        assert message.callId == "transports.kijh4akdnaqjkwendsasfdj"
        assert [via.transport for via in message.vias()] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]

    def test_mpart01(self) -> None:
        """
        §3.1.1.11 (in spirit): a multipart body holding NUL bytes and blank
        lines is framed by Content-Length alone.
        """
        body = (
            b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n\r\nsecret\r\n"
            b"--7a9cbec02ceef655\r\nContent-Type: application/pkcs7-signature\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n0\x82\x01\x00\x00\x00\r\n\r\n\x00\xff"
            b"\r\n--7a9cbec02ceef655--\r\n"
        )
        data = withHeaders(
            "CSeq: 1 MESSAGE",
            "Accept: multipart/mixed, text/plain, application/pkcs7-signature",
            'Content-Type: multipart/signed;boundary=7a9cbec02ceef655;'
            'protocol="application/pkcs7-signature";micalg=sha1',
            start="MESSAGE sip:kumiko@example.org SIP/2.0",
            body=body,
        )
        message = parseMessage(data)
        assert message.body == body
        assert len(message.headerValues("content-type")) == 1
        assert parseMessage(data, stream=True).body == body

    def test_inv2543(self) -> None:
        """
        §3.4.1: an RFC 2543 request (no branch, no Max-Forwards, no From
        tag, no Content-Length) still parses; over UDP its body is the rest.
        """
        body = crlf(
            "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.5\ns=-\nc=IN IP4 192.0.2.5\n"
            "t=0 0\nm=audio 49217 RTP/AVP 0\n"
        )
        message = parseMessage(
            crlf(
                "INVITE sip:UserB@example.com SIP/2.0\n"
                "Via: SIP/2.0/UDP iftgw.example.com\n"
                "From: <sip:+13035551111@ift.client.example.net;user=phone>\n"
                "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\n"
                "To: sip:+16505552222@ss1.example.net;user=phone\n"
                "Call-ID: inv2543.1717@ift.client.example.com\n"
                "CSeq: 56 INVITE\n"
                "Content-Type: application/sdp\n\n"
            )
            + body
        )
        assert message.body == body
        assert message.topVia().branch is None
        assert message.fromAddr().tag is None
        assert message.toAddr().params == {"user": "phone"}

    @pytest.mark.parametrize(
        "lines",
        [
            # §3.3.6 (regaut01): an Authorization of an unknown scheme.
            ("Authorization: NoOneKnowsThisScheme opaque-data=here",),
            # §3.3.5 (bext01): unknown extensions are the server's business.
            ("Require: nothingSupportsThis, nothingSupportsThisEither",
             "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis"),
            # §3.3.7 (invut): an unknown body type.
            ("Content-Type: application/unknownformat",),
            # §3.3.14 (zeromf): Max-Forwards 0 is the server's business.
            ("Max-Forwards: 0",),
        ],
    )
    def test_applicationLayer(self, lines: Tuple[str, ...]) -> None:
        message = parseMessage(withHeaders(*lines))
        for line in lines:
            name, _, value = line.partition(": ")
            assert ", ".join(message.headerValues(name)) == value

    def test_bcast(self) -> None:
        message = parseMessage(
            crlf(
                "SIP/2.0 200 OK\n"
                "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
                "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\n"
                "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\n"
                "CSeq: 35 INVITE\n"
                "From: sip:user@example.com;tag=11141343\n"
                "To: sip:user@example.edu;tag=2229\n"
                "Content-Length: 0\n\n"
            )
        )
        assert [via.host for via in message.vias()] == ["192.0.2.198", "255.255.255.255"]


# RFC 4475 §3.1.2: invalid messages.


def badinv01() -> bytes:
    return crlf(
        "INVITE sip:user@example.com SIP/2.0\n"
        "To: sip:j.user@example.com\n"
        "From: sip:caller@example.net;tag=134161461246\n"
        "Max-Forwards: 7\n"
        "Call-ID: badinv01.0ha0isndaksdjasdf3234nas\n"
        "CSeq: 8 INVITE\n"
        "Via: SIP/2.0/UDP 192.0.2.15;;,;,,\n"
        'Contact: "Joe" <sip:joe@example.org>;;;;\n'
        "Content-Length: 152\n"
        "Content-Type: application/sdp\n\n"
    ) + sdp("192.0.2.15", "192.0.2.15")


class TestRFC4475Invalid:
    def test_badinv01(self) -> None:
        """
        §3.1.2.1, accepted by the codec (see the module docstring).
        """
        message = parseMessage(badinv01())
        assert message.topVia().host == "192.0.2.15"
        with pytest.raises(HeaderError):
            message.vias()

    def test_clerr(self) -> None:
        """
        §3.1.2.2: Content-Length larger than the datagram: 400.
        """
        data = crlf(
            "INVITE sip:user@example.com SIP/2.0\n"
            "Max-Forwards: 80\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=93942939o2\n"
            "Contact: <sip:caller@hungry.example.net>\n"
            "Call-ID: clerr.0ha0isndaksdjweiafasdk3\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\n"
            "Content-Type: application/sdp\n"
            "Content-Length: 9999\n\n"
        ) + sdp("192.0.2.155", "192.0.2.155")
        error = parseError(data)
        assert error.code == 400
        response = checkErrorResponse(error)
        assert response is not None
        assert response.header("call-id") == "clerr.0ha0isndaksdjweiafasdk3"

    def test_ncl(self) -> None:
        """
        §3.1.2.3: negative Content-Length: 400.
        """
        data = crlf(
            "INVITE sip:user@example.com SIP/2.0\n"
            "Max-Forwards: 254\n"
            "To: sip:j.user@example.com\n"
            "From: sip:caller@example.net;tag=32394234\n"
            "Call-ID: ncl.0ha0isndaksdj2193423r542w35\n"
            "CSeq: 0 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\n"
            "Contact: <sip:caller@example53.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: -999\n\n"
        ) + sdp("192.0.2.53", "192.0.2.53")
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bad Content-Length")
        assert checkErrorResponse(error) is not None

    def test_scalar02(self) -> None:
        """
        §3.1.2.4: overlarge CSeq (and Max-Forwards, Expires): 400, answered
        although the CSeq is the fault.
        """
        data = crlf(
            "REGISTER sip:example.com SIP/2.0\n"
            "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\n"
            "To: <sip:user@example.com>\n"
            "From: <sip:user@example.com>;tag=239232jh3\n"
            "CSeq: 36893488147419103232 REGISTER\n"
            "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\n"
            "Max-Forwards: 300\n"
            "Expires: 1" + "0" * 110 + "\n"
            "Contact: <sip:user@host129.example.com>;expires=280297596632815\n"
            "Content-Length: 0\n\n"
        )
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bad CSeq")
        response = checkErrorResponse(error)
        assert response is not None
        assert response.header("cseq") == "36893488147419103232 REGISTER"

    def test_scalarlg(self) -> None:
        """
        §3.1.2.5: a response with overlarge values is dropped.
        """
        data = crlf(
            "SIP/2.0 503 Service Unavailable\n"
            "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\n"
            "To: <sip:user@example.com>\n"
            "From: <sip:other@example.net>;tag=2easdjfejw\n"
            "CSeq: 9292394834772304023312 OPTIONS\n"
            "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\n"
            "Retry-After: 949302838503028349304023988\n"
            'Warning: 1812 overture "In Progress"\n'
            "Content-Length: 0\n\n"
        )
        error = parseError(data)
        assert error.code is None
        assert error.errorResponse() is None

    def test_quotbal(self) -> None:
        """
        §3.1.2.6, accepted by the codec; To is refused on access.
        """
        data = crlf(
            "INVITE sip:user@example.com SIP/2.0\n"
            'To: "Mr. J. User <sip:j.user@example.com>\n'
            "From: sip:caller@example.net;tag=93334\n"
            "Max-Forwards: 10\n"
            "Call-ID: quotbal.aksdj\n"
            "Contact: <sip:caller@host59.example.net>\n"
            "CSeq: 8 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\n"
            "Content-Type: application/sdp\n"
            "Content-Length: 152\n\n"
        ) + sdp("192.0.2.15", "192.0.2.15")
        message = parseMessage(data)
        with pytest.raises(HeaderError):
            message.toAddr()

    def test_ltgtruri(self) -> None:
        """
        §3.1.2.7, accepted by the codec; L{parseURI} refuses the URI.
        """
        data = crlf(
            "INVITE <sip:user@example.com> SIP/2.0\n"
            "To: sip:user@example.com\n"
            "From: sip:caller@example.net;tag=39291\n"
            "Max-Forwards: 23\n"
            "Call-ID: ltgtruri.1@192.0.2.5\n"
            "CSeq: 1 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.5\n"
            "Contact: <sip:caller@host5.example.net>\n"
            "Content-Type: application/sdp\n"
            "Content-Length: 159\n\n"
        ) + sdp("192.0.2.5", "192.0.2.5", "3149328700 0")
        message = parseMessage(data)
        assert isinstance(message, Request)
        with pytest.raises(URIError):
            parseURI(message.uri)

    @pytest.mark.parametrize(
        "line, uri",
        [
            # §3.1.2.8 (lwsruri)
            ("INVITE sip:user@example.com; lr SIP/2.0", "sip:user@example.com; lr"),
            # §3.1.2.9 (lwsstart)
            ("INVITE  sip:user@example.com  SIP/2.0", "sip:user@example.com"),
            # §3.1.2.10 (trws)
            ("INVITE sip:user@example.com SIP/2.0  ", "sip:user@example.com"),
            ("INVITE\tsip:user@example.com SIP/2.0", "sip:user@example.com"),
            ("INVITE  SIP/2.0", ""),
        ],
    )
    def test_requestLineWhiteSpace(self, line: str, uri: str) -> None:
        """
        Extra white space in the Request-Line: 400, answered.
        """
        data = withHeaders("CSeq: 1 INVITE", start=line)
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bad Request-Line")
        assert isinstance(error.partial, Request)
        assert error.partial.uri == uri
        assert checkErrorResponse(error) is not None

    def test_escruri(self) -> None:
        """
        §3.1.2.11, accepted (see the module docstring).
        """
        message = parseMessage(
            withHeaders("CSeq: 1 INVITE",
                        start="INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0")
        )
        assert not message.hasHeader("route")

    def test_baddate(self) -> None:
        message = parseMessage(withHeaders("Date: Fri, 01 Jan 2010 16:00:00 EST"))
        assert message.header("date") == "Fri, 01 Jan 2010 16:00:00 EST"

    def test_regbadct(self) -> None:
        """
        §3.1.2.13, accepted by the codec; the Contact is refused on access.
        """
        message = parseMessage(
            withHeaders("Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E")
        )
        with pytest.raises(HeaderError):
            NameAddr.fromString(message.header("contact") or "")

    def test_badaspecAndBaddn(self) -> None:
        """
        §3.1.2.14 and §3.1.2.15, accepted; never passed on as they came.
        """
        message = parseMessage(
            withHeaders(
                "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
                "To: Watson, Thomas < sip:t.watson@example.org >",
            )
        )
        assert str(message.fromAddr()) == '"Bell, Alexander" <sip:a.g.bell@example.com>;tag=43'
        assert str(message.toAddr()) == '"Watson, Thomas" <sip:t.watson@example.org>'

    def test_badvers(self) -> None:
        """
        §3.1.2.16: 505, answered although its Via says SIP/7.0 too.
        """
        data = crlf(
            "OPTIONS sip:t.watson@example.org SIP/7.0\n"
            "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\n"
            "Max-Forwards:     70\n"
            "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\n"
            "To:      T. Watson <sip:t.watson@example.org>\n"
            "Call-ID: badvers.31417@c.example.com\n"
            "CSeq:    1 OPTIONS\n"
            "l: 0\n\n"
        )
        error = parseError(data)
        assert (error.code, error.reason) == (505, "Version Not Supported")
        response = checkErrorResponse(error)
        assert response is not None
        assert response.header("via") == "SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"

    @pytest.mark.parametrize(
        "start, cseq",
        [
            ("OPTIONS sip:user@example.com SIP/2.0", "8 INVITE"),
            ("NEWMETHOD sip:user@example.com SIP/2.0", "8 INVITE"),
            ("OPTIONS sip:user@example.com SIP/2.0", "8 options"),
        ],
    )
    def test_mismatch(self, start: str, cseq: str) -> None:
        """
        §3.1.2.17, §3.1.2.18: CSeq method differs from the request's.
        """
        error = parseError(withHeaders("CSeq: " + cseq, start=start))
        assert (error.code, error.reason) == (400, "CSeq Method Mismatch")
        assert checkErrorResponse(error) is not None

    def test_insuf(self) -> None:
        """
        §3.3.1: missing To, From, Call-ID: 400, which cannot be addressed.
        """
        data = crlf(
            "INVITE sip:user@example.com SIP/2.0\n"
            "CSeq: 193942 INVITE\n"
            "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\n"
            "Content-Type: application/sdp\n"
            "l: 152\n\n"
        ) + sdp("192.0.2.95", "192.0.2.95")
        error = parseError(data)
        assert error.code == 400
        assert error.reason.startswith("Missing")
        assert error.errorResponse() is None

    def test_multi01(self) -> None:
        """
        §3.3.8: several values of single-valued headers: 400.
        """
        data = crlf(
            "INVITE sip:user@company.com SIP/2.0\n"
            "Contact: <sip:caller@host25.example.net>\n"
            "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\n"
            "Max-Forwards: 70\n"
            "CSeq: 5 INVITE\n"
            "Call-ID: multi01.98asdh@192.0.2.1\n"
            "CSeq: 59 INVITE\n"
            "Call-ID: multi01.98asdh@192.0.2.2\n"
            "From: sip:caller@example.com;tag=3413415\n"
            "To: sip:user@example.com\n"
            "To: sip:other@example.net\n"
            "From: sip:caller@example.net;tag=2923420123\n"
            "Content-Type: application/sdp\n"
            "l: 154\n"
            "Contact: <sip:caller@host36.example.net>\n"
            "Max-Forwards: 5\n\n"
        ) + sdp("192.0.2.25", "192.0.2.25")
        error = parseError(data)
        assert error.code == 400
        checkErrorResponse(error)

    @pytest.mark.parametrize(
        "lines, reason",
        [
            (("From: <sip:a@example.test>;tag=1", "X: y"), None),
            (("X: y", "From: <sip:a@example.test>;tag=2"), "Bad From"),
            (("X: y", "To: <sip:b@example.test>"), "Bad To"),
            (("X: y", "CSeq: 63104 OPTIONS"), "Bad CSeq"),
        ],
    )
    def test_singleValued(self, lines: Tuple[str, str], reason: Optional[str]) -> None:
        """
        A second From, To or CSeq line is refused: which one counts would
        depend on the reader.
        """
        data = withHeaders(lines[0]).replace(b"Content-Length", crlf(lines[1] + "\nContent-Length"))
        if reason is None:
            parseMessage(data)
        else:
            assert parseError(data).reason == reason

    def test_mcl01(self) -> None:
        """
        §3.3.9: two different Content-Length values: 400.
        """
        data = crlf(
            "OPTIONS sip:user@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\n"
            "To: sip:user@example.com\n"
            "From: sip:other@example.net;tag=3923942\n"
            "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\n"
            "CSeq: 15932 OPTIONS\n"
            "Content-Length: 13\n"
            "Max-Forwards: 60\n"
            "Content-Length: 5\n"
            "Content-Type: text/plain\n\n"
            "There's no way to know how many octets are supposed to be here.\n"
        )
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bad Content-Length")
        with pytest.raises(FramingError) as info:
            StreamFramer().dataReceived(data)
        assert info.value.code == 400


class TestHostile:
    def test_empty(self) -> None:
        for data in (b"", b"\r\n", b"\r\n\r\n\r\n"):
            error = parseError(data)
            assert error.code is None
            assert error.partial is None
            assert error.errorResponse() is None

    def test_randomBytes(self) -> None:
        rng = random.Random(4475)
        for _ in range(300):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            try:
                parseMessage(data)
            except ParseError as e:
                checkErrorResponse(e)

    def test_tooManyHeaders(self) -> None:
        data = withHeaders(*["X-H%d: v" % (i,) for i in range(500)])
        assert len(data) < 65535
        error = parseError(data)
        assert (error.code, error.reason) == (513, "Too Many Headers")
        assert checkErrorResponse(error) is not None

    def test_headerLineTooLong(self) -> None:
        error = parseError(withHeaders("Subject: " + "x" * 9000))
        assert (error.code, error.reason) == (513, "Header Line Too Long")

    def test_longRequestURI(self) -> None:
        uri = "sip:" + "a" * 2048 + "@example.test"
        error = parseError(withHeaders(start="OPTIONS %s SIP/2.0" % (uri,)))
        assert (error.code, error.reason) == (414, "Request-URI Too Long")
        assert isinstance(error.partial, Request)
        assert error.partial.uri == uri
        response = checkErrorResponse(error)
        assert response is not None
        assert response.reason == "Request-URI Too Long"

    def test_bodyOverLimit(self) -> None:
        error = parseError(withHeaders(body=b"x" * 61000))
        assert (error.code, error.reason) == (413, "Request Entity Too Large")
        assert error.partial is not None and error.partial.body == b""
        assert checkErrorResponse(error) is not None

    def test_bodyLimitConfigurable(self) -> None:
        data = withHeaders(body=b"x" * 200)
        assert parseMessage(data).body == b"x" * 200
        assert parseError(data, Limits(maxBodySize=100)).code == 413

    def test_messageOver64KiB(self) -> None:
        error = parseError(withHeaders(body=b"x" * 70000))
        assert (error.code, error.reason) == (513, "Message Too Large")
        assert checkErrorResponse(error) is not None

    @pytest.mark.parametrize(
        "value", ["-1", "-999", "abc", "5x", "+5", " ", "1e3", "\u0665", "9999999999",
                  "1" + "0" * 40, pytest.param("9" * 5000, id="5000-digits")]
    )
    def test_badContentLength(self, value: str) -> None:
        error = parseError(withHeaders(body=b"hello", length=value))
        assert (error.code, error.reason) == (400, "Bad Content-Length")
        assert checkErrorResponse(error) is not None

    @pytest.mark.parametrize(
        "value",
        ["-1 OPTIONS", "x OPTIONS", "1.5 OPTIONS", "2147483648 OPTIONS",
         pytest.param("9" * 5000 + " OPTIONS", id="5000-digits"),
         "\u0661 OPTIONS", "OPTIONS", "", "1 OPTIONS x"],
    )
    def test_badCSeq(self, value: str) -> None:
        """
        Always a 400 ParseError, never a ValueError (5000 digits once
        overflowed CPython's int() limit), and answered.
        """
        error = parseError(withHeaders("CSeq: " + value))
        assert (error.code, error.reason) == (400, "Bad CSeq")
        assert checkErrorResponse(error) is not None

    @pytest.mark.parametrize("name", ["Expires", "Max-Forwards"])
    @pytest.mark.parametrize(
        "value",
        ["-1", "abc", "1" + "0" * 20, pytest.param("9" * 5000, id="5000-digits"), "\u0663", "", "1, 2"],
    )
    def test_badNumbers(self, name: str, value: str) -> None:
        error = parseError(withHeaders("%s: %s" % (name, value)))
        assert (error.code, error.reason) == (400, "Bad " + name)
        assert checkErrorResponse(error) is not None

    def test_repeatedExpires(self) -> None:
        data = withHeaders("Expires: 60").replace(b"Content-Length", b"Expires: 60\r\nContent-Length")
        assert parseError(data).reason == "Bad Expires"

    def test_nul(self) -> None:
        error = parseError(withHeaders("Subject: a\x00b"))
        assert (error.code, error.reason) == (400, "NUL in message header")
        response = checkErrorResponse(error)
        assert response is not None
        assert not response.hasHeader("subject")

    def test_nulInMandatoryHeader(self) -> None:
        error = parseError(withHeaders("Call-ID: abc\x00def"))
        assert error.code == 400
        assert error.errorResponse() is None

    def test_nulInBodyIsFine(self) -> None:
        assert parseMessage(withHeaders(body=b"\x00\x00")).body == b"\x00\x00"

    def test_invalidUTF8(self) -> None:
        error = parseError(withHeaders("Subject: caf\xe9").replace("caf\xe9".encode(), b"caf\xe9"))
        assert (error.code, error.reason) == (400, "Invalid UTF-8")
        assert checkErrorResponse(error) is not None
        error = parseError(withHeaders("To: <sip:b@x>").replace(b"<sip:b@x>", b"<sip:\xff@x>"))
        assert error.code == 400
        assert error.errorResponse() is None

    @pytest.mark.parametrize("sep", [b"\n", b"\r"])
    def test_bareCROrLF(self, sep: bytes) -> None:
        data = withHeaders("Subject: a", "X: b").replace(b"Subject: a\r\n", b"Subject: a" + sep)
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bare CR or LF")
        checkErrorResponse(error)

    @pytest.mark.parametrize("sep", [b"\n", b"\r"])
    def test_injectionInToURI(self, sep: bytes) -> None:
        """
        A To URI hiding a bare line break and a fake header: 400, and no
        answer since To must be copied into it.
        """
        data = withHeaders("To: <sip:bob@example.test>").replace(
            b"<sip:bob@example.test>", b"<sip:bob@example.test" + sep + b"X-Evil: injected>"
        )
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bare CR or LF")
        assert error.errorResponse() is None
        assert isinstance(error.partial, Request)
        assert not error.partial.hasHeader("x-evil")

    def test_strayCRBeforeCRLFInToURI(self) -> None:
        """
        CR CR LF: the real line break ends To, whose stray CR is trimmed;
        the answer carries no CR and not the injected header.
        """
        data = withHeaders("To: <sip:bob@example.test>").replace(
            b"<sip:bob@example.test>", b"<sip:bob@example.test\r\r\nX-Evil: injected>"
        )
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Bare CR or LF")
        response = checkErrorResponse(error)
        assert response is not None
        assert b"X-Evil" not in response.toBytes()

    def test_injectionInOtherHeader(self) -> None:
        data = withHeaders("Contact: <sip:alice@192.0.2.1>").replace(
            b"<sip:alice@192.0.2.1>", b"<sip:alice@192.0.2.1\nX-Evil: injected>"
        )
        error = parseError(data)
        response = checkErrorResponse(error)
        assert response is not None
        assert b"X-Evil" not in response.toBytes()

    def test_injectionInRequestURI(self) -> None:
        error = parseError(
            withHeaders(start="OPTIONS sip:bob@example.test%X-Evil: 1 SIP/2.0").replace(b"%", b"\n")
        )
        assert (error.code, error.reason) == (400, "Bare CR or LF")
        response = checkErrorResponse(error)
        assert response is not None
        assert b"X-Evil" not in response.toBytes()

    @pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
    def test_missingMandatory(self, name: str) -> None:
        error = parseError(withHeaders(name))
        assert error.code == 400
        assert error.reason == "Missing %s Header" % (name,)
        assert error.errorResponse() is None

    def test_emptyCallID(self) -> None:
        error = parseError(withHeaders("Call-ID: "))
        assert (error.code, error.reason) == (400, "Bad Call-ID")

    def test_sip30(self) -> None:
        error = parseError(withHeaders(start="OPTIONS sip:bob@example.test SIP/3.0"))
        assert (error.code, error.reason) == (505, "Version Not Supported")
        response = checkErrorResponse(error)
        assert response is not None
        assert response.code == 505

    @pytest.mark.parametrize(
        "line",
        ["GET / HTTP/1.1", "OPTIONS", "OPTIONS sip:bob@example.test", "\x16\x03\x01", "SIP/2.0"],
    )
    def test_notSIP(self, line: str) -> None:
        error = parseError(withHeaders(start=line))
        assert error.code is None
        assert error.errorResponse() is None

    @pytest.mark.parametrize(
        "line", ["INV ITE sip:bob@example.test SIP/2.0", "INV@ITE sip:bob@example.test SIP/2.0"]
    )
    def test_badMethod(self, line: str) -> None:
        error = parseError(withHeaders(start=line))
        assert error.code == 400

    @pytest.mark.parametrize("line", ["No colon here", ": no name", "Bad Name: x", "Zoë: x"])
    def test_malformedHeaderLine(self, line: str) -> None:
        data = withHeaders("X: y").replace(b"X: y", line.encode("utf-8"))
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Malformed header line")
        assert checkErrorResponse(error) is not None

    def test_knownNameWithoutColon(self) -> None:
        """
        A line that spells a header name seen before, without a colon, is
        no header of that name.
        """
        parseMessage(SUBSCRIBE)
        data = withHeaders("X: y").replace(b"X: y", b"Contact")
        error = parseError(data)
        assert (error.code, error.reason) == (400, "Malformed header line")
        assert isinstance(error.partial, Request)
        assert not error.partial.hasHeader("contact")

    def test_errorResponseCopiesHeaders(self) -> None:
        error = parseError(withHeaders("Expires: x", "Record-Route: <sip:p.example;lr>"))
        response = checkErrorResponse(error)
        assert response is not None
        assert response.code == 400
        assert response.reason == "Bad Expires"
        assert sorted(response.headers) == ["call-id", "cseq", "from", "to", "via"]
        assert response.header("to") == "<sip:bob@example.test>"
        parsed = parseMessage(response.toBytes())
        assert isinstance(parsed, Response)
        assert parsed.code == 400


def message(body: bytes = b"", cseq: int = 1, length: Optional[str] = None) -> bytes:
    return withHeaders("CSeq: %d OPTIONS" % (cseq,), body=body, length=length)


def feed(framer: StreamFramer, chunks: List[bytes]) -> List[Union[bytes, object]]:
    out: List[Union[bytes, object]] = []
    for chunk in chunks:
        out.extend(framer.dataReceived(chunk))
    return out


class TestStreamFramer:
    def test_pipelined(self) -> None:
        stream = message(b"one", 1) + message(b"", 2) + message(b"three", 3)
        items = StreamFramer().dataReceived(stream)
        assert items == [message(b"one", 1), message(b"", 2), message(b"three", 3)]
        parsed = [parseMessage(item, stream=True) for item in items]  # type: ignore[arg-type]
        assert [m.cseq().number for m in parsed] == [1, 2, 3]
        assert [m.body for m in parsed] == [b"one", b"", b"three"]

    def test_byteByByte(self) -> None:
        stream = message(b"hello", 1) + message(b"world!", 2)
        framer = StreamFramer()
        items = feed(framer, [stream[i : i + 1] for i in range(len(stream))])
        assert items == [message(b"hello", 1), message(b"world!", 2)]

    def test_splitInBody(self) -> None:
        data = message(b"0123456789")
        framer = StreamFramer()
        assert framer.dataReceived(data[:-5]) == []
        assert framer.dataReceived(data[-5:-1]) == []
        assert framer.dataReceived(data[-1:] + data[:10]) == [data]
        assert framer.dataReceived(data[10:]) == [data]

    def test_ping(self) -> None:
        """
        RFC 5626 §4.4.1: CRLF CRLF is a keep-alive ping.
        """
        framer = StreamFramer()
        assert framer.dataReceived(b"\r\n\r\n") == [PING]
        assert framer.dataReceived(b"\r\n") == []
        assert framer.dataReceived(b"\r\n") == [PING]
        assert framer.dataReceived(b"\r\n\r\n" + message() + b"\r\n\r\n") == [PING, message(), PING]

    def test_strayCRLFsIgnored(self) -> None:
        framer = StreamFramer()
        items = framer.dataReceived(b"\r\n" + message(b"", 1) + b"\r\n" + message(b"", 2) + b"\n\r")
        assert items == [message(b"", 1), message(b"", 2)]
        assert framer.dataReceived(message(b"", 3)) == [message(b"", 3)]

    def test_missingContentLength(self) -> None:
        """
        A head without Content-Length frames an empty body.
        """
        data = message(length="-")
        items = StreamFramer().dataReceived(data + message(b"x", 2))
        assert items == [data, message(b"x", 2)]
        assert parseMessage(items[0], stream=True).body == b""  # type: ignore[arg-type]

    def test_hugeContentLength(self) -> None:
        """
        A billion-byte body is refused as soon as the head is complete,
        without waiting for or buffering any of it.
        """
        framer = StreamFramer()
        head = message(length="1000000000")
        with pytest.raises(FramingError) as info:
            framer.dataReceived(head + b"x" * 10)
        error = info.value
        assert (error.code, error.reason) == (413, "Request Entity Too Large")
        assert error.head == head[: head.index(b"\r\n\r\n")]
        response = error.errorResponse()
        assert response is not None
        assert response.code == 413
        assert response.header("cseq") == "1 OPTIONS"
        assert framer._pending == bytearray()

    @pytest.mark.parametrize("digits", ["1" + "0" * 9, "9" * 30])
    def test_hugeContentLengthDigits(self, digits: str) -> None:
        with pytest.raises(FramingError) as info:
            StreamFramer().dataReceived(message(length=digits))
        assert info.value.code == 413

    def test_bodyOverLimit(self) -> None:
        with pytest.raises(FramingError) as info:
            StreamFramer(Limits(maxBodySize=100)).dataReceived(message(length="101"))
        assert info.value.code == 413

    def test_messageOverLimit(self) -> None:
        limits = Limits(maxMessageSize=1000, maxBodySize=900)
        with pytest.raises(FramingError) as info:
            StreamFramer(limits).dataReceived(message(length="800"))
        assert (info.value.code, info.value.reason) == (513, "Message Too Large")

    def test_headOverLimit(self) -> None:
        """
        A head that never ends is refused once it passes the limit.
        """
        framer = StreamFramer(Limits(maxMessageSize=1000))
        assert framer.dataReceived(b"OPTIONS sip:a SIP/2.0\r\nX: " + b"a" * 900) == []
        with pytest.raises(FramingError) as info:
            framer.dataReceived(b"a" * 200)
        assert info.value.code is None
        assert info.value.errorResponse() is None

    def test_headOverLimitWithBlankLine(self) -> None:
        limits = Limits(maxMessageSize=1000)
        with pytest.raises(FramingError) as info:
            StreamFramer(limits).dataReceived(withHeaders("X: " + "a" * 1000))
        assert info.value.code == 513

    @pytest.mark.parametrize("value", ["abc", "-1", "", "1 2"])
    def test_badContentLength(self, value: str) -> None:
        with pytest.raises(FramingError) as info:
            StreamFramer().dataReceived(message(length=value))
        assert info.value.code == 400
        assert info.value.errorResponse() is not None

    def test_compactContentLength(self) -> None:
        data = message(b"abc").replace(b"Content-Length: 3", b"l : 3")
        assert StreamFramer().dataReceived(data + message()) == [data, message()]

    def test_continuationLineIsNotContentLength(self) -> None:
        """
        A folded line that reads like Content-Length belongs to the header
        it continues, for the framer as for the parser.
        """
        data = withHeaders("Subject: x").replace(b"Subject: x", b"Subject: x\r\n Content-Length: 5")
        data = data.replace(b"Content-Length: 0\r\n", b"")
        items = StreamFramer().dataReceived(data + b"hello")
        assert items[0] == data

    def test_messagesBeforeErrorKept(self) -> None:
        framer = StreamFramer()
        with pytest.raises(FramingError) as info:
            framer.dataReceived(b"\r\n\r\n" + message(b"ok") + message(length="x"))
        assert info.value.messages == [PING, message(b"ok")]

    def test_dribbleIsLinear(self) -> None:
        """
        A head dribbled a byte at a time costs time linear in its size (it
        was quadratic: 1.7 s for 64 KiB, a minute for 300 KiB).
        """
        limits = Limits(maxMessageSize=300000, maxBodySize=10)
        framer = StreamFramer(limits)
        data = b"OPTIONS sip:a SIP/2.0\r\nX: " + b"a" * 290000
        start = time.perf_counter()
        for i in range(len(data)):
            framer.dataReceived(data[i : i + 1])
        assert time.perf_counter() - start < 10
        with pytest.raises(FramingError):
            framer.dataReceived(b"a" * 20000)

    def test_errorResetsState(self) -> None:
        framer = StreamFramer()
        framer.dataReceived(b"OPTIONS sip:a")
        with pytest.raises(FramingError):
            framer.dataReceived(b" SIP/2.0\r\nContent-Length: x\r\n\r\n")
        assert framer.dataReceived(message()) == [message()]


# Hypothesis properties.

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(alphabet=TOKEN, min_size=1, max_size=10)
hosts = st.sampled_from(["example.test", "192.0.2.1", "[2001:db8::1]", "Host-1.Example.COM"])
# Text without control characters (CR, LF, NUL among them) or surrogates.
safeText = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20
)
# str.strip() trims Unicode white space at the ends of values (a deliberate
# tolerance, see parseMessage); generated values are therefore trimmed.
freeText = safeText.map(str.strip)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def sipURIs(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP"]))
    user = draw(st.one_of(st.none(), st.text(alphabet=TOKEN + "&=+$,;?/", min_size=1, max_size=8)))
    params = draw(st.lists(tokens, max_size=3))
    uri = scheme + ":" + ("" if user is None else user + "@") + draw(hosts)
    return uri + "".join(";" + p for p in params)


def elements() -> st.SearchStrategy[str]:
    """
    One element of a comma-separated list header: tokens, quoted strings
    holding anything (commas included) and bracketed URIs holding commas.
    """
    piece = st.one_of(
        tokens,
        safeText.map(quoted),
        st.text(alphabet=TOKEN + ":@;=,?/ ", max_size=15).map(lambda t: "<" + t + ">"),
    )
    return st.lists(piece, min_size=1, max_size=3).map(" ".join)


def nameAddrs() -> st.SearchStrategy[str]:
    return st.builds(
        lambda display, uri, tag: (display + " " if display else "") + "<" + uri + ">" + tag,
        st.one_of(st.just(""), safeText.map(quoted)),
        sipURIs(),
        st.one_of(st.just(""), tokens.map(lambda t: ";tag=" + t)),
    )


def randomCase(name: str, flips: List[bool]) -> str:
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips + [False] * len(name)))


EXTRA_HEADERS = [
    (["Subject", "s"], freeText),
    (["Event", "o"], tokens),
    (["Allow-Events", "u"], elements()),
    (["Supported", "k"], elements()),
    (["Contact", "m"], st.one_of(nameAddrs(), elements())),
    (["Content-Type", "c"], tokens),
    (["Content-Encoding", "e"], elements()),
    (["Accept"], elements()),
    (["Allow"], elements()),
    (["Route"], nameAddrs()),
    (["Record-Route"], nameAddrs()),
    (["Authorization", "WWW-Authenticate"], freeText),
    (["User-Agent", "X-Custom", "Date", "Subscription-State"], freeText),
    (["Expires", "Max-Forwards"], st.integers(0, 2**32 - 1).map(str)),
]
SPECIAL = {"content-length", "via", "from", "to", "call-id", "cseq", "expires", "max-forwards",
           "l", "v", "f", "t", "i"} | set(LIST_HEADERS)


@st.composite
def extraHeaders(draw: st.DrawFn) -> List[Tuple[str, str]]:
    out = []
    for _ in range(draw(st.integers(0, 6))):
        names, values = draw(st.sampled_from(EXTRA_HEADERS))
        name = randomCase(draw(st.sampled_from(names)), draw(st.lists(st.booleans(), max_size=20)))
        out.append((name, draw(values)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(tokens)
        if name.lower() in SPECIAL or name.lower() in ("o", "u", "m", "c", "e", "s", "k", "r", "b", "x",
                                                       "a", "j", "d", "y"):
            continue
        out.append((name, draw(freeText)))
    return out


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """
    Structured requests and responses a peer could send.
    """
    method = draw(st.one_of(st.sampled_from(["SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS"]), tokens))
    result: Message
    if draw(st.booleans()):
        result = Request(method, draw(sipURIs()))
    else:
        result = Response(draw(st.integers(100, 699)), draw(st.one_of(st.none(), safeText)))
    add = result.addHeader
    for _ in range(draw(st.integers(1, 3))):
        add(draw(st.sampled_from(["Via", "v", "VIA"])),
            "SIP/2.0/%s %s;branch=z9hG4bK%s" % (draw(st.sampled_from(["UDP", "TCP", "TLS"])),
                                                draw(hosts), draw(tokens)))
    add(draw(st.sampled_from(["From", "f", "FROM"])), draw(nameAddrs()))
    add(draw(st.sampled_from(["To", "t", "tO"])), draw(nameAddrs()))
    add(draw(st.sampled_from(["Call-ID", "i", "call-id"])), draw(freeText.filter(bool)))
    add(draw(st.sampled_from(["CSeq", "cseq"])), "%d %s" % (draw(st.integers(0, 2**31 - 1)), method))
    seen = set()
    for name, value in draw(extraHeaders()):
        key = name.lower()
        if key in ("expires", "max-forwards"):
            if key in seen:
                continue
            seen.add(key)
        add(name, value)
    result.body = draw(st.binary(max_size=200))
    return result


def assertEquivalent(parsed: Message, original: Message) -> None:
    assert type(parsed) is type(original)
    if isinstance(original, Request):
        assert isinstance(parsed, Request)
        assert (parsed.method, parsed.uri) == (original.method, original.uri)
    else:
        assert isinstance(parsed, Response) and isinstance(original, Response)
        assert (parsed.code, parsed.reason) == (original.code, original.reason)
    assert parsed.headers.pop("content-length") == [str(len(original.body))]
    assert parsed.headers == original.headers
    assert list(parsed.headers) == list(original.headers)
    assert parsed.body == original.body


class TestProperties:
    @settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages())
    def test_roundTrip(self, original: Message) -> None:
        """
        toBytes() then parseMessage() gives an equivalent message, and
        toBytes() is a fixed point after one round; the same through a
        stream.
        """
        data = original.toBytes()
        parsed = parseMessage(data)
        assert parsed.toBytes() == data
        assertEquivalent(parsed, original)
        framed = StreamFramer().dataReceived(data)
        assert framed == [data]
        assert parseMessage(data, stream=True).toBytes() == data

    @settings(max_examples=200, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=600),
            st.lists(
                st.one_of(
                    st.sampled_from(
                        [b"SIP/2.0", b"SIP/2.0 200 OK", b"OPTIONS sip:a@b SIP/2.0", b"\r\n", b"\r\n\r\n",
                         b"\n", b"\r", b" ", b"\t", b":", b";", b",", b'"', b"\\", b"<", b">", b"Via: ",
                         b"SIP/2.0/UDP h", b"l: ", b"Content-Length: ", b"CSeq: 1 OPTIONS", b"From: ",
                         b"To: ", b"i: x", b"Expires: ", b"9" * 12, b"-1", b"\x00", b"\xff", b"\xc3",
                         b"\xe2\x80\xa8", b"\xc2\x85", b"\xc2\xb2"]
                    ),
                    st.binary(max_size=8),
                ),
                max_size=60,
            ).map(b"".join),
        )
    )
    def test_fuzz(self, data: bytes) -> None:
        """
        Any bytes give a message or a ParseError whose answer is safe; the
        structured accessors of a message raise nothing but HeaderError.
        """
        try:
            result = parseMessage(data)
        except ParseError as e:
            checkErrorResponse(e)
            return
        assert isinstance(result, (Request, Response))
        for access in (result.cseq, result.topVia, result.vias, result.fromAddr, result.toAddr):
            try:
                access()
            except HeaderError:
                pass
        result.toBytes()

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.sampled_from([SUBSCRIBE, NOTIFY, b"\r\n\r\n", b"\r\n", b"\n", b"\r", REQUEST,
                                 message(b"x" * 300), message(length="1000000000"),
                                 message(length="abc"), b"OPTIONS sip:a SIP/2.0\r\n"]),
                st.binary(max_size=40),
            ),
            max_size=8,
        ).map(b"".join),
        st.lists(st.integers(0, 3000), max_size=20),
    )
    def test_framerChunking(self, stream: bytes, cuts: List[int]) -> None:
        """
        However the stream is cut into segments, the framer gives what it
        gives for the stream at once, and fails where it fails.
        """
        limits = Limits(maxMessageSize=2000, maxBodySize=1000)
        points = sorted({c for c in cuts if 0 < c < len(stream)})
        chunks = [stream[a:b] for a, b in zip([0] + points, points + [len(stream)])]

        def frame(parts: List[bytes]) -> Tuple[List[Union[bytes, object]], bool]:
            framer = StreamFramer(limits)
            out: List[Union[bytes, object]] = []
            try:
                for part in parts:
                    out.extend(framer.dataReceived(part))
            except FramingError as e:
                out.extend(e.messages)
                return out, True
            return out, False

        whole = frame([stream])
        assert frame(chunks) == whole
        for item in whole[0]:
            if item is not PING:
                assert isinstance(item, bytes)
                try:
                    parseMessage(item, limits, stream=True)
                except ParseError as e:
                    checkErrorResponse(e)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "truncate", "duplicate", "delete", "insert"]),
                st.integers(0, len(SUBSCRIBE)),
                st.integers(0, len(SUBSCRIBE)),
                st.sampled_from([b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b",", b'"', b"<", b":", b" ",
                                 b"9", b";", b"\\"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_mutatedSubscribe(self, mutations: List[Tuple[str, int, int, bytes]]) -> None:
        """
        Byte flips, truncation, duplication, deletion and insertion in the
        sample SUBSCRIBE give a message or a ParseError with a safe answer.
        """
        data = bytearray(SUBSCRIBE)
        for kind, a, b, byte in mutations:
            a, b = sorted((a % (len(data) + 1), b % (len(data) + 1)))
            if kind == "flip" and a < len(data):
                data[a] ^= 1 << (b % 8)
            elif kind == "truncate":
                del data[a:]
            elif kind == "duplicate":
                data[b:b] = data[a:b]
            elif kind == "delete":
                del data[a:b]
            else:
                data[a:a] = byte
        try:
            result = parseMessage(bytes(data))
        except ParseError as e:
            checkErrorResponse(e)
            return
        assert isinstance(result, Message)
        try:
            result.topVia()
            result.cseq()
            result.fromAddr()
            result.toAddr()
        except HeaderError:
            pass
