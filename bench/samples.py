"""
Typical presence messages, shared by the codec benchmark and the tests.
"""

from __future__ import annotations

SUBSCRIBE = (
    b"SUBSCRIBE sip:bob@example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: \"Bob\" <sip:bob@example.test>\r\n"
    b"From: \"Alice\" <sip:alice@example.test>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
    b"CSeq: 314159 SUBSCRIBE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"\r\n"
    b"Event: presence\r\n"
    b"Accept: application/pidf+xml, application/rlmi+xml, multipart/related\r\n"
    b"Supported: eventlist, replaces\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, SUBSCRIBE, OPTIONS\r\n"
    b"Expires: 3600\r\n"
    b"User-Agent: baresip v3.10.1 (x86_64/linux)\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

PIDF = (
    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n"
    b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" "
    b"xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" "
    b"xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"sip:bob@example.test\">\r\n"
    b"<tuple id=\"t8a7b2c\"><status><basic>open</basic></status>"
    b"<contact priority=\"0.8\">sip:bob@192.0.2.20:5060</contact></tuple>\r\n"
    b"<dm:person id=\"p1\"><rpid:activities><rpid:on-the-phone/></rpid:activities>"
    b"<dm:note>On the phone</dm:note></dm:person>\r\n"
    b"</presence>\r\n"
)

NOTIFY = (
    b"NOTIFY sip:alice@192.0.2.10:5060;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK.presence.4f2a1\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@example.test>;tag=1928301774\r\n"
    b"From: <sip:bob@example.test>;tag=ffd9a8c2\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.test\r\n"
    b"CSeq: 2 NOTIFY\r\n"
    b"Contact: <sip:192.0.2.1:5060>\r\n"
    b"Event: presence\r\n"
    b"Subscription-State: active;expires=3599\r\n"
    b"Content-Type: application/pidf+xml\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % (len(PIDF),)
) + PIDF

#: A PIDF document with one tuple and a note: C{% (entity URI, note)}; a
#: new note makes a new document, so each PUBLISH of a load brings NOTIFYs.
PIDF_NOTE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="%s">'
    '<tuple id="t1"><status><basic>open</basic></status><note>%s</note></tuple></presence>'
)
