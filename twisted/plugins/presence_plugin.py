"""
The twistd plugin: C{twistd presence}.
"""

from twisted.application.service import ServiceMaker

presence = ServiceMaker(
    "presence", "presence.tap", "A clustered SIP presence server (RFC 3856, 3903, 6665).", "presence"
)
