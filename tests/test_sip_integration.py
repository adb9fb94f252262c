"""
A real C{twistd -n presence} process on loopback, spoken to by our own
client code and by real peers from Debian (sipsak, sipp) over UDP and TCP.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from presence.sip.parser import parseMessage
from tests.conftest import requireTool
from tests.serverprocess import ServerProcess
from tests.sipclient import TCPClient, UDPClient, newRequest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("server"))
    process = ServerProcess(
        workdir,
        [
            "--listen", "udp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
            "--domain", "example.test",
            "--database", "sqlite:///%s/presence.sqlite" % (workdir,),
        ],
    ).start()
    yield process
    process.stopCleanly()


@pytest.fixture
def udp(server):
    client = UDPClient(server.ports["UDP"])
    yield client
    client.close()


@pytest.fixture
def tcp(server):
    client = TCPClient(server.ports["TCP"])
    yield client
    client.close()


def test_sameport(server):
    """
    UDP and TCP listen on the same port.
    """
    assert server.ports["UDP"] == server.ports["TCP"]


def test_optionsUDP(udp):
    response = udp.request("OPTIONS", "sip:127.0.0.1")
    assert response.code == 200
    assert "OPTIONS" in response.headerValues("allow")
    assert response.hasHeader("accept")
    assert response.hasHeader("supported")
    assert response.hasHeader("allow-events")
    via = response.topVia()
    assert via.params["rport"] == str(udp.port)
    assert via.params["received"] == "127.0.0.1"


def test_optionsTCP(tcp):
    assert tcp.request("OPTIONS", "sip:127.0.0.1").code == 200
    assert tcp.request("OPTIONS", "sip:127.0.0.1").code == 200


def test_keepaliveTCP(tcp):
    """
    A CRLF CRLF ping is answered with a CRLF pong (RFC 5626 §4.4.1), and the
    connection still serves requests.
    """
    tcp.sendBytes(b"\r\n\r\n")
    assert tcp.receiveRaw() == b"\r\n"
    assert tcp.request("OPTIONS", "sip:127.0.0.1").code == 200


def test_pipelinedAndSplitTCP(tcp):
    first = newRequest("OPTIONS", "sip:127.0.0.1", tcp.port, "TCP").toBytes()
    second = newRequest("OPTIONS", "sip:127.0.0.1", tcp.port, "TCP").toBytes()
    tcp.sendBytes(first + second[:40])
    assert tcp.receive().code == 200
    tcp.sendBytes(second[40:])
    assert tcp.receive().code == 200


def test_methods(udp):
    assert udp.request("INVITE", "sip:bob@example.test").code == 405
    response = udp.request("FROBNICATE", "sip:bob@example.test")
    assert response.code == 501
    assert "OPTIONS" in response.headerValues("allow")
    assert udp.request("MESSAGE", "sip:bob@example.test", Max_Forwards="0").code == 483
    assert udp.request("OPTIONS", "tel:+15551234").code == 416


def test_retransmissionAbsorbed(udp):
    """
    A retransmitted request gets the same response again.
    """
    data = newRequest("OPTIONS", "sip:127.0.0.1", udp.port).toBytes()
    udp.sendBytes(data)
    first = udp.receive()
    udp.sendBytes(data)
    second = udp.receive()
    assert first.toBytes() == second.toBytes()


HOSTILE = [
    b"",
    b"\r\n\r\n",
    os.urandom(700),
    b"\x00" * 64,
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + b"X-Junk: 1\r\n" * 500 + b"\r\n",
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: -5\r\n\r\n",
    b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nCSeq: abc OPTIONS\r\n\r\n",
    b"SUBSCRIBE sip:bob@example.test SIP/2.0\r\nExpires: -1\r\n\r\n",
    b"OPTIONS sip:\xff\xfe@127.0.0.1 SIP/2.0\r\n\r\n",
    b"OPTIONS sip:bob@example.test\r\nX-Injected: yes SIP/2.0\r\n\r\n",
    b"SIP/2.0 200 OK\r\n\r\n",
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostileThenServed(udp, data):
    """
    Hostile datagrams without the headers needed to address an answer are
    dropped; the next valid request is still served.
    """
    udp.sendBytes(data)
    stray = udp.receiveNothing()
    if stray is not None:
        assert parseMessage(stray).code in (400, 413, 414, 505, 513)  # type: ignore[union-attr]
    assert udp.request("OPTIONS", "sip:127.0.0.1").code == 200


def _withHeaders(extra: bytes, port: int, body: bytes = b"") -> bytes:
    request = newRequest("OPTIONS", "sip:127.0.0.1", port).toBytes()
    head, _, _ = request.partition(b"Content-Length: 0\r\n\r\n")
    return head + extra + b"\r\n" + body


@pytest.mark.parametrize(
    "extra, body, code",
    [
        (b"Content-Length: -1\r\n", b"", 400),
        (b"Content-Length: abc\r\n", b"", 400),
        (b"Content-Length: 99\r\n", b"short", 400),
        (b"Expires: soon\r\nContent-Length: 0\r\n", b"", 400),
        (b"X-Junk: 1\r\n" * 500 + b"Content-Length: 0\r\n", b"", 513),
        (b"X-Nul: a\x00b\r\nContent-Length: 0\r\n", b"", 400),
        (b"X-Bad: \xc3\x28\r\nContent-Length: 0\r\n", b"", 400),
        (b"Content-Length: 61000\r\n", b"x" * 61000, 413),
    ],
    ids=["negative", "nonnumeric", "short", "expires", "headers", "nul", "utf8", "body"],
)
def test_hostileAnswered(udp, extra, body, code):
    udp.sendBytes(_withHeaders(extra, udp.port, body))
    assert udp.receive().code == code
    assert udp.request("OPTIONS", "sip:127.0.0.1").code == 200


def test_hugeContentLengthTCP(server, tcp):
    """
    A Content-Length of a billion is answered 413 and the connection closed
    at once: nothing is buffered.
    """
    data = newRequest("OPTIONS", "sip:127.0.0.1", tcp.port, "TCP").toBytes()
    tcp.sendBytes(data.replace(b"Content-Length: 0", b"Content-Length: 1000000000"))
    assert tcp.receive().code == 413
    with pytest.raises(ConnectionError):
        tcp.receiveItem()
    other = TCPClient(server.ports["TCP"])
    try:
        assert other.request("OPTIONS", "sip:127.0.0.1").code == 200
    finally:
        other.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipsak(server, transport):
    sipsak = requireTool("sipsak")
    port = server.ports[transport.upper()]
    command = [sipsak, "-s", "sip:ping@127.0.0.1:%d" % (port,), "-v"]
    if transport == "tcp":
        command += ["-E", "tcp"]
    result = subprocess.run(command, capture_output=True, timeout=30)
    output = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, output + result.stderr.decode("utf-8", "replace")
    assert "200 OK" in output


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp(server, tmp_path, transport):
    sipp = requireTool("sipp")
    port = server.ports["UDP" if transport == "u1" else "TCP"]
    result = subprocess.run(
        [
            sipp, "127.0.0.1:%d" % (port,),
            "-sf", os.path.join(HERE, "sipp", "options.xml"),
            "-t", transport, "-i", "127.0.0.1", "-p", str(_freePort()),
            "-m", "20", "-r", "100", "-timeout", "20s", "-timeout_error",
            "-nostdin", "-trace_err", "-error_file", str(tmp_path / "errors.log"),
        ],
        capture_output=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode("utf-8", "replace")[-3000:]


def _freePort() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
