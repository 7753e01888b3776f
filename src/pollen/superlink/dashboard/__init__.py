"""The SuperLink's HTTP endpoint: a read-only dashboard and Prometheus ``/metrics``.

Served by uvicorn inside the SuperLink's event loop (`http_server`), on loopback
unless a token guards it (`settings`, `guard`); pages are rendered on the server
from the State (`pages`), so a browser without JavaScript reads them whole.
"""
