#!/usr/bin/env python3
"""Benchmark `dbward plan` and `dbward apply` for 10, 100, 1,000 and 5,000 self-hosted databases.

One command (see the README, "Plan and apply"):

    python3 bench/plan_apply_bench.py              # builds the release binary, all sizes
    python3 bench/plan_apply_bench.py --sizes 10   # one size, to check the harness
    python3 bench/plan_apply_bench.py --bin target/debug/dbward   # an existing binary

For each size it writes a manifest of N self-hosted databases (each one gets a server
certificate and key, pg_hba.conf, pg_ident.conf, postgresql.conf, client-ca.crt and setup.sql)
into a temp dir and times, as wall clock of the whole process:
  - first plan       (empty output directory: every key generated, every certificate signed)
  - first apply      (the same, plus writing every file atomically and the state record)
  - no-change plan   (everything kept: certificates parsed, never re-signed; median of 5)
  - no-change apply  (median of 5; must print "No changes.")
Goals from issue 3: no-change plan of 1,000 databases under 0.5 s, first apply under 3 s.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifest(n: int) -> str:
    parts = [
        "dbward version=1\n",
        'relay {\n    listen "127.0.0.1:6432"\n    public-name "db.bench"\n'
        '    client-cert-ttl "12h"\n}\n',
    ]
    for i in range(n):
        name = f"db{i:04d}"
        parts.append(
            f"database {name} {{\n"
            f'    postgres host="{name}.internal" port=5432 version=15\n'
            "    labels env=bench\n"
            "    self-hosted {\n"
            f'        server-names "{name}.internal" "10.1.{i // 250}.{i % 250 + 1}"\n'
            '        config-dir "/etc/postgresql/15/main/dbward"\n'
            "    }\n"
            "    db-role reader {\n"
            "        grant CONNECT on=database\n"
            "        grant SELECT on=all-tables schema=public\n"
            "    }\n"
            "    db-user readonly {\n        member-of reader\n    }\n"
            "}\n"
        )
    parts.append(
        'role dev {\n    allow {\n        databases env=bench\n        db-users readonly\n'
        '        db-names "*"\n    }\n}\n'
        "user alice {\n    roles dev\n}\n"
    )
    return "".join(parts)


def timed(cmd, cwd, expect_stdout=None):
    """(wall seconds, CPU seconds user+sys) of one run. On a shared machine the CPU figure is
    the stable one; wall includes waiting for the CPU and the disk."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    if expect_stdout is not None and out.stdout != expect_stdout:
        sys.exit(f"{' '.join(cmd)}: expected {expect_stdout!r}, got {out.stdout[:500]!r}")
    return elapsed, cpu


def median_run(cmd, cwd, repeat, expect_stdout=None):
    runs = [timed(cmd, cwd, expect_stdout) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,1000,5000")
    ap.add_argument("--bin", help="dbward binary (default: build target/release/dbward)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    binary = args.bin
    if not binary:
        subprocess.run(["cargo", "build", "--release", "-p", "dbward"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "dbward")
    binary = os.path.abspath(binary)

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="dbward-bench-") as d:
            with open(os.path.join(d, "m.kdl"), "w") as f:
                f.write(manifest(n))
            plan = [binary, "plan", "m.kdl", "--out", "out"]
            apply = [binary, "apply", "m.kdl", "--out", "out", "--auto-approve"]
            first_plan = timed(plan, d)
            first_apply = timed(apply, d)
            files = sum(len(fs) for _, _, fs in os.walk(os.path.join(d, "out")))
            nochange_plan = median_run(plan, d, args.repeat, "No changes.\n")
            nochange_apply = median_run(apply, d, args.repeat, "No changes.\n")
            rows.append((n, files, first_plan, first_apply, nochange_plan, nochange_apply))

    print(f"binary: {binary}; load average before: {os.getloadavg()[0]:.1f}")
    print("each cell: wall seconds / CPU seconds (user+sys); no-change = median of runs")
    print(
        f"| {'databases':>9} | {'files':>5} | {'first plan':>15} | {'first apply':>15} "
        f"| {'no-change plan':>15} | {'no-change apply':>15} |"
    )
    print(f"|{'-' * 11}|{'-' * 7}|{'-' * 17}|{'-' * 17}|{'-' * 17}|{'-' * 17}|")
    for n, files, *cells in rows:
        text = " | ".join(f"{w:6.3f} / {c:6.3f}" for w, c in cells)
        print(f"| {n:>9} | {files:>5} | {text} |")


if __name__ == "__main__":
    main()
