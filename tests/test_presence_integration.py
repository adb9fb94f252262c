"""
Presence end to end on a real C{twistd -n presence}: our own user agents and
sipp subscribe, publish and see each other's state, over UDP and TCP.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from presence.sip.message import Request
from tests.conftest import requireTool
from tests.serverprocess import ServerProcess
from tests.sipclient import TCPClient, UDPClient, answer, newRequest

HERE = os.path.dirname(os.path.abspath(__file__))
READY = "Subscription manager"

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="%s"><status><basic>%s</basic></status></tuple></presence>\n'
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("presence"))
    config = os.path.join(workdir, "presence.ini")
    with open(config, "w") as f:
        # These user agents do not authenticate: example.test is trusted
        # here (authentication is tested in test_billing_integration.py).
        f.write("[manager]\nnotify_min_interval = 0.2\n[billing]\nno_auth_domains = example.test\n")
    process = ServerProcess(
        workdir,
        [
            "--config", config,
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--domain", "example.test",
        ],
    ).start(READY)
    yield process
    process.stopCleanly()


def _client(server: Any, transport: str) -> Any:
    if transport == "UDP":
        return UDPClient(server.ports["UDP"])
    return TCPClient(server.ports["TCP"])


def _notify(client: Any) -> Request:
    message = client.receiveMessage()
    assert isinstance(message, Request) and message.method == "NOTIFY", message
    client.send(answer(message))
    return message


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_watcherSeesPublication(server, transport):
    """
    A watcher subscribes, another user agent publishes, the watcher is
    notified of the new state; un-SUBSCRIBE ends it with a final NOTIFY.
    """
    aor = "sip:carol-%s@example.test" % (transport.lower(),)
    watcher = _client(server, transport)
    publisher = _client(server, transport)
    try:
        subscribe = newRequest(
            "SUBSCRIBE", aor, watcher.port, transport, Event="presence", Expires="300",
            Accept="application/pidf+xml", fromURI="sip:dave@example.test",
        )
        watcher.send(subscribe)
        ok = watcher.receive()
        assert ok.code == 200 and ok.header("expires") == "300"
        first = _notify(watcher)
        assert first.header("subscription-state") == "active;expires=300"
        assert b"<basic>closed</basic>" in first.body

        body = (PIDF % (aor, "t1", "open")).encode()
        publisher.send(newRequest(
            "PUBLISH", aor, publisher.port, transport, body=body, Event="presence",
            Expires="120", Content_Type="application/pidf+xml", fromURI=aor,
        ))
        published = publisher.receive()
        assert published.code == 200 and published.header("sip-etag")
        second = _notify(watcher)
        assert b"<basic>open</basic>" in second.body
        assert second.cseq().number > first.cseq().number

        unsubscribe = newRequest(
            "SUBSCRIBE", aor, watcher.port, transport, Event="presence", Expires="0",
            fromURI="sip:dave@example.test",
        )
        unsubscribe.setHeader("Call-ID", subscribe.callId)
        unsubscribe.setHeader("From", subscribe.header("from"))
        unsubscribe.setHeader("To", ok.header("to"))
        unsubscribe.setHeader("CSeq", "2 SUBSCRIBE")
        watcher.send(unsubscribe)
        assert watcher.receive().code == 200
        final = _notify(watcher)
        assert final.header("subscription-state") == "terminated;reason=timeout"
    finally:
        watcher.close()
        publisher.close()


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_publishErrors(server, transport):
    client = _client(server, transport)
    aor = "sip:erin@example.test"
    try:
        bad = newRequest("PUBLISH", aor, client.port, transport, body=b"<presence", Event="presence",
                         Content_Type="application/pidf+xml", fromURI=aor)
        client.send(bad)
        assert client.receive().code == 400
        other = (PIDF % ("sip:mallory@example.test", "t", "open")).encode()
        client.send(newRequest("PUBLISH", aor, client.port, transport, body=other, Event="presence",
                               Content_Type="application/pidf+xml", fromURI=aor))
        assert client.receive().code == 400
        client.send(newRequest("PUBLISH", aor, client.port, transport, body=b"hi", Event="presence",
                               Content_Type="text/plain", fromURI=aor))
        response = client.receive()
        assert response.code == 415 and response.header("accept") == "application/pidf+xml"
        client.send(newRequest("PUBLISH", aor, client.port, transport, Event="presence",
                               SIP_If_Match="nosuchetag", fromURI=aor))
        assert client.receive().code == 412
        client.send(newRequest("SUBSCRIBE", aor, client.port, transport, Event="conference"))
        response = client.receive()
        assert response.code == 489
        assert response.headerValues("allow-events") == ["presence", "dialog", "message-summary", "presence.winfo"]
        client.send(newRequest("SUBSCRIBE", "sip:x@elsewhere.test", client.port, transport, Event="presence"))
        assert client.receive().code == 404
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sippWatchAndPublish(server, tmp_path, transport):
    """
    sipp subscribes, publishes, sees its publication and unsubscribes.
    """
    sipp = requireTool("sipp")
    port = server.ports["UDP" if transport == "u1" else "TCP"]
    result = subprocess.run(
        [
            sipp, "127.0.0.1:%d" % (port,),
            "-sf", os.path.join(HERE, "sipp", "watch_publish.xml"),
            "-s", "frank-" + transport, "-t", transport, "-i", "127.0.0.1", "-p", str(_freePort()),
            "-m", "5", "-l", "5", "-timeout", "30s", "-timeout_error",
            "-nostdin", "-trace_err", "-error_file", str(tmp_path / "errors.log"),
        ],
        capture_output=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() else ""
    assert result.returncode == 0, errors[-3000:] + result.stderr.decode("utf-8", "replace")[-2000:]


def _freePort() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
