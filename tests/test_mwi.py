"""
Tests for the message-summary body (L{presence.mwi}, RFC 3842): what
voicemail systems send, strict refusal of everything else, canonical
rendering and round trips.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.body import BodyError
from presence.mwi import (
    MAX_COUNT,
    MESSAGE_CLASSES,
    MessageCounts,
    MessageSummary,
    MessageSummaryError,
    noMessages,
    parseMessageSummary,
    renderMessageSummary,
    summaryOf,
)

# RFC 3842 section 6, the example body (CRLF line ends).
RFC3842 = (
    b"Messages-Waiting: yes\r\n"
    b"Message-Account: sip:alice@vmail.example.com\r\n"
    b"Voice-Message: 2/8 (0/2)\r\n"
)

# What Asterisk sends; it also lists every count with urgent ones.
ASTERISK = b"Messages-Waiting: no\r\nMessage-Account: sip:*97@192.0.2.1\r\nVoice-Message: 0/3 (0/0)\r\n"


def test_rfcExample() -> None:
    summary = parseMessageSummary(RFC3842)
    assert summary.waiting
    assert summary.account == "sip:alice@vmail.example.com"
    assert summary.countsOf("voice-message") == MessageCounts(2, 8, 0, 2)
    assert summary.countsOf("fax-message") is None
    assert renderMessageSummary(summary) == RFC3842


def test_asterisk() -> None:
    summary = parseMessageSummary(ASTERISK)
    assert not summary.waiting
    assert summary.countsOf("voice-message") == MessageCounts(0, 3, 0, 0)
    assert renderMessageSummary(summary) == ASTERISK


def test_forgivingOfCaseSpacingAndLineEnds() -> None:
    """
    Header names are case-insensitive as in SIP, white space around the
    colon and slashes is allowed, bare LF line ends are forgiven; the
    rendering is canonical.
    """
    summary = parseMessageSummary(
        b"messages-waiting :  YES\nvoice-message: 3 / 1 ( 1 / 0 )  \nFAX-MESSAGE:1/0\n\n"
    )
    assert renderMessageSummary(summary) == (
        b"Messages-Waiting: yes\r\nVoice-Message: 3/1 (1/0)\r\nFax-Message: 1/0\r\n"
    )


def test_everyClassInRfcOrder() -> None:
    body = "".join(
        "{}: {}/0\r\n".format(name, index) for index, name in enumerate(reversed(MESSAGE_CLASSES))
    )
    summary = parseMessageSummary(b"Messages-Waiting: yes\r\n" + body.encode())
    assert [name for name, _ in summary.counts] == list(MESSAGE_CLASSES)


def test_messageHeadersKept() -> None:
    """
    Headers of individual messages after the blank line are given back
    line by line, blank lines between messages included.
    """
    body = RFC3842 + b"\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:bob@example.org>\r\n\r\nSubject: call me\r\n"
    summary = parseMessageSummary(body)
    assert summary.headers == ("To: <sip:alice@example.com>", "From: <sip:bob@example.org>", "", "Subject: call me")
    assert renderMessageSummary(summary) == body


INVALID = {
    "empty": (b"", "empty"),
    "blank lines only": (b"\r\n\r\n", "empty"),
    "no status first": (b"Voice-Message: 1/0\r\nMessages-Waiting: yes\r\n", "line 1"),
    "bad status": (b"Messages-Waiting: maybe\r\n", "yes or no"),
    "not a header": (b"Messages-Waiting: yes\r\nhello\r\n", "line 2: not a header"),
    "unknown line": (b"Messages-Waiting: yes\r\nVoicemail: 1/0\r\n", "line 2: unknown"),
    "two accounts": (b"Messages-Waiting: yes\r\nMessage-Account: a\r\nMessage-Account: b\r\n", "more than one"),
    "empty account": (b"Messages-Waiting: yes\r\nMessage-Account:\r\n", "empty Message-Account"),
    "class twice": (b"Messages-Waiting: yes\r\nVoice-Message: 1/0\r\nvoice-message: 2/0\r\n", "twice"),
    "one count": (b"Messages-Waiting: yes\r\nVoice-Message: 1\r\n", "new/old"),
    "negative count": (b"Messages-Waiting: yes\r\nVoice-Message: -1/0\r\n", "new/old"),
    "huge count": (b"Messages-Waiting: yes\r\nVoice-Message: 1234567890/0\r\n", "new/old"),
    "half urgent": (b"Messages-Waiting: yes\r\nVoice-Message: 1/0 (1)\r\n", "new/old"),
    "trailing junk": (b"Messages-Waiting: yes\r\nVoice-Message: 1/0 x\r\n", "new/old"),
    "control character": (b"Messages-Waiting: yes\r\nMessage-Account: sip:a\x00@b\r\n", "control"),
    "bare CR": (b"Messages-Waiting: yes\rVoice-Message: 1/0\r\n", "control"),
    "bad message header": (RFC3842 + b"\r\nnot a header\r\n", "not a header"),
    "not UTF-8": (b"Messages-Waiting: yes\r\nMessage-Account: \xff\r\n", "UTF-8"),
    "too large": (RFC3842 + b"\r\n" + b"Subject: x\r\n" * 2000, "too large"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalidRefused(name: str) -> None:
    data, hint = INVALID[name]
    with pytest.raises(MessageSummaryError) as excinfo:
        parseMessageSummary(data)
    assert isinstance(excinfo.value, BodyError)
    assert hint.lower() in excinfo.value.reason.lower(), excinfo.value.reason
    assert re.fullmatch(r"[\x20-\x7e]{1,120}", excinfo.value.reason)


def test_strBodyIsAProgrammingError() -> None:
    with pytest.raises(TypeError):
        parseMessageSummary("Messages-Waiting: yes")  # type: ignore[arg-type]


def test_operatorSummary() -> None:
    """
    What `presence-admin mwi` pushes: waiting when there are new messages.
    """
    assert renderMessageSummary(summaryOf("sip:alice@example.test", 2, 5)) == (
        b"Messages-Waiting: yes\r\nMessage-Account: sip:alice@example.test\r\nVoice-Message: 2/5\r\n"
    )
    assert not summaryOf(None, 0, 5, 0, 1).waiting
    assert noMessages("sip:a@b") == b"Messages-Waiting: no\r\nMessage-Account: sip:a@b\r\n"
    for bad in (
        lambda: summaryOf(None, -1),
        lambda: summaryOf(None, MAX_COUNT + 1),
        lambda: summaryOf(None, 1, 0, 1),
        lambda: summaryOf(None, 1, messageClass="email"),
        lambda: summaryOf("sip:a\r\nX: y", 1),
    ):
        with pytest.raises(MessageSummaryError):
            bad()


_count = st.integers(0, MAX_COUNT)
_value = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f"), min_size=1, max_size=20
).filter(lambda v: v.strip(" \t") == v and v.strip())


@st.composite
def summaries(draw: st.DrawFn) -> MessageSummary:
    classes = draw(st.lists(st.sampled_from(MESSAGE_CLASSES), unique=True))
    counts = []
    for name in MESSAGE_CLASSES:
        if name in classes:
            urgent = draw(st.booleans())
            counts.append(
                (
                    name,
                    MessageCounts(
                        draw(_count),
                        draw(_count),
                        draw(_count) if urgent else None,
                        draw(_count) if urgent else None,
                    ),
                )
            )
    headers = draw(
        st.lists(st.one_of(st.just(""), _value.map(lambda v: "Subject: " + v)), max_size=4)
    )
    while headers and not headers[-1]:
        headers.pop()
    return MessageSummary(
        draw(st.booleans()), draw(st.one_of(st.none(), _value)), tuple(counts), tuple(headers)
    )


@settings(max_examples=300, deadline=None)
@given(summaries())
def test_roundTrip(summary: MessageSummary) -> None:
    body = renderMessageSummary(summary)
    assert parseMessageSummary(body) == summary
    assert renderMessageSummary(parseMessageSummary(body)) == body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitraryBytesNeverCrash(data: bytes) -> None:
    try:
        summary = parseMessageSummary(b"Messages-Waiting: yes\r\n" + data)
    except MessageSummaryError:
        return
    assert parseMessageSummary(renderMessageSummary(summary)) == summary
