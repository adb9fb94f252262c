"""
Tests for L{presence.sip.message}: the message model, its header access
(case-insensitive, compact forms) and serialisation (RFC 3261 §7).
"""

from __future__ import annotations

import pytest

from bench.samples import NOTIFY, PIDF, SUBSCRIBE
from presence.sip.headers import HeaderError
from presence.sip.message import (
    COMPACT_FORMS,
    Message,
    Request,
    Response,
    canonicalName,
    headerKey,
)
from presence.sip.parser import parseMessage


def makeRequest(method: str = "SUBSCRIBE") -> Request:
    request = Request(method, "sip:bob@example.test")
    request.addHeader("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport")
    request.addHeader("From", '"Alice" <sip:alice@example.test>;tag=1928301774')
    request.addHeader("To", "<sip:bob@example.test>")
    request.addHeader("Call-ID", "a84b4c76e66710@pc33.example.test")
    request.addHeader("CSeq", "1 " + method)
    return request


class TestHeaderNames:
    @pytest.mark.parametrize(
        "compact, key",
        [
            ("i", "call-id"),
            ("m", "contact"),
            ("e", "content-encoding"),
            ("l", "content-length"),
            ("c", "content-type"),
            ("f", "from"),
            ("s", "subject"),
            ("k", "supported"),
            ("t", "to"),
            ("v", "via"),
            ("o", "event"),
            ("u", "allow-events"),
        ],
    )
    def test_compactForms(self, compact: str, key: str) -> None:
        """
        RFC 3261 §7.3.3 and RFC 6665 (o, u).
        """
        assert headerKey(compact) == key
        assert headerKey(compact.upper()) == key
        assert COMPACT_FORMS[compact] == key

    def test_caseInsensitive(self) -> None:
        assert headerKey("VIA") == headerKey("via") == headerKey("Via") == "via"
        assert headerKey("Call-ID") == "call-id"

    @pytest.mark.parametrize(
        "key, name",
        [
            ("call-id", "Call-ID"),
            ("cseq", "CSeq"),
            ("www-authenticate", "WWW-Authenticate"),
            ("sip-etag", "SIP-ETag"),
            ("sip-if-match", "SIP-If-Match"),
            ("content-type", "Content-Type"),
            ("subscription-state", "Subscription-State"),
            ("x-custom-thing", "X-Custom-Thing"),
            ("via", "Via"),
        ],
    )
    def test_canonicalName(self, key: str, name: str) -> None:
        assert canonicalName(key) == name


class TestHeaderAccess:
    def test_compactAndCaseAgree(self) -> None:
        request = makeRequest()
        for name in ("v", "V", "via", "VIA", "Via"):
            assert request.header(name) == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"
        assert request.header("i") == request.header("CALL-id") == request.callId

    def test_missing(self) -> None:
        request = makeRequest()
        assert request.header("expires") is None
        assert request.headerValues("expires") == []
        assert not request.hasHeader("expires")
        assert request.hasHeader("f")

    def test_setAddInsertRemove(self) -> None:
        request = makeRequest()
        request.addHeader("Route", "<sip:a.example;lr>")
        request.addHeader("route", "<sip:b.example;lr>")
        request.insertHeader("ROUTE", "<sip:first.example;lr>")
        assert request.headerValues("Route") == [
            "<sip:first.example;lr>",
            "<sip:a.example;lr>",
            "<sip:b.example;lr>",
        ]
        request.setHeader("Route", "<sip:only.example;lr>")
        assert request.headerValues("route") == ["<sip:only.example;lr>"]
        request.removeHeader("ROUTE")
        assert not request.hasHeader("route")
        request.removeHeader("route")

    def test_headerValuesIsACopy(self) -> None:
        request = makeRequest()
        request.headerValues("via").append("x")
        assert len(request.headerValues("via")) == 1

    @pytest.mark.parametrize(
        "value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b", "\r\n"]
    )
    def test_valueInjectionRefused(self, value: str) -> None:
        request = makeRequest()
        for method in (request.setHeader, request.addHeader, request.insertHeader):
            with pytest.raises(ValueError):
                method("Subject", value)
        assert not request.hasHeader("subject")

    @pytest.mark.parametrize(
        "name", ["X-Evil: 1\r\nSubject", "Bad Name", "X:Y", "", "X\r\nY", "X\x00", "Zoë"]
    )
    def test_nameInjectionRefused(self, name: str) -> None:
        """
        A header name is written verbatim before C{:}, so it must be a token.
        """
        request = makeRequest()
        for method in (request.setHeader, request.addHeader, request.insertHeader):
            with pytest.raises(ValueError):
                method(name, "v")
        assert b"X-Evil" not in request.toBytes()

    def test_oddButValidNames(self) -> None:
        request = makeRequest()
        request.addHeader("extensionHeader-!.%*+_`'~", "x")
        assert request.header("EXTENSIONHEADER-!.%*+_`'~") == "x"


