"""
The message-summary body (RFC 3842, C{application/simple-message-summary}):
a strict parser and a canonical renderer.

A voicemail system tells a phone whether messages wait and how many::

    Messages-Waiting: yes
    Message-Account: sip:alice@vmail.example.test
    Voice-Message: 2/8 (0/2)

that is, per message-context class (RFC 3458) new/old counts and,
optionally, urgent new/old counts in parentheses; after a blank line, the
body may carry headers of individual messages (RFC 3842 section 5.2,
C{opt-msg-headers}), which are kept line by line and given back as
published.

The body comes from the network (a voicemail system's PUBLISH) or from an
operator, and is shown on phones: the parser refuses anything the grammar
does not allow, with a reason that says which line and why, instead of
guessing. Header names are case-insensitive as in SIP; the rendering uses
the RFC's spelling, so the same summary always gives the same bytes.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple, Optional, Tuple

from presence.body import BodyError

CONTENT_TYPE = "application/simple-message-summary"

# RFC 3458 section 4.1: the message-context classes, in rendering order.
MESSAGE_CLASSES = (
    "voice-message",
    "fax-message",
    "pager-message",
    "multimedia-message",
    "text-message",
    "none",
)
_CLASS_NAMES = {name: "-".join(p.capitalize() for p in name.split("-")) for name in MESSAGE_CLASSES}

DEFAULT_MAX_SIZE = 16 * 1024

# The largest count accepted: nine digits.
MAX_COUNT = 999_999_999

_HEADER = re.compile(r"([A-Za-z0-9!%*_+`'~.-]+)[ \t]*:[ \t]*(.*)\Z")
_COUNTS = re.compile(
    r"([0-9]{1,9})[ \t]*/[ \t]*([0-9]{1,9})"
    r"(?:[ \t]*\([ \t]*([0-9]{1,9})[ \t]*/[ \t]*([0-9]{1,9})[ \t]*\))?[ \t]*\Z"
)
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class MessageSummaryError(BodyError):
    """
    A message-summary body was refused.
    """

    default = "invalid message-summary"


class MessageCounts(NamedTuple):
    """
    The counts of one message-context class; the urgent ones are L{None}
    when not given (they are given together or not at all).
    """

    new: int
    old: int
    urgentNew: Optional[int] = None
    urgentOld: Optional[int] = None


class MessageSummary(NamedTuple):
    """
    A parsed message summary.

    @ivar waiting: C{Messages-Waiting: yes}.
    @ivar account: the C{Message-Account} URI, or L{None}.
    @ivar counts: C{(class, counts)} pairs, one per class given, in
        L{MESSAGE_CLASSES} order.
    @ivar headers: the optional message-header lines after the first blank
        line, each C{""} for a blank line between messages.
    """

    waiting: bool
    account: Optional[str] = None
    counts: Tuple[Tuple[str, MessageCounts], ...] = ()
    headers: Tuple[str, ...] = ()

    def countsOf(self, messageClass: str) -> Optional[MessageCounts]:
        """
        The counts given for a class, or L{None}.
        """
        for name, counts in self.counts:
            if name == messageClass:
                return counts
        return None


def summaryOf(
    account: Optional[str],
    new: int,
    old: int = 0,
    urgentNew: Optional[int] = None,
    urgentOld: Optional[int] = None,
    messageClass: str = "voice-message",
) -> MessageSummary:
    """
    The summary an operator pushes for a mailbox: messages wait when there
    are new ones.

    @raise MessageSummaryError: for a negative or too large count, urgent
        counts not given together, or an unknown class.
    """
    counts = MessageCounts(new, old, urgentNew, urgentOld)
    if messageClass not in MESSAGE_CLASSES:
        raise MessageSummaryError("unknown message class " + messageClass)
    if (urgentNew is None) != (urgentOld is None):
        raise MessageSummaryError("urgent counts must be given together")
    for count in counts:
        if count is not None and not 0 <= count <= MAX_COUNT:
            raise MessageSummaryError("message counts must be between 0 and " + str(MAX_COUNT))
    if account is not None:
        _checkValue(account, "Message-Account")
    return MessageSummary(new > 0, account, ((messageClass, counts),))


def parseMessageSummary(body: bytes, maxSize: int = DEFAULT_MAX_SIZE) -> MessageSummary:
    """
    Parse a message-summary body strictly.

    Lines end in CRLF (a bare LF is forgiven); the first is
    C{Messages-Waiting: yes|no}; then, in any order, at most one
    C{Message-Account} and at most one summary line per message class;
    then, after a blank line, optional message headers.

    @raise MessageSummaryError: for any body the grammar does not allow.
    @raise TypeError: if C{body} is not bytes-like.
    """
    if isinstance(body, str) or not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("message-summary body must be bytes, not " + type(body).__name__)
    if len(body) > maxSize:
        raise MessageSummaryError(
            "message-summary body too large ({} > {} bytes)".format(len(body), maxSize)
        )
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise MessageSummaryError("message-summary is not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise MessageSummaryError("empty message-summary body")
    name, value = _header(lines[0], 1)
    if name != "messages-waiting":
        raise MessageSummaryError("line 1: message-summary must start with Messages-Waiting")
    status = value.lower()
    if status not in ("yes", "no"):
        raise MessageSummaryError("line 1: Messages-Waiting must be yes or no")
    account: Optional[str] = None
    found = {}
    index = 1
    while index < len(lines) and lines[index]:
        number = index + 1
        name, value = _header(lines[index], number)
        if name == "message-account":
            if account is not None:
                raise MessageSummaryError("line {}: more than one Message-Account".format(number))
            if not value:
                raise MessageSummaryError("line {}: empty Message-Account".format(number))
            account = value
        elif name in _CLASS_NAMES:
            if name in found:
                raise MessageSummaryError("line {}: {} given twice".format(number, _CLASS_NAMES[name]))
            found[name] = _counts(value, number)
        else:
            raise MessageSummaryError("line {}: unknown message-summary line".format(number))
        index += 1
    headers: List[str] = []
    for number, line in enumerate(lines[index + 1 :], index + 2):
        if line:
            _header(line, number)
        headers.append(line)
    counts = tuple((name, found[name]) for name in MESSAGE_CLASSES if name in found)
    return MessageSummary(status == "yes", account, counts, tuple(headers))


def renderMessageSummary(summary: MessageSummary) -> bytes:
    """
    Render a summary as the body of a NOTIFY; equal summaries give equal
    bytes, and L{parseMessageSummary} gives the summary back.
    """
    lines = ["Messages-Waiting: " + ("yes" if summary.waiting else "no")]
    if summary.account is not None:
        lines.append("Message-Account: " + summary.account)
    for name, counts in summary.counts:
        line = "{}: {}/{}".format(_CLASS_NAMES[name], counts.new, counts.old)
        if counts.urgentNew is not None:
            line += " ({}/{})".format(counts.urgentNew, counts.urgentOld)
        lines.append(line)
    if summary.headers:
        lines.append("")
        lines.extend(summary.headers)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def noMessages(account: Optional[str] = None) -> bytes:
    """
    The body for a mailbox nobody published: no message waiting.
    """
    return renderMessageSummary(MessageSummary(False, account))


def _header(line: str, number: int) -> Tuple[str, str]:
    _checkValue(line, "line " + str(number))
    match = _HEADER.match(line)
    if match is None:
        raise MessageSummaryError("line {}: not a header line".format(number))
    return match.group(1).lower(), match.group(2).rstrip(" \t")


def _counts(value: str, number: int) -> MessageCounts:
    match = _COUNTS.match(value)
    if match is None:
        raise MessageSummaryError(
            "line {}: counts must be new/old with optional (urgent new/urgent old)".format(number)
        )
    new, old, urgentNew, urgentOld = match.groups()
    return MessageCounts(
        int(new),
        int(old),
        None if urgentNew is None else int(urgentNew),
        None if urgentOld is None else int(urgentOld),
    )


def _checkValue(text: str, where: str) -> None:
    if _FORBIDDEN.search(text) is not None:
        raise MessageSummaryError(where + ": control character in message-summary")
