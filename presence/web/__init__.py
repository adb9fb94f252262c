"""
The browser buddy list: a static page on SIP.js that logs in over SIP
WebSocket (RFC 7118), registers, publishes its status and shows its
contacts' presence, served by the server itself over HTTP.  A demo and a
test fixture (C{tests/test_webpage.py} drives it in headless Chromium), off
unless C{[web] enabled = yes}.
"""