class TestStructuredAccess:
    def test_accessors(self) -> None:
        request = makeRequest()
        assert request.cseq().number == 1
        assert request.cseq().method == "SUBSCRIBE"
        assert request.topVia().branch == "z9hG4bK776asdhds"
        assert [via.host for via in request.vias()] == ["192.0.2.10"]
        assert request.fromAddr().tag == "1928301774"
        assert request.toAddr().tag is None
        assert request.toAddr().uri == "sip:bob@example.test"

    def test_missing(self) -> None:
        request = Request("OPTIONS", "sip:a@b")
        with pytest.raises(HeaderError):
            request.topVia()
        with pytest.raises(HeaderError):
            request.cseq()
        with pytest.raises(HeaderError):
            request.fromAddr()
        with pytest.raises(HeaderError):
            request.toAddr()
        assert request.vias() == []
        assert request.callId is None

    def test_startLineAbstract(self) -> None:
        with pytest.raises(NotImplementedError):
            Message().startLine()


class TestToBytes:
    def test_request(self) -> None:
        request = makeRequest("OPTIONS")
        request.addHeader("Accept", "application/sdp")
        request.addHeader("Accept", "application/pidf+xml")
        request.addHeader("v", "SIP/2.0/TCP 192.0.2.11;branch=z9hG4bK2")
        assert request.toBytes() == (
            b"OPTIONS sip:bob@example.test SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
            b"Via: SIP/2.0/TCP 192.0.2.11;branch=z9hG4bK2\r\n"
            b'From: "Alice" <sip:alice@example.test>;tag=1928301774\r\n'
            b"To: <sip:bob@example.test>\r\n"
            b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
            b"CSeq: 1 OPTIONS\r\n"
            b"Accept: application/sdp, application/pidf+xml\r\n"
            b"Content-Length: 0\r\n"
            b"\r\n"
        )
        assert bytes(request) == request.toBytes()

    def test_contentLengthComputed(self) -> None:
        """
        A stale Content-Length is never written; the real one always is,
        last.
        """
        request = makeRequest("PUBLISH")
        request.setHeader("Content-Length", "999")
        request.setHeader("Content-Type", "application/pidf+xml")
        request.body = PIDF
        data = request.toBytes()
        assert b"999" not in data
        assert data.count(b"Content-Length") == 1
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.endswith(b"\r\nContent-Length: %d" % (len(PIDF),))
        assert body == PIDF

    def test_utf8(self) -> None:
        request = makeRequest()
        request.setHeader("From", '"Zoë 小明" <sip:zoe@example.test>;tag=9')
        assert '"Zoë 小明"'.encode("utf-8") in request.toBytes()

    def test_response(self) -> None:
        response = Response(200)
        assert response.reason == "OK"
        assert response.toBytes() == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        assert Response(299).reason == "Unknown"
        assert Response(489).reason == "Bad Event"
        assert Response(202, "Accepted for now").startLine() == "SIP/2.0 202 Accepted for now"
        assert repr(Response(404)) == "<Response 404 Not Found>"

    def test_repr(self) -> None:
        assert repr(makeRequest()) == "<Request SUBSCRIBE sip:bob@example.test>"

    @pytest.mark.parametrize("sample", [SUBSCRIBE, NOTIFY], ids=["SUBSCRIBE", "NOTIFY"])
    def test_samplesFixedPoint(self, sample: bytes) -> None:
        """
        Serialising a parsed sample and parsing it again gives the same
        message, and serialising that gives the same bytes.
        """
        first = parseMessage(sample)
        data = first.toBytes()
        second = parseMessage(data)
        assert second.headers == first.headers
        assert second.body == first.body
        assert second.toBytes() == data

    def test_subscribeSerialisation(self) -> None:
        """
        List headers other than Via, Route, Record-Route, Contact, Path and
        Service-Route are joined on one line.
        """
        data = parseMessage(SUBSCRIBE).toBytes()
        assert b"\r\nAllow: INVITE, ACK, CANCEL, BYE, NOTIFY, SUBSCRIBE, OPTIONS\r\n" in data
        assert b"\r\nSupported: eventlist, replaces\r\n" in data
        assert data.endswith(b"\r\nContent-Length: 0\r\n\r\n")


