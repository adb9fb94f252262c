"""
The subscription manager: SUBSCRIBE, PUBLISH, composition and NOTIFY
(RFC 6665, RFC 3903) for every event package it is given
(L{presence.packages}); L{presence.manager.manager} says which module does
what.
"""
