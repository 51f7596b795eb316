#!/usr/bin/env python3
"""Cold-start wall time of short commands, for scripts/bench.sh.

  startup.py --runs N --out FILE < SPEC

SPEC has one command per line: LABEL<TAB>ARGS, ARGS in shell quoting (split
with shlex, no shell runs). A lone `;` in ARGS separates steps that run one
after the other inside the same timed sample (e.g. `ip netns add x ; ip netns
exec x true ; ip netns del x`). Each command gets one warm-up run (discarded),
then N timed runs; the commands take turns (run i of every command, then run
i+1), so a load spike hits all of them alike. Time = time.perf_counter()
around subprocess.run, stdout/stderr discarded.

Writes FILE as TSV: LABEL, median ms, p90 ms, timed runs, error ("" when every
run exited 0; else the first failure, and the row's numbers are not used).
"""

import argparse
import math
import shlex
import statistics
import subprocess
import sys
import time


def steps(args: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for a in shlex.split(args):
        if a == ";":
            out.append([])
        else:
            out[-1].append(a)
    return [s for s in out if s]


def once(cmd: list[list[str]]) -> tuple[float, str]:
    """Seconds for all steps; error text ('' if every step exited 0)."""
    t0 = time.perf_counter()
    err = ""
    for s in cmd:
        try:
            p = subprocess.run(s, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            err = err or f"{s[0]}: {e}".replace("\t", " ")
            continue
        if p.returncode != 0 and not err:
            last = (p.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            err = f"{shlex.join(s)[:80]} exited {p.returncode}: {last[:160]}".replace("\t", " ")
    return time.perf_counter() - t0, err


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec = []
    for line in sys.stdin:
        label, _, args = line.rstrip("\n").partition("\t")
        if label:
            spec.append((label, steps(args)))
    times: dict[str, list[float]] = {label: [] for label, _ in spec}
    errs: dict[str, str] = {label: "" for label, _ in spec}
    for i in range(a.runs + 1):
        for label, cmd in spec:
            if errs[label]:
                continue  # a failing command is not timed further
            t, err = once(cmd)
            if err:
                errs[label] = err
            elif i > 0:  # run 0 is the warm-up
                times[label].append(t * 1000.0)
    with open(a.out, "w") as f:
        for label, _ in spec:
            ts = sorted(times[label])
            if ts and not errs[label]:
                med = statistics.median(ts)
                p90 = ts[max(0, math.ceil(0.9 * len(ts)) - 1)]  # nearest rank
                f.write(f"{label}\t{med:.3f}\t{p90:.3f}\t{len(ts)}\t\n")
            else:
                f.write(f"{label}\t\t\t{len(ts)}\t{errs[label] or 'no runs'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
