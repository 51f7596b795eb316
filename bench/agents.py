#!/usr/bin/env python3
"""Wall time of `moat claude -p` next to the same Claude Code run directly, for scripts/bench.sh.

  agents.py --moat MOAT --standins BIN --version V --runs N --work DIR --out FILE
            [--npm-cache DIR]

Starts `moat-agent-standins` (testkit: a TLS stand-in of api.anthropic.com
that answers only one key, logging every request to DIR/requests.jsonl), then
in DIR: a private MOAT_HOME with the grant `anthropic` holding that key, a
workspace whose moat.yaml allows only api.anthropic.com (strict policy), and
a fresh HOME for the direct runs. Two commands, both against the stand-in:

  moat     `moat claude --yes --agent-version V WS -- -p "say hello"`, with
           MOAT_RESOLVE sending api.anthropic.com to the stand-in and
           MOAT_UPSTREAM_CA trusting its CA; the sandbox holds a placeholder,
           the proxy injects the key.
  direct   the CLI that run installed ($MOAT_HOME/agents/claude/V/node_modules/
           .bin/claude) with ANTHROPIC_API_KEY=<the key>,
           ANTHROPIC_BASE_URL=https://localhost:PORT (the stand-in),
           NODE_EXTRA_CA_CERTS=<its CA>, HOME=<the fresh dir>, and the same
           telemetry/update switches Moat sets inside, so neither side phones
           home.

The first `moat claude` run installs the CLI from the npm cache (untimed);
then one untimed warm-up of each, then N timed runs of each, taking turns
(moat, direct, moat, direct, …). A run counts when it exits 0 and prints the
stand-in's reply; time = time.perf_counter() around subprocess.run. The
requests each run made are the lines it added to the stand-in's log.

Writes FILE as TSV: LABEL, median ms, p90 ms, timed runs, requests per run
(median), the requests of the last timed run ("METHOD PATH STATUS; …"), error
("" when every run replied; else the first failure, and the row's numbers are
not used). When the measurement cannot start, FILE gets one line
`unavailable<TAB>REASON` instead.
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEY = "sk-ant-api03-MoatBenchRealKeyForTheStandIn0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
REPLY = "Moat bench stand-in says hello"
PROMPT = "say hello"
HOST = "api.anthropic.com"
# What Moat sets for Claude Code inside the sandbox (userspace/src/agents): the
# direct run gets the same, so neither side spends time on telemetry or updates.
QUIET = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


class Unavailable(Exception):
    pass


def last_line(b: bytes) -> str:
    lines = [l for l in b.decode(errors="replace").splitlines() if l.strip()]
    err = [l for l in lines if any(w in l.lower() for w in ("error", "fail", "cannot", "invalid"))]
    return ((err or lines or [""])[0]).strip()[:200].replace("\t", " ")


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(a.work).resolve()
        self.log = self.work / "requests.jsonl"
        self.home = self.work / "moat-home"
        self.ws = self.work / "ws"
        self.direct_home = self.work / "direct-home"
        self.user_home = self.work / "home"
        self.proc = None

    def start_standins(self):
        for d in (self.home, self.ws, self.direct_home, self.user_home):
            d.mkdir(parents=True, exist_ok=True)
        self.ca = self.work / "standins-ca.pem"
        err = open(self.work / "standins.err", "wb")
        cmd = [self.a.standins, "--ca-out", str(self.ca), "--key-anthropic", KEY,
               "--key-openai", "sk-proj-unused", "--key-gemini", "AIzaUnused", "--reply", REPLY,
               "--log", str(self.log)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        line = self.proc.stdout.readline().decode().strip()  # MOAT_RESOLVE=… once it listens
        if not line.startswith("MOAT_RESOLVE="):
            self.proc.wait(timeout=10)
            raise Unavailable(f"moat-agent-standins did not start: "
                              f"{last_line((self.work / 'standins.err').read_bytes()) or 'no MOAT_RESOLVE line'}")
        self.resolve = line.partition("=")[2]
        hostport = next((r.split("=", 1)[1] for r in self.resolve.split(",") if r.startswith(f"{HOST}:443=")), "")
        if not hostport:
            raise Unavailable(f"moat-agent-standins: no {HOST} in {self.resolve}")
        self.port = hostport.rpartition(":")[2]  # its certificates also name localhost

    def moat_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOAT_", "ANTHROPIC_", "CLAUDE_"))}
        env.update({
            "HOME": str(self.user_home),
            "MOAT_HOME": str(self.home),
            "MOAT_KEY_BACKEND": "file",
            "MOAT_RESOLVE": self.resolve,
            "MOAT_UPSTREAM_CA": str(self.ca),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.work}/no-bus",  # never a real keychain
            "npm_config_cache": self.a.npm_cache,
            "npm_config_offline": "true",
            "npm_config_update_notifier": "false",
        })
        return env

    def setup_moat(self):
        (self.ws / "moat.yaml").write_text(f"network:\n  policy: strict\n  rules:\n    - {HOST}\n")
        p = subprocess.run([self.a.moat, "grant", "anthropic", "--token-stdin", "--no-validate"],
                           input=KEY.encode(), env=self.moat_env(), capture_output=True, timeout=60)
        if p.returncode != 0:
            raise Unavailable(f"moat grant anthropic exited {p.returncode}: {last_line(p.stderr + p.stdout)}")
        self.moat_cmd = [self.a.moat, "claude", "--yes", "--agent-version", self.a.version, str(self.ws),
                         "--", "-p", PROMPT]
        # The first run installs the CLI (npm, from the cache): untimed, and it must work.
        _, err, _ = self.once(self.moat_cmd, self.moat_env(), timeout=600)
        if err:
            raise Unavailable(f"first moat claude (installs the CLI): {err}")
        self.claude = self.home / "agents" / "claude" / self.a.version / "node_modules" / ".bin" / "claude"
        if not os.access(self.claude, os.X_OK):
            raise Unavailable(f"{self.claude} missing after the first moat claude run")
        self.direct_cmd = [str(self.claude), "-p", PROMPT]
        self.direct_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.direct_home),
            "ANTHROPIC_API_KEY": KEY,
            "ANTHROPIC_BASE_URL": f"https://localhost:{self.port}",
            "NODE_EXTRA_CA_CERTS": str(self.ca),
            **QUIET,
        }
        for k in ("LANG", "TERM", "TZ"):
            if k in os.environ:
                self.direct_env[k] = os.environ[k]

    def log_lines(self) -> int:
        try:
            with open(self.log, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def requests_since(self, n: int) -> list[str]:
        out = []
        try:
            with open(self.log, "rb") as f:
                for i, line in enumerate(f):
                    if i < n:
                        continue
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    out.append(f"{r.get('method')} {r.get('path')} {r.get('status')}")
        except OSError:
            pass
        return out

    def once(self, cmd, env, timeout=120) -> tuple[float, str, list[str]]:
        """Seconds, error text ('' if it exited 0 with the reply), the requests it made."""
        n = self.log_lines()
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return time.perf_counter() - t0, f"{Path(cmd[0]).name}: {e}".replace("\t", " ")[:200], []
        t = time.perf_counter() - t0
        reqs = self.requests_since(n)
        if p.returncode != 0:
            return t, f"exited {p.returncode}: {last_line(p.stderr + p.stdout)}", reqs
        if REPLY not in p.stdout.decode(errors="replace"):
            return t, f"exited 0 without the stand-in's reply: {last_line(p.stdout + p.stderr)}", reqs
        return t, "", reqs

    def run(self):
        sides = [("moat", self.moat_cmd, self.moat_env()), ("direct", self.direct_cmd, self.direct_env)]
        times = {s: [] for s, _, _ in sides}
        nreqs = {s: [] for s, _, _ in sides}
        last = {s: [] for s, _, _ in sides}
        errs = {s: "" for s, _, _ in sides}
        for i in range(self.a.runs + 1):  # run 0 is the warm-up
            for side, cmd, env in sides:
                if errs[side]:
                    continue  # a failing command is not timed further
                t, err, reqs = self.once(cmd, env)
                if err:
                    errs[side] = ("warm-up: " if i == 0 else "") + err
                elif i > 0:
                    times[side].append(t * 1000.0)
                    nreqs[side].append(len(reqs))
                    last[side] = reqs
            print(f"bench: agents: round {i}/{self.a.runs} done" if i else "bench: agents: warm-up done",
                  file=sys.stderr)
        rows = []
        for side, _, _ in sides:
            ts = sorted(times[side])
            if ts and not errs[side]:
                med = statistics.median(ts)
                p90 = ts[max(0, math.ceil(0.9 * len(ts)) - 1)]  # nearest rank
                rows.append(f"{side}\t{med:.1f}\t{p90:.1f}\t{len(ts)}\t{statistics.median(nreqs[side]):g}"
                            f"\t{'; '.join(last[side])}\t")
            else:
                rows.append(f"{side}\t\t\t{len(ts)}\t\t{'; '.join(last[side])}\t{errs[side] or 'no runs'}")
        return rows

    def commands(self) -> list[str]:
        """The timed command lines with the variables this script sets."""
        out = []
        if hasattr(self, "moat_cmd"):
            keep = ("MOAT_", "npm_config_")
            env = [f"{k}={v}" for k, v in self.moat_env().items() if k.startswith(keep) or k == "HOME"]
            out.append(shlex.join(["env", *env, *self.moat_cmd]))
        if hasattr(self, "direct_cmd"):
            env = [f"{k}={v}" for k, v in self.direct_env.items() if k != "PATH"]
            out.append('env -i PATH="$PATH" ' + shlex.join([*env, *self.direct_cmd]))
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moat", required=True)
    ap.add_argument("--standins", required=True)
    ap.add_argument("--version", required=True, help="the pinned @anthropic-ai/claude-code version")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--npm-cache", default="/opt/moat-npm-cache")
    a = ap.parse_args()
    b = Bench(a)
    try:
        b.start_standins()
        b.setup_moat()
        rows = b.run()
    except Unavailable as e:
        rows = [f"unavailable\t{str(e).replace(chr(9), ' ')}"]
    except (OSError, subprocess.SubprocessError) as e:
        rows = [f"unavailable\t{type(e).__name__}: {str(e).replace(chr(9), ' ')[:200]}"]
    finally:
        b.stop()
    with open(a.out, "w") as f:
        f.write("".join(r + "\n" for r in rows))
    with open(Path(a.work) / "commands.txt", "w") as f:  # for the report, the key left out
        f.write("".join(c.replace(KEY, "<key>") + "\n" for c in b.commands()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
