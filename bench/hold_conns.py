#!/usr/bin/env python3
"""Open N keep-alive TLS connections (optionally through an HTTP proxy) and hold them.

Each connection: [CONNECT through the proxy], TLS handshake (SNI and
certificate check for the target name), one GET, then it stays open and idle.
Prints `ready ok=N failed=M` on stdout once every attempt has finished, then
holds the connections until SIGTERM/SIGINT (or --hold seconds).

  hold_conns.py --target bench.test:443 --proxy http://user:pw@127.0.0.1:8080 \
      --cafile ca.pem --count 1000
  hold_conns.py --target bench.test:443 --connect 127.0.0.1:8443 --cafile ca.pem
"""

import argparse
import asyncio
import base64
import signal
import ssl
import sys
from urllib.parse import unquote, urlsplit


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT the client asks for")
    p.add_argument("--proxy", help="http://[user:pass@]host:port")
    p.add_argument("--connect", help="dial this ADDR:PORT directly instead (no proxy)")
    p.add_argument("--cafile", required=True, help="PEM the client trusts")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--path", default="/small")
    p.add_argument("--parallel", type=int, default=64, help="handshakes in flight")
    p.add_argument("--timeout", type=float, default=30.0, help="per connection setup")
    p.add_argument("--hold", type=float, default=600.0, help="give up holding after this")
    return p.parse_args()


def split_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def open_one(args, ctx, held: list) -> None:
    host, port = split_hostport(args.target)
    if args.proxy:
        u = urlsplit(args.proxy)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        req = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if u.username is not None:
            cred = f"{unquote(u.username)}:{unquote(u.password or '')}"
            req += "Proxy-Authorization: Basic " + base64.b64encode(cred.encode()).decode() + "\r\n"
        writer.write((req + "\r\n").encode())
        await writer.drain()
        try:
            status, _ = await read_head(reader)
        except BaseException:
            writer.transport.abort()
            raise
        if status != 200:
            writer.transport.abort()
            raise RuntimeError(f"CONNECT answered {status}")
    else:
        addr, aport = split_hostport(args.connect or args.target)
        reader, writer = await asyncio.open_connection(addr, aport)
    try:
        await writer.start_tls(ctx, server_hostname=host)
        await request_once(args, host, reader, writer)
    except BaseException:
        writer.transport.abort()  # a failed attempt must not hold a socket
        raise
    held.append((reader, writer))


async def request_once(args, host, reader, writer) -> None:
    writer.write(f"GET {args.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    status, headers = await read_head(reader)
    if status != 200:
        raise RuntimeError(f"GET {args.path} answered {status}")
    await reader.readexactly(int(headers.get("content-length", "0")))


async def main() -> int:
    args = parse_args()
    ctx = ssl.create_default_context(cafile=args.cafile)
    held: list = []
    sem = asyncio.Semaphore(args.parallel)

    async def attempt():
        try:
            async with sem:  # the timeout starts once it is this one's turn
                await asyncio.wait_for(open_one(args, ctx, held), args.timeout)
            return None
        except Exception as e:  # noqa: BLE001 - report and count every failure
            return f"{type(e).__name__}: {e}"

    results = await asyncio.gather(*(attempt() for _ in range(args.count)))
    errors = [r for r in results if r]
    if errors:
        print(f"hold_conns: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
    print(f"ready ok={len(held)} failed={len(errors)}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except TimeoutError:
        pass
    for _, w in held:
        w.transport.abort()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
