#!/usr/bin/env python3
"""Turn the raw files scripts/bench.sh left in its work dir into the Markdown report.

  report.py WORKDIR > results.md

WORKDIR/meta.tsv (key<TAB>value), WORKDIR/commands.log, for each contender
WORKDIR/res/<name>/: unavailable | auth, rss-idle, rss-held, held,
oha-{ka,new}-c{1,64}.json, big; and WORKDIR/startup.tsv (bench/startup.py's
LABEL, median ms, p90 ms, runs, error) or WORKDIR/startup.unavailable;
WORKDIR/agents.tsv (bench/agents.py's LABEL, median ms, p90 ms, runs,
requests per run, requests, error) or WORKDIR/agents.unavailable.
Anything missing is reported as n/a.
"""

import json
import os
import re
import statistics
import sys
from pathlib import Path

CONTENDERS = ["direct", "mitmproxy", "moat", "transparent"]

# startup.tsv labels, in table order: (command as shown, target ms or None)
STARTUP = {
    "unshare": ("`unshare -n true`", None),
    "netns": ("`ip netns add N`; `ip netns exec N true`; `ip netns del N`", None),
    "moat-nft": ("`moat run DIR -- true`, transparent, `--redirect nft`", 20.0),
    "moat-ebpf": ("`moat run DIR -- true`, transparent, `--redirect ebpf`", 20.0),
    "moat-env": ("`moat run --network-mode env DIR -- true`", None),
    "docker": ("`docker run --rm --network none IMAGE true`", None),
}


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def esc(s: str | None) -> str | None:
    """Safe inside a Markdown table cell."""
    return None if s is None else s.replace("|", "\\|").replace("\n", " ")


class Contender:
    def __init__(self, work: Path, name: str):
        self.name = name
        self.dir = work / "res" / name
        self.unavailable = esc(read(self.dir / "unavailable"))
        self.notes: list[str] = []

    def oha(self, mode: str, c: int, tag: str = "") -> dict | None:
        p = self.dir / f"oha-{mode}-c{c}{tag}.json"
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            err = read(self.dir / f"oha-{mode}-c{c}{tag}.err")
            if self.unavailable is None:
                self.notes.append(f"oha {mode} c={c}{tag} failed: {(err or 'no output')[-200:]}")
            return None
        errors = {k: v for k, v in (d.get("errorDistribution") or {}).items() if k != "aborted due to deadline"}
        statuses = {k: v for k, v in (d.get("statusCodeDistribution") or {}).items() if k != "200"}
        ok = (d.get("statusCodeDistribution") or {}).get("200", 0)
        if errors or statuses:
            bad = ", ".join(f"{v}× {k}" for k, v in {**statuses, **errors}.items())
            self.notes.append(f"oha {mode} c={c}: {ok} × 200, and {bad}")
            d["_flag"] = True
        if ok == 0:
            return None
        return d

    def rounds(self, mode: str, c: int) -> list[float | None]:
        """Requests/s of each round of a point (round 1, then -r2, -r3, … as far as they exist)."""
        tags = [""]
        while (self.dir / f"oha-{mode}-c{c}-r{len(tags) + 1}.err").exists():
            tags.append(f"-r{len(tags) + 1}")
        out = []
        for tag in tags:
            d = self.oha(mode, c, tag)
            out.append(None if d is None else d["summary"]["requestsPerSec"])
        return out

    def rps(self, mode: str, c: int):
        """The median over the point's rounds (one round for most points)."""
        vals = [v for v in self.rounds(mode, c) if v is not None]
        return statistics.median(vals) if vals else None

    def lat(self, mode: str, c: int, pct: str):
        d = self.oha(mode, c)
        if d is None or d["latencyPercentiles"].get(pct) is None:
            return None
        return d["latencyPercentiles"][pct] * 1000.0

    def big_runs(self) -> list[float]:
        runs = []
        for line in (read(self.dir / "big") or "").splitlines():
            try:
                runs.append(float(line.split()[1]) / 1e6)
            except (ValueError, IndexError):
                pass
        return runs

    def big(self):
        """Best of the runs, each metric on its own: (max MB/s, min TTFB ms)."""
        speeds, ttfbs = [], []
        for line in (read(self.dir / "big") or "").splitlines():
            try:
                ttfb, speed, _size, code = line.split()
                ttfb, speed = float(ttfb), float(speed)
            except ValueError:
                continue
            if code != "200":
                self.notes.append(f"bulk download answered HTTP {code}")
                continue
            speeds.append(speed / 1e6)
            ttfbs.append(ttfb * 1000.0)
        if not speeds:
            err = read(self.dir / "big.err")
            if err and self.unavailable is None:
                self.notes.append(f"bulk download failed: {err.splitlines()[-1][:200]}")
            return None
        return max(speeds), min(ttfbs)

    def mbps(self):
        b = self.big()
        return None if b is None else b[0]

    def ttfb(self):
        b = self.big()
        return None if b is None else b[1]

    def held(self) -> int | None:
        m = re.search(r"ok=(\d+) failed=(\d+)", read(self.dir / "held") or "")
        return int(m.group(1)) if m else None

    def rss_idle(self):
        v = read(self.dir / "rss-idle")
        return int(v) / 1024.0 if v else None

    def rss_held(self):
        v = read(self.dir / "rss-held")
        return int(v) / 1024.0 if v else None

    def rss_per_conn(self):
        idle, held, n = read(self.dir / "rss-idle"), read(self.dir / "rss-held"), self.held()
        if not (idle and held and n):
            return None
        return (int(held) - int(idle)) / n

    def auth(self) -> str:
        if self.unavailable is not None:
            return "n/a"
        body = read(self.dir / "auth") or ""
        if self.name == "direct":
            return "— (no proxy" + (": upstream answers 401 without it)" if "missing" in body else ")")
        if body == "Bearer bench-secret":
            return "✅ upstream saw `Authorization: Bearer bench-secret`"
        return f"❌ upstream answered: {esc(body[:80])}"


