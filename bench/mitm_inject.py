"""mitmproxy addon for the benchmark: do the same work Moat does.

- Requests for host bench.test get `Authorization: Bearer $BENCH_TOKEN`.
- Connections to bench.test go to $BENCH_UPSTREAM (host:port), keeping the
  TLS name bench.test: mitmproxy has no resolve override like MOAT_RESOLVE.
"""

import os

from mitmproxy import http
from mitmproxy.proxy import server_hooks

HOST = "bench.test"
TOKEN = os.environ.get("BENCH_TOKEN", "bench-secret")
_up_host, _, _up_port = os.environ["BENCH_UPSTREAM"].rpartition(":")
UPSTREAM = (_up_host, int(_up_port))


def server_connect(data: server_hooks.ServerConnectionHookData) -> None:
    if data.server.address and data.server.address[0] == HOST:
        data.server.sni = HOST
        data.server.address = UPSTREAM


def requestheaders(flow: http.HTTPFlow) -> None:
    if flow.request.pretty_host == HOST:
        flow.request.headers["Authorization"] = "Bearer " + TOKEN
