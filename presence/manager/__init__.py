"""
The subscription manager: SUBSCRIBE, PUBLISH, composition and NOTIFY for the
presence event package (RFC 3856, RFC 3903, RFC 6665).
"""
