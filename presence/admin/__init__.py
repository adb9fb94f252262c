"""
What operators use: the C{presence-admin} command line, the manhole console
and the metrics endpoint.
"""
