#!/usr/bin/env python3
"""Benchmark `dbward plan --live` and a no-change `dbward apply --live` against one real
PostgreSQL server holding 10, 30 and 100 databases.

One command (see the README, "The databases in the plan: `--live`"):

    python3 bench/live_bench.py                 # builds the release binary, all sizes
    python3 bench/live_bench.py --sizes 10      # one size
    python3 bench/live_bench.py --bin target/debug/dbward   # an existing binary

It writes a manifest of one self-hosted database `bench` (an admin user, two db-roles with
grants on every table of `public`, two db-users, people provisioned, `db-names "*"`), applies
its files, starts PostgreSQL (initdb and pg_ctl as the `postgres` OS user when run as root, as
the tests do) with the generated pg_hba.conf, pg_ident.conf and certificates, and creates the
admin user. For each size it adds databases until the server holds N of them besides
`postgres` (each owned by the admin user, with two tables), converges them once with
`apply --live`, then times, as wall clock of the whole process, median of `--repeat` runs:
  - plan --live               (`--detailed-exitcode` must say 0: no changes)
  - no-change apply --live    (`--auto-approve`; must report no live changes)
Each database name is one TLS connection as the admin user and one rolled-back (plan) or
committed (apply) run of setup.sql. Goal from issue 13: under 3 s at 100 databases.
"""

import argparse
import os
import pwd
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "dbward-admin"


def manifest(port: int, config_dir: Path) -> str:
    return f"""dbward version=1
relay {{
    listen "127.0.0.1:6432"
    public-name "db.bench"
    client-cert-ttl "1h"
}}
database bench {{
    postgres host="127.0.0.1" port={port} version=15
    self-hosted {{
        server-names "127.0.0.1"
        config-dir "{config_dir}"
    }}
    admin-user "{ADMIN}" default-database=postgres
    db-role reader {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT on=all-tables schema=public
    }}
    db-role writer {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant INSERT UPDATE DELETE on=all-tables schema=public
    }}
    db-user app {{
        member-of reader writer
    }}
    db-user report {{
        member-of reader
    }}
}}
role analyst {{
    provision keep
    allow {{
        databases bench
        db-names "*"
        db-roles reader
        db-users report
    }}
}}
user kim {{
    roles analyst
}}
"""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def pg_bin():
    fixed = Path("/usr/lib/postgresql/15/bin")
    if (fixed / "initdb").exists():
        return fixed
    sys.exit("no PostgreSQL 15 server binaries in /usr/lib/postgresql/15/bin: apt-get install -y postgresql-15")


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def chown_postgres(path):
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    for dirpath, _, filenames in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


def timed(cmd, cwd, check_output):
    """(wall seconds, CPU seconds user+sys of dbward) of one run; `check_output(rc, text)`
    says whether the run did what it should."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = out.stdout + out.stderr
    if not check_output(out.returncode, text):
        sys.exit(f"{' '.join(cmd)} did not do what it should ({out.returncode}):\n{text[-3000:]}")
    return elapsed, cpu


def median_run(cmd, cwd, repeat, check_output):
    runs = [timed(cmd, cwd, check_output) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


class Server:
    """One PostgreSQL 15 server configured from dbward's files, in a temp dir."""

    def __init__(self, work: Path):
        self.bin = pg_bin()
        self.root = work / "pg"
        self.data = self.root / "data"
        self.conf = self.root / "conf"
        self.sock = self.root / "sock"
        self.port = free_port()
        for d in (self.root, self.conf, self.sock):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o755)
        self.running = False

    def start(self, out: Path):
        chown_postgres(self.root)
        run(as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                         "--auth-host=reject", "--no-sync", "-E", "UTF8", "--locale=C"]), stdout=subprocess.DEVNULL)
        generated = out / "databases" / "bench"
        for f in generated.iterdir():
            if f.name != "setup.sql":
                shutil.copy(f, self.conf / f.name)
                os.chmod(self.conf / f.name, 0o600 if f.name.endswith(".key") else 0o644)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"\ninclude '{self.conf}/postgresql.conf'\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sock}'\nfsync = off\n"
            )
        chown_postgres(self.root)
        run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t",
                         "120", "start"]), stdout=subprocess.DEVNULL)
        self.running = True

    def stop(self):
        if self.running:
            run(as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                stdout=subprocess.DEVNULL, check=False)
            self.running = False

    def sql(self, sql, db="postgres"):
        run(as_postgres([str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock), "-p",
                         str(self.port), "-U", "postgres", "-d", db, "-c", sql]), stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,30,100")
    ap.add_argument("--bin", help="dbward binary (default: build target/release/dbward)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    binary = args.bin
    if not binary:
        run(["cargo", "build", "--release", "-p", "dbward"], cwd=ROOT)
        binary = ROOT / "target" / "release" / "dbward"
    binary = str(Path(binary).resolve())
    sizes = sorted(int(s) for s in args.sizes.split(","))

    rows = []
    with tempfile.TemporaryDirectory(prefix="dbward-live-bench-") as d:
        work = Path(d)
        server = Server(work)
        try:
            (work / "m.kdl").write_text(manifest(server.port, server.conf))
            run([binary, "apply", "m.kdl", "--out", "out", "--auto-approve"], cwd=work, stdout=subprocess.DEVNULL)
            server.start(work / "out")
            server.sql(f'CREATE ROLE "{ADMIN}" LOGIN CREATEROLE')
            # `db-names "*"` includes postgres: the admin user must be able to grant there too.
            server.sql(f'ALTER DATABASE postgres OWNER TO "{ADMIN}"')
            plan = [binary, "plan", "m.kdl", "--out", "out", "--live", "--detailed-exitcode"]
            apply = [binary, "apply", "m.kdl", "--out", "out", "--live", "--auto-approve"]
            made = 0
            for n in sizes:
                log(f"{n} databases")
                while made < n:
                    name = f"db{made:03d}"
                    server.sql(f'CREATE DATABASE {name} OWNER "{ADMIN}"')
                    server.sql(f'SET ROLE "{ADMIN}"; CREATE TABLE items (id int, name text); '
                               "CREATE TABLE orders (id int, item int)", db=name)
                    made += 1
                names = n + 1
                live_ok = f"Live apply: no changes in {names} database name(s)."
                first = timed(apply, work, lambda rc, text: rc == 0 and "Live apply:" in text)
                no_plan = median_run(plan, work, args.repeat,
                                     lambda rc, text: rc == 0 and f"Live: no changes in {names} database name(s)." in text)
                no_apply = median_run(apply, work, args.repeat, lambda rc, text: rc == 0 and live_ok in text)
                rows.append((n, names, first, no_plan, no_apply))
        finally:
            server.stop()

    print(f"binary: {binary}; load average before the last size: {os.getloadavg()[0]:.1f}")
    print("each cell: wall seconds / CPU seconds of dbward (user+sys); plan and apply: median of runs")
    print(f"| {'databases':>9} | {'names':>5} | {'first apply --live':>18} | {'plan --live':>15} "
          f"| {'no-change apply':>15} |")
    print(f"|{'-' * 11}|{'-' * 7}|{'-' * 20}|{'-' * 17}|{'-' * 17}|")
    for n, names, first, *cells in rows:
        text = " | ".join(f"{w:6.3f} / {c:6.3f}" for w, c in cells)
        print(f"| {n:>9} | {names:>5} | {first[0]:7.3f} / {first[1]:6.3f} | {text} |")


if __name__ == "__main__":
    main()