class TestForRequest:
    def test_copiesDialogHeaders(self) -> None:
        request = makeRequest()
        request.addHeader("Via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bK9")
        request.addHeader("Expires", "3600")
        request.addHeader("Contact", "<sip:alice@192.0.2.10>")
        response = Response.forRequest(request, 200, toTag="abc")
        assert response.code == 200
        assert response.reason == "OK"
        assert response.headerValues("via") == request.headerValues("via")
        assert response.header("from") == request.header("from")
        assert response.header("to") == "<sip:bob@example.test>;tag=abc"
        assert response.header("call-id") == request.header("call-id")
        assert response.header("cseq") == "1 SUBSCRIBE"
        assert not response.hasHeader("expires")
        assert not response.hasHeader("contact")

    def test_doesNotShareLists(self) -> None:
        request = makeRequest()
        response = Response.forRequest(request, 200, toTag="abc")
        response.addHeader("Via", "SIP/2.0/UDP x")
        assert request.headerValues("via") == [
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"
        ]
        assert request.header("to") == "<sip:bob@example.test>"

    def test_existingTagKept(self) -> None:
        request = makeRequest()
        request.setHeader("To", "<sip:bob@example.test> ; TAG = old")
        response = Response.forRequest(request, 200, toTag="new")
        assert response.header("to") == "<sip:bob@example.test> ; TAG = old"

    def test_uriTagParamIsNotATag(self) -> None:
        """
        C{;tag=} inside the brackets is a URI parameter, and inside a
        quoted display name it is text: neither is the dialog's To tag.
        """
        request = makeRequest()
        request.setHeader("To", '"x;tag=y" <sip:bob@example.test;tag=z>')
        response = Response.forRequest(request, 200, toTag="abc")
        assert response.toAddr().tag == "abc"

    def test_addrSpecTag(self) -> None:
        request = makeRequest()
        request.setHeader("To", "sip:bob@example.test;tag=old")
        response = Response.forRequest(request, 200, toTag="new")
        assert response.toAddr().tag == "old"

    def test_noTagOn100(self) -> None:
        response = Response.forRequest(makeRequest(), 100, toTag="abc")
        assert response.header("to") == "<sip:bob@example.test>"

    def test_extraHeaders(self) -> None:
        response = Response.forRequest(
            makeRequest(), 200, headers=[("Expires", "3600"), ("m", "<sip:p@192.0.2.1>")]
        )
        assert response.header("expires") == "3600"
        assert response.header("contact") == "<sip:p@192.0.2.1>"
        with pytest.raises(ValueError):
            Response.forRequest(makeRequest(), 200, headers=[("X", "a\r\nb")])

    @pytest.mark.parametrize(
        "reason, expected",
        [
            ("Bad Event", "Bad Event"),
            ("Bad\r\nX-Evil: 1", "Bad  X-Evil: 1"),
            ("nul\x00del\x7f", "nul del "),
            ("", "Error"),
            ("x" * 500, "x" * 120),
        ],
    )
    def test_reasonSanitised(self, reason: str, expected: str) -> None:
        response = Response.forRequest(makeRequest(), 400, reason)
        assert response.reason == expected
        assert response.toBytes().count(b"\r\n") == 8

    def test_missingHeadersSkipped(self) -> None:
        response = Response.forRequest(Request("OPTIONS", "sip:a@b"), 400)
        assert response.headers == {}


def test_topViaParsedOnce() -> None:
    """
    The top Via is parsed once per message and shared with a response
    built for it; replaceTopVia writes a changed one back.
    """
    request = makeRequest()
    via = request.topVia()
    assert request.topVia() is via
    via.params["received"] = "192.0.2.99"
    request.replaceTopVia(via)
    assert request.headers["via"][0] == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport;received=192.0.2.99"
    assert request.topVia() is via
    response = Response.forRequest(request, 200)
    assert response.topVia() is via


def test_topViaReparsedWhenTheHeaderChanges() -> None:
    """
    A Via value written over the header directly is parsed afresh.
    """
    request = makeRequest()
    first = request.topVia()
    request.headers["via"][0] = "SIP/2.0/TCP 192.0.2.20;branch=z9hG4bKother"
    second = request.topVia()
    assert second is not first
    assert (second.transport, second.host, second.branch) == ("TCP", "192.0.2.20", "z9hG4bKother")
    request.insertHeader("Via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKtop")
    assert request.topVia().host == "198.51.100.1"