def fmt(v, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "rps":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"
    if kind == "mb":
        return f"{v:,.0f}"
    if kind in ("mib", "kib"):
        return f"{v:,.1f}"
    return str(v)


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def startup_section(work: Path, meta: dict) -> list[str]:
    out = ["## Startup\n"]
    why = read(work / "startup.unavailable")
    if why is not None:
        out.append(f"n/a ({esc(why)}).\n")
        return out
    rows: dict[str, tuple[float | None, float | None, str, str]] = {}
    for line in (read(work / "startup.tsv") or "").splitlines():
        f = line.split("\t")
        if len(f) < 4:
            continue
        f += [""] * (5 - len(f))  # read() strips the last row's empty error field
        label, med, p90, runs, err = f[:5]
        try:
            rows[label] = (float(med), float(p90), runs, "")
        except ValueError:
            rows[label] = (None, None, runs, err or "no runs")
    if not rows:
        out.append("n/a (bench/startup.py wrote nothing).\n")
        return out
    base = rows.get("unshare", (None,))[0]
    image = meta.get("docker", "").rpartition("(image ")[2].rstrip(")")
    out.append("| command | median (ms) | p90 (ms) | × `unshare -n true` (median) | target |")
    out.append("| --- | ---: | ---: | ---: | --- |")
    for label, (shown, target) in STARTUP.items():
        if label == "docker" and image:
            shown = shown.replace("IMAGE", f"{image}")
        med, p90, _runs, err = rows.get(label, (None, None, "0", "not run"))
        tcell = ""
        if target is not None:
            tcell = f"≤ {target:g} ms" + ("" if med is None else " ✅" if med <= target else " ❌")
        if med is None:
            out.append(f"| {shown} | n/a ({esc(err)}) | — | — | {tcell} |")
        else:
            out.append(f"| {shown} | {fmt(med, 'ms')} | {fmt(p90, 'ms')} | {ratio(med, base)} | {tcell} |")
    out.append("")
    out.append(
        f"Wall time of the whole command, from `subprocess.run` to its exit (`time.perf_counter`, "
        f"`bench/startup.py`): one discarded warm-up, then {meta.get('starts', '?')} timed runs of each, the "
        "commands taking turns. DIR is a workspace in the temp dir; the `moat run` rows use no grant. The "
        "target applies to the median. Reference floors when the target was set: `unshare -n true` ≈ 2 ms, "
        "`ip netns` add/exec/del ≈ 6 ms, `docker run --rm --network none` ≈ 350 ms (the Go Moat documents 1–3 s).\n"
    )
    return out


AGENTS = {
    "direct": "`claude -p \"say hello\"` directly: `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL=https://localhost:PORT`",
    "moat": "`moat claude --yes --agent-version V WS -- -p \"say hello\"` (grant `anthropic`)",
}


def agents_section(work: Path, meta: dict) -> list[str]:
    out = ["## Agents: `moat claude -p` vs Claude Code directly\n"]
    why = read(work / "agents.unavailable")
    if why is not None:
        out.append(f"n/a ({esc(why)}).\n")
        return out
    rows: dict[str, tuple] = {}
    for line in (read(work / "agents.tsv") or "").splitlines():
        f = line.split("\t")
        if len(f) < 5:
            continue
        f += [""] * (7 - len(f))  # read() strips the last row's empty error field
        label, med, p90, runs, nreq, reqs, err = f[:7]
        try:
            rows[label] = (float(med), float(p90), runs, nreq, reqs, "")
        except ValueError:
            rows[label] = (None, None, runs, nreq, reqs, err or "no runs")
    if not rows:
        out.append("n/a (bench/agents.py wrote nothing).\n")
        return out
    base = rows.get("direct", (None,))[0]
    out.append("| command | median (ms) | p90 (ms) | × direct (median) | requests per run | requests (last run) |")
    out.append("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, shown in AGENTS.items():
        med, p90, _runs, nreq, reqs, err = rows.get(label, (None, None, "0", "", "", "not run"))
        reqcell = esc(reqs.replace("; ", " · ")) or "—"
        if med is None:
            out.append(f"| {shown} | n/a ({esc(err)}) | — | — | {nreq or '—'} | {reqcell} |")
        else:
            out.append(f"| {shown} | {fmt(med, 'ms')} | {fmt(p90, 'ms')} | {ratio(med, base)} | {nreq} | {reqcell} |")
    out.append("")
    mo, di = rows.get("moat", (None,))[0], rows.get("direct", (None,))[0]
    diff = "" if mo is None or di is None else f" Through Moat: {mo - di:+,.0f} ms on the median."
    out.append(
        f"Claude Code {meta.get('claude', '?')} (the pin in scripts/agent-packages.txt, installed from the npm "
        "cache by the first, untimed, `moat claude` run), both sides against the same `moat-agent-standins` "
        "(testkit's TLS stand-in of api.anthropic.com, which answers only the real key): through Moat, "
        "`MOAT_RESOLVE` sends api.anthropic.com to it, the sandbox holds a placeholder and the proxy injects the "
        "key (the workspace's moat.yaml: strict policy, only api.anthropic.com); directly, the CLI that run "
        "installed, with the real key, the stand-in as `ANTHROPIC_BASE_URL`, its CA in `NODE_EXTRA_CA_CERTS`, a "
        "fresh `HOME` (kept across the runs, as Moat keeps the workspace's state directory) and the same "
        "telemetry/update switches Moat sets inside. Wall time of the whole command (`time.perf_counter` around "
        f"`subprocess.run`, `bench/agents.py`): one discarded warm-up of each, then {meta.get('agent_runs', '?')} "
        "timed runs of each, the two taking turns; a run counts only if it printed the stand-in's reply."
        f"{diff}\n"
    )
    out.append(
        "Not the same work: through Moat, Claude Code talks to what it takes for the real api.anthropic.com, so "
        "it also asks for its settings (`/api/claude_code/settings`) and policy limits "
        "(`/api/claude_code/policy_limits`) besides the message: 4 requests against 2 directly, where the custom "
        "`ANTHROPIC_BASE_URL` skips them (the requests column counts what the stand-in logged per run). Its "
        "`HEAD /` reachability check gets 401 directly (it carries no key) and 200 through Moat (the proxy "
        "injects the key into it too). The rest of the difference is the sandbox start (see the `moat run DIR "
        "-- true` rows above) and the proxy's TLS interception.\n"
    )
    return out


FLOORS = {
    "floor-tcp": "TCP relay: copies bytes; the client's TLS goes end to end to nginx",
    "floor-tls": "TLS relay: terminates the client's TLS, opens its own to nginx, copies the plaintext",
    "floor-hyper": "hyper relay: the TLS relay plus hyper's HTTP/1.1 server and client, adding one header",
    "floor-h1": "minimal HTTP/1.1 relay: the TLS relay plus heads parsed with httparse, adding one header",
}


def floors_section(work: Path, cs: dict) -> list[str]:
    """Keep-alive c=64 through the relays of `moat-bench-relay`, next to direct and Moat."""
    fs = {n: Contender(work, n) for n in FLOORS}
    if not any(f.dir.exists() for f in fs.values()):  # a work dir from before the floors
        return []
    d = cs["direct"]
    vd = None if d.unavailable else d.rps("ka", 64)
    direct_rounds = [] if d.unavailable else d.rounds("ka", 64)

    def per_round(c) -> str:
        """Each round's requests/s and its ratio to direct in the same round."""
        if c.unavailable or not direct_rounds:
            return "—"
        pairs = zip(c.rounds("ka", 64), direct_rounds)
        return " · ".join("—" if v is None else f"{v / 1000:.1f}k ({ratio(v, vdr)})" for v, vdr in pairs)

    out = ["## Floors: keep-alive, c=64\n"]
    out.append("| in front of nginx | requests/s (median) | ÷ direct | each round (÷ direct in that round) |")
    out.append("| --- | ---: | ---: | --- |")
    out.append(f"| nothing (direct) | {fmt(vd, 'rps')} | {ratio(vd, vd)} | {per_round(d)} |")
    for name, what in FLOORS.items():
        f = fs[name]
        v = None if f.unavailable else f.rps("ka", 64)
        shown = fmt(v, "rps") if f.unavailable is None else f"n/a ({f.unavailable})"
        out.append(f"| {what} | {shown} | {ratio(v, vd)} | {per_round(f)} |")
        cs[name] = f  # its notes join the warnings
    te = Contender(work, "transparent-ebpf")
    if te.dir.exists():
        cs["transparent-ebpf"] = te
    for c, what in (
        (cs["moat"], "moat explicit"),
        (cs["transparent"], "moat transparent (`--redirect nft`, the default)"),
        (te, "moat transparent, `--redirect ebpf`"),
    ):
        if c is te and not te.dir.exists():
            continue
        v = None if c.unavailable else c.rps("ka", 64)
        shown = fmt(v, "rps") if c.unavailable is None else "n/a"
        out.append(f"| {what} | {shown} | {ratio(v, vd)} | {per_round(c)} |")
    out.append("")
    out.append(
        "`moat-bench-relay` (testkit) runs its relays on one current-thread runtime, as Moat's proxy runs on a "
        "2-CPU machine, measured in the same rounds as the c=64 row above (every contender and floor takes "
        "its turn in each round; requests/s is the median over the rounds, and the c=64 rows of the main table "
        "use that median too, their latencies the first round). They are what a proxy doing none of "
        "Moat's HTTP work reaches here: the TCP relay pays only the extra loopback hop (two more reads and "
        "writes per request), the TLS relay adds both TLS sessions, which an intercepting proxy cannot avoid. "
        "What Moat loses beyond the TLS relay is its HTTP work: parsing and rewriting each request, forwarding "
        "it through the pooled upstream client, and relaying the response. The hyper relay is that work at its "
        "least with hyper (a server connection and one `client::conn` sender per client connection, one header "
        "added, no policy, pool or events); the minimal relay is the least any injecting proxy can do (both "
        "heads parsed with httparse, one header added, `Content-Length` bodies copied, one task per client "
        "connection: a measuring stick, not a proxy). The eBPF row is the transparent "
        "point again with `--redirect ebpf`: connections are redirected once, at connect(), where nft's NAT "
        "rewrites every packet.\n"
    )
    return out


def main() -> int:
    work = Path(sys.argv[1])
    meta = {}
    for line in (read(work / "meta.tsv") or "").splitlines():
        k, _, v = line.partition("\t")
        meta[k] = v
    cs = {n: Contender(work, n) for n in CONTENDERS}
    d, m, o, t = cs["direct"], cs["mitmproxy"], cs["moat"], cs["transparent"]
    conns = meta.get("conns", "1000")
    for c in (m, o):
        h = c.held()
        if c.unavailable is None and h is not None and str(h) != conns:
            c.notes.append(f"only {h} of {conns} idle connections could be opened")
        if c.unavailable is None and h is None and c.name != "direct":
            err = read(c.dir / "held.err")
            c.notes.append("idle connections: " + (err.splitlines()[-1][:200] if err else "holder never got ready"))

    # metric label, getter, unit kind, target text, target check on moat/direct (or absolute)
    rows = []
    for mode, mlabel in (("ka", "keep-alive"), ("new", "new connection per request")):
        for c in (1, 64):
            tgt_rps = ("≥ 0.7× direct", lambda r: r >= 0.7) if (mode, c) == ("new", 64) else None
            if (mode, c) == ("ka", 64):  # the one target also checked for transparent
                tgt_rps = ("≥ 0.5× direct", lambda r: r >= 0.5, True)
            tgt_p50 = ("≤ 2.5× direct", lambda r: r <= 2.5) if (mode, c) == ("ka", 1) else None
            rows.append((f"{mlabel}, c={c}: requests/s", lambda x, mode=mode, c=c: x.rps(mode, c), "rps", tgt_rps))
            rows.append(
                (f"{mlabel}, c={c}: p50 latency (ms)", lambda x, mode=mode, c=c: x.lat(mode, c, "p50"), "ms", tgt_p50)
            )
            rows.append(
                (f"{mlabel}, c={c}: p99 latency (ms)", lambda x, mode=mode, c=c: x.lat(mode, c, "p99"), "ms", None)
            )
    big = int(meta.get("big_mib", "1024"))
    big_label = "1 GiB" if big == 1024 else f"{big} MiB"
    rows.append(
        (f"{big_label} download: throughput (MB/s)", Contender.mbps, "mb", ("≥ 0.5× direct", lambda r: r >= 0.5))
    )
    rows.append((f"{big_label} download: time to first byte (ms)", Contender.ttfb, "ms", None))
    rows.append(("proxy RSS, idle (MiB)", Contender.rss_idle, "mib", None))
    rows.append((f"proxy RSS, {conns} idle connections (MiB)", Contender.rss_held, "mib", None))
    rows.append(("proxy RSS per idle connection (KiB)", Contender.rss_per_conn, "kib", "abs64"))

    out = []
    out.append(f"# Moat benchmark, {meta.get('date', '?')}\n")
    out.append(f"Command: `{meta.get('cmdline', './scripts/bench.sh')}`\n")
    out.append("| machine | |\n| --- | --- |")
    for k, label in (
        ("nproc", "nproc"),
        ("cpu", "CPU"),
        ("memory", "memory"),
        ("kernel", "kernel"),
        ("load", "load average"),
        ("cpuidle", "CPU idle"),
        ("nginx", "nginx"),
        ("oha", "oha"),
        ("mitmproxy", "mitmproxy"),
        ("moat", "moat"),
        ("curl", "curl"),
    ):
        out.append(f"| {label} | {meta.get(k, '?')} |")
    out.append("")
    out.append("## Contenders\n")
    out.append("| contender | how the client reaches `https://bench.test` | injection check (`GET /auth`, once) |")
    out.append("| --- | --- | --- |")
    out.append(f"| direct | straight to nginx (`--connect-to`), trusts the test CA: the limit | {d.auth()} |")
    mrow = "mitmdump, regular proxy mode, addon `bench/mitm_inject.py` sets the header"
    out.append(f"| mitmproxy | {mrow if m.unavailable is None else 'n/a (' + m.unavailable + ')'} | {m.auth()} |")
    orow = "`moat proxy --grant bench`, CONNECT with Proxy-Authorization"
    out.append(f"| moat explicit | {orow if o.unavailable is None else 'n/a (' + o.unavailable + ')'} | {o.auth()} |")
    trow = (
        "`moat run DIR --grant bench --redirect nft -- <client>`: the client runs in the sandbox without proxy "
        "settings, `bench.test` resolves through Moat's DNS, nft redirects its TCP to the run's own proxy; "
        "trusts `/tmp/.moat/ca-bundle.pem`. One sandbox start per client run"
    )
    out.append(f"| moat transparent | {trow if t.unavailable is None else 'n/a (' + t.unavailable + ')'} | {t.auth()} |")
    out.append("")

    secs = meta.get("seconds", "5")
    out.append("## Results\n")
    out.append(
        "| metric | direct | mitmproxy | moat explicit | moat transparent | moat/direct | transparent/direct"
        " | moat/mitmproxy | mitmproxy/direct | target |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")

    def cell(c: Contender, v, kind):
        if c.unavailable is not None:
            return "n/a"
        return fmt(v, kind)

    def verdict(who: str, c: Contender, v, vd, check) -> str:
        if c.unavailable is not None or v is None or not vd:
            return f"{who} n/a"
        return f"{who} " + ("✅" if check(v / vd) else "❌")

    for label, get, kind, target in rows:
        vd = None if d.unavailable else get(d)
        vm = None if m.unavailable else get(m)
        vo = None if o.unavailable else get(o)
        is_rss = kind in ("mib", "kib")
        # transparent has no proxy process of its own to measure (the proxy lives in each `moat run`)
        vt = None if t.unavailable or is_rss else get(t)
        dcell = "—" if is_rss else cell(d, vd, kind)
        tcell = ""
        if target == "abs64":
            tcell = "≤ 64 KiB: " + ("explicit n/a" if vo is None else "explicit ✅" if vo <= 64 else "explicit ❌")
        elif target:
            text, check, *both = target
            tcell = f"{text}: {verdict('explicit', o, vo, vd, check)}"
            if both:
                tcell += f", {verdict('transparent', t, vt, vd, check)}"
        out.append(
            f"| {label} | {dcell} | {cell(m, vm, kind)} | {cell(o, vo, kind)} | {'—' if is_rss else cell(t, vt, kind)}"
            f" | {'—' if is_rss else ratio(vo, vd)} | {'—' if is_rss else ratio(vt, vd)} | {ratio(vo, vm)}"
            f" | {'—' if is_rss else ratio(vm, vd)} | {tcell} |"
        )
    out.append("")
    if o.unavailable is not None:
        out.append(f"Moat explicit: n/a ({o.unavailable}).\n")
    if t.unavailable is not None:
        out.append(f"Moat transparent: n/a ({t.unavailable}).\n")
    out.append(
        f"Each oha point runs {secs} s against `GET /small` (13-byte body); requests cut off by the deadline "
        f"are not counted. The download rows are the best of {meta.get('big_runs', '3')} curl runs each "
        f"(time to first byte includes connection setup: through a proxy both TLS handshakes, and CONNECT for "
        f"the explicit ones). RSS is the proxy process's VmRSS; "
        f"per connection = (RSS with the connections held − idle RSS) / connections held. Ratios are "
        f"moat ÷ other (transparent/direct: moat transparent ÷ direct): above 1 is better for requests/s and "
        f"MB/s, below 1 is better for latency and memory. "
        f"All processes share {meta.get('nproc', '?')} CPUs, so compare ratios, not absolute numbers.\n"
    )
    out.append(
        "Moat transparent: every oha point and every download is its own `moat run`, so each includes one "
        "sandbox start (tens of ms) and a fresh proxy: the start itself happens before oha's clock starts, but "
        f"the proxy's first leaf certificate and first upstream connections fall inside the {secs} s window, and "
        "the run's exit follows it. The proxy runs inside each `moat run`, so it has no RSS rows.\n"
    )
    runs = [f"{c.name} {', '.join(f'{r:,.0f}' for r in c.big_runs())}" for c in cs.values() if c.big_runs()]
    if runs:
        out.append(f"Download runs, MB/s: {'; '.join(runs)}.\n")
    out.extend(floors_section(work, cs))
    out.extend(startup_section(work, meta))
    out.extend(agents_section(work, meta))
    notes = [f"{c.name}: {esc(n)}" for c in cs.values() for n in dict.fromkeys(c.notes)]
    if notes:
        out.append("Warnings:\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")

    cmds = read(work / "commands.log") or ""
    tok = os.environ.get("BENCH_REDACT")
    if tok:
        import base64

        cmds = cmds.replace(base64.b64encode(f"moat:{tok}".encode()).decode(), "<base64 moat:token>")
        cmds = cmds.replace(tok, "<token>")
    cmds = cmds.replace(str(work), "$WORK").replace(os.getcwd() + "/", "")
    out.append("<details><summary>Commands run ($WORK is the temp dir)</summary>\n\n```sh")
    out.append(cmds)
    out.append("```\n</details>")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
