#!/usr/bin/env python3
"""Benchmark dbward-relay against direct PostgreSQL and pgbouncer, side by side.

One command (see the README, "Benchmarks"):

    python3 bench/relay_bench.py            # full run, ~20 minutes
    python3 bench/relay_bench.py --quick    # one short round, to check the harness

What it does, on a fresh machine of the project's kind:
  1. installs pgbouncer if missing, builds release binaries of `dbward` and `dbward-relay`;
  2. writes a bench manifest and runs `dbward apply` and `dbward cert issue` on it, so every
     certificate (ECDSA P-256) and every config file comes from dbward itself;
  3. starts a PostgreSQL tuned for benchmarking (fsync off, enough connections) with the
     *generated* postgresql.conf, pg_hba.conf, pg_ident.conf and certificates, and
     initializes pgbench data (`pgbench -i -s 10`);
  4. starts dbward-relay with the generated frozen config, and pgbouncer (session pooling,
     server_lifetime=0 so it is 1:1 like the relay, TLS on both legs with the same certs);
  5. runs every scenario against the three paths, interleaved in rounds with the order rotated,
     and prints medians and same-round ratios; writes JSON next to the table.

Automatic user provisioning (scenarios "G provision"): new sessions per second (pgbench -C)
through the relay as a declared database user (`relay`, bencher as bench) against the same
through the relay as a person whose user the relay provisions (`relay-keep`: kim, `provision
keep`; `relay-drop`: leo, `provision best-effort-drop`), on the same database in the same
rounds; relay CPU per session; and the provisioning calls the relay made per session, counted
by PostgreSQL (`track_functions`, pg_stat_user_functions: dbward.activate at the start,
dbward.deactivate or dbward.drop at the end). Each call is one round trip on a warm admin
connection (Parse/Bind/Execute/Sync in one write, one read to ReadyForQuery); admin
connections opened during the run are counted from pg_stat_database.

Token upstreams (scenario "H cloud sessions"): new sessions per second (pgbench -C, 4 clients)
through the relay to an mTLS upstream (`relay`) against a Cloud SQL upstream (`relay-cloudsql`:
an impersonated `sqlservice.login` token from the local fake Google, the instance verified by its
CA and CN `project:instance`) and an Azure upstream (`relay-azure`: an Entra ID token from the
local fake IMDS), in the same rounds; relay CPU per session. The token upstreams are a second
PostgreSQL with `password` authentication, where the fakes (runtime/cloud/examples) set each
token as the role's password when they issue it. Tokens are fetched before the runs, as in
steady state (refreshed in the background, never on the session path).

Peers (`--peers`, scenarios A, C and "I cancel"): path `relay-peers` is a relay whose config lists
peers (`relay { peers }`, ids 1 and 2: the same manifest plus `peers`, applied to a copy of the
output so every certificate is the same), started with `--peer-id 1`, against `relay` without
peers, in the same rounds: relay CPU per query and per session, to show peers cost nothing on
the session path. A second peers replica (id 2) takes the cancels that scenario "I cancel"
forwards: a session on replica 1 runs `select pg_sleep(10)`, and a plaintext CancelRequest (as
psql sends on Ctrl+C) goes to replica 1 itself (`local`) or to replica 2 (`forwarded`, which
forwards it to replica 1 over mutual TLS); the figure is the time from sending the
CancelRequest to the session's ErrorResponse, median and p90 over `--cancels` tries each.

Paths: `direct` is pgbench -> PostgreSQL (TLS, client certificate); `relay` is pgbench ->
dbward-relay (mTLS) -> PostgreSQL (mTLS); `pgbouncer` is pgbench -> pgbouncer (TLS, client
certificate) -> PostgreSQL (mTLS). In the `-c 1` and fixed-rate latency scenarios, `hop` is
pgbench -> socat -> PostgreSQL, TLS end to end: a process that only forwards bytes, the floor
any middle process pays in latency on this machine. `--compare BIN` adds `relay-b`, a second
relay binary in the same rounds (an A/B). The CPU figures of the middle process come from
/proc/PID/stat (utime + stime), the most stable figure on a noisy machine.

Only loopback addresses are used. Every process it starts is stopped at exit.
"""

import argparse
import asyncio
import hashlib
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["direct", "relay", "pgbouncer"]
# The provisioning scenarios compare the relay as a declared user with the relay provisioning
# the person's own user, both modes.
PROVISION_PATHS = ["relay", "relay-keep", "relay-drop"]
PROVISION_PEOPLE = {"relay-keep": "kim", "relay-drop": "leo"}
# Scenario H, session starts through the token upstreams: `relay` (mTLS upstream, the bench
# database) against `relay-cloudsql` (Cloud SQL: an impersonated login token from the fake
# Google) and `relay-azure` (Azure: an Entra ID token from the fake IMDS), both on a second
# PostgreSQL whose server certificate names the instance (CN `bench-proj:inst`, SAN 127.0.0.1).
CLOUD_PATHS = ["relay", "relay-cloudsql", "relay-azure"]
CLOUD_LOGINS = {"relay-cloudsql": ("ledger", "reader@bench-proj.iam"), "relay-azure": ("reports", "azreader")}
CLOUD_RELAY_SA = "dbward-relay@bench-proj.iam.gserviceaccount.com"
AZ_TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
AZ_CLIENT = "3b1f6c2e-5d4a-4e8b-9c7d-1a2b3c4d5e6f"
AZ_OBJECT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
# Scenarios that measure the latency one extra hop adds; they also run the `hop` path (a plain
# TCP forwarder, TLS end to end with PostgreSQL): the floor any middle process pays here.
HOP_SCENARIOS = ("A prepared c1", "A simple c1", "B latency R2000")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    versions = sorted(
        (int(p.name), p / "bin")
        for p in Path("/usr/lib/postgresql").glob("*")
        if p.name.isdigit() and (p / "bin" / "initdb").exists()
    )
    if not versions:
        sys.exit("no PostgreSQL server binaries under /usr/lib/postgresql: apt-get install -y postgresql-15")
    return versions[-1][1]


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def chown_postgres(path):
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_tree_cpu_seconds(pid):
    """CPU seconds used so far by a forking server (the postmaster, socat): its own time, the
    time of the children it has already reaped (cutime + cstime), and the time of the live ones.

    A child that exits between two samples moves from the live sum into the parent's
    cutime/cstime, so differences of this figure never go negative, and other servers on the
    machine are not counted.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == pid:
            total += int(stat[11]) + int(stat[12])
    return total / CLK_TCK


def flame_graph(perf_data):
    """Writes FILE.svg next to a perf recording, with inferno (`cargo install inferno`)."""
    if not (shutil.which("inferno-collapse-perf") and shutil.which("inferno-flamegraph")):
        log(f"perf profile in {perf_data}; `cargo install inferno` to get flame graphs too")
        return
    script = subprocess.run(["perf", "script", "-i", str(perf_data)], capture_output=True, check=True)
    folded = subprocess.run(["inferno-collapse-perf"], input=script.stdout, capture_output=True, check=True)
    svg = subprocess.run(["inferno-flamegraph", "--title", perf_data.stem], input=folded.stdout, capture_output=True, check=True)
    perf_data.with_suffix(".svg").write_bytes(svg.stdout)
    log(f"flame graph {perf_data.with_suffix('.svg')}")


def cpu_ticks():
    """(steal, total) jiffies of the whole machine, from the `cpu` line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # counted in user and nice.
    return fields[7], sum(fields[:8])


def proc_rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def postgres_cpu_seconds(data_dir):
    """CPU seconds used so far by one PostgreSQL server (its postmaster and backends)."""
    return proc_tree_cpu_seconds(int(Path(data_dir, "postmaster.pid").read_text().split()[0]))


MANIFEST = """\
// Benchmark manifest: one self-hosted PostgreSQL on loopback, one person, one database user.
dbward version=1

relay {{
    listen "127.0.0.1:{relay_port}"
    public-name "db.localhost"
    client-cert-ttl "12h"
    audit "{work}/audit.jsonl" queries=#false
}}

database bench {{
    postgres host="127.0.0.1" port={pg_port} version=15
    labels env=bench
    self-hosted {{
        server-names "127.0.0.1" "localhost"
        config-dir "{pg_conf}"
    }}
    db-role runner {{
        grant CONNECT on=database
        grant USAGE on=schema schema=public
        grant SELECT INSERT UPDATE DELETE on=all-tables schema=public
    }}
    db-user bench {{
        member-of runner
    }}
    admin-user "dbward-admin" default-database=bench
}}

role benchmarker {{
    allow {{
        databases "*"
        db-users bench
        db-names bench
    }}
}}

// Provisioned people: the relay creates or re-enables their own user for each session.
role keeper {{
    provision keep
    allow {{
        databases bench
        db-names bench
        db-roles runner
    }}
}}

role dropper {{
    provision best-effort-drop
    allow {{
        databases bench
        db-names bench
        db-roles runner
    }}
}}

user bencher {{
    roles benchmarker
}}

user kim {{
    roles keeper
}}

user leo {{
    roles dropper
}}
"""


CLOUD_MANIFEST = """
// Scenario H: token upstreams on a second PostgreSQL, with local fake Google and Entra ID.
cloud gcp-bench {{
    gcp project="bench-proj"
    relay-service-account "{relay_sa}"
}}

cloud azure-bench {{
    azure subscription="11111111-2222-3333-4444-555555555555" tenant="{tenant}"
}}

database ledger {{
    postgres host="127.0.0.1" port={port} version=15
    cloud-sql cloud=gcp-bench instance="bench-proj:us-central1:inst" ca-file="{ca}"
    db-user "reader@bench-proj.iam"
}}

database reports {{
    postgres host="127.0.0.1" port={port} version=15
    azure-postgres cloud=azure-bench server="reports-bench" ca-file="{ca}"
    db-user azreader client-id="{client}" object-id="{object}"
}}

role cloudbench {{
    allow {{
        databases ledger reports
        db-users "*"
        db-names bench
    }}
}}
"""


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="dbward-bench-"))
        os.chmod(self.work, 0o755)
        self.procs = []
        self.pg_port = free_port()
        self.relay_port = free_port()
        self.bouncer_port = free_port()
        self.pg_bin = pg_bin()
        self.out = self.work / "out"
        self.pg_root = self.work / "pg"
        self.pg_data = self.pg_root / "data"
        self.pg_conf = self.pg_root / "conf"
        self.pg_sock = self.pg_root / "run"
        self.user_dir = self.work / "user"
        self.hop_port = free_port()
        self.relay_b_port = free_port()
        self.peer_ports = {1: free_port(), 2: free_port()}
        self.peers_relay_ports = {1: free_port(), 2: free_port()}
        self.relay_peers_pid = None
        self.relay_pid = None
        self.relay_b_pid = None
        self.hop_pid = None
        self.bouncer_pid = None
        self.idle_rss_start = {}
        # Scenario H needs a second PostgreSQL and the fake clouds; only when it runs.
        self.cloud = not args.scenarios or any(w.lower() in "h cloud sessions" for w in args.scenarios)
        self.cloud_root = self.work / "cloudpg"
        self.cloud_data = self.cloud_root / "data"
        self.cloud_port = free_port()
        self.cloud_env = {}

    # ---- set-up -------------------------------------------------------------------------

    def build(self):
        if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
            log("installing pgbouncer")
            run(["apt-get", "update", "-qq"])
            run(["apt-get", "install", "-y", "-qq", "pgbouncer"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which("socat") is None:
            log("installing socat (the hop path)")
            run(["apt-get", "install", "-y", "-qq", "socat"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if self.args.no_build:
            log("using the release binaries as they are (--no-build)")
        else:
            log("building release binaries")
            run(["cargo", "build", "--release", "-p", "dbward", "-p", "dbward-relay"], cwd=ROOT)
            if self.cloud:
                run(["cargo", "build", "--release", "-p", "dbward-cloud", "--features", "fake", "--examples"], cwd=ROOT)
        self.dbward = ROOT / "target/release/dbward"
        self.relay_bin = Path(self.args.relay_bin) if self.args.relay_bin else ROOT / "target/release/dbward-relay"

    def generate(self):
        for d in (self.pg_root, self.pg_conf, self.pg_sock):
            d.mkdir(parents=True, exist_ok=True)
        manifest = self.work / "bench.kdl"
        text = MANIFEST.format(relay_port=self.relay_port, pg_port=self.pg_port, work=self.work, pg_conf=self.pg_conf)
        if self.cloud:
            text = text.replace("roles benchmarker\n", "roles benchmarker cloudbench\n")
            text += CLOUD_MANIFEST.format(
                relay_sa=CLOUD_RELAY_SA, tenant=AZ_TENANT, port=self.cloud_port,
                ca=self.cloud_root / "ca.crt", client=AZ_CLIENT, object=AZ_OBJECT,
            )
        manifest.write_text(text)
        self.manifest = manifest
        log("dbward apply")
        run([str(self.dbward), "apply", str(manifest), "--out", str(self.out), "--auto-approve"], stdout=subprocess.DEVNULL)
        run(
            [str(self.dbward), "cert", "issue", str(manifest), "--out", str(self.out), "--user", "bencher", "--dest", str(self.user_dir)],
            stdout=subprocess.DEVNULL,
        )
        for person in PROVISION_PEOPLE.values():
            run(
                [str(self.dbward), "cert", "issue", str(manifest), "--out", str(self.out), "--user", person, "--dest", str(self.work / person)],
                stdout=subprocess.DEVNULL,
            )

    def start_postgres(self):
        log(f"initdb + start PostgreSQL on 127.0.0.1:{self.pg_port}")
        chown_postgres(self.pg_root)
        run(as_postgres([str(self.pg_bin / "initdb"), "-D", str(self.pg_data), "-U", "postgres", "--auth-local=trust", "--auth-host=reject", "--no-sync", "-E", "UTF8", "--locale=C"]), stdout=subprocess.DEVNULL)
        db = self.out / "databases" / "bench"
        for name in ("pg_hba.conf", "pg_ident.conf", "server.crt", "server.key", "client-ca.crt"):
            shutil.copy(db / name, self.pg_conf / name)
        os.chmod(self.pg_conf / "server.key", 0o600)
        shutil.copy(db / "postgresql.conf", self.pg_conf / "dbward.conf")
        with open(self.pg_data / "postgresql.conf", "a") as f:
            f.write(
                f"\ninclude '{self.pg_conf}/dbward.conf'\n"
                f"listen_addresses = '127.0.0.1'\nport = {self.pg_port}\n"
                f"unix_socket_directories = '{self.pg_sock}'\n"
                "max_connections = 5300\nshared_buffers = '512MB'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\n"
                # Counts the provisioning calls (pg_stat_user_functions); costs nothing elsewhere.
                "track_functions = 'pl'\n"
            )
        chown_postgres(self.pg_root)
        run(as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data), "-l", str(self.pg_root / "log"), "-w", "-t", "120", "start"]), stdout=subprocess.DEVNULL)
        self.psql_super("CREATE DATABASE bench")
        log("pgbench -i -s 10")
        run(as_postgres([str(self.pg_bin / "pgbench"), "-i", "-s", "10", "-q", "-h", str(self.pg_sock), "-p", str(self.pg_port), "-U", "postgres", "bench"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        setup = self.work / "setup.sql"
        shutil.copy(db / "setup.sql", setup)
        os.chmod(setup, 0o644)
        run(as_postgres(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.pg_sock), "-p", str(self.pg_port), "-U", "postgres", "-d", "bench", "-f", str(setup)]), stdout=subprocess.DEVNULL)

    def cloud_certificates(self):
        """The second server's CA and certificate (ECDSA P-256): CN names the Cloud SQL
        instance (`project:instance`), the SAN its address (Azure's verify-full)."""
        root = self.cloud_root
        (root / "run").mkdir(parents=True, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run(["openssl", "req", "-x509", *ec, "-keyout", str(root / "ca.key"), "-out", str(root / "ca.crt"), "-days", "2", "-subj", "/CN=dbward bench cloud CA"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run(["openssl", "req", *ec, "-keyout", str(root / "server.key"), "-out", str(root / "server.csr"), "-subj", "/CN=bench-proj:inst"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", str(root / "server.csr"), "-CA", str(root / "ca.crt"), "-CAkey", str(root / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(root / "server.crt"), "-extfile", str(root / "ext.cnf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.chmod(root / "ca.crt", 0o644)

    def start_cloud_postgres(self):
        """The stand-in for the Cloud SQL instance and the Azure server: `password`
        authentication (md5-stored), where the fakes set each login token as the password when
        they issue it, tuned like the bench server."""
        root, data, sock = self.cloud_root, self.cloud_data, self.cloud_root / "run"
        log(f"initdb + start the token upstreams' PostgreSQL on 127.0.0.1:{self.cloud_port}")
        chown_postgres(root)
        run(as_postgres([str(self.pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=reject", "--no-sync", "-E", "UTF8", "--locale=C"]), stdout=subprocess.DEVNULL)
        os.chmod(root / "server.key", 0o600)
        with open(data / "postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.cloud_port}\n"
                f"unix_socket_directories = '{sock}'\n"
                f"ssl = on\nssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n"
                "password_encryption = md5\n"
                "max_connections = 5300\nshared_buffers = '512MB'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\n"
            )
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 password\n")
        chown_postgres(root)
        run(as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "120", "start"]), stdout=subprocess.DEVNULL)
        su = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(sock), "-p", str(self.cloud_port), "-U", "postgres"]
        run(as_postgres([*su, "-d", "postgres", "-c", "CREATE DATABASE bench"]), stdout=subprocess.DEVNULL)
        run(as_postgres([str(self.pg_bin / "pgbench"), "-i", "-s", "1", "-q", "-h", str(sock), "-p", str(self.cloud_port), "-U", "postgres", "bench"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run(as_postgres([*su, "-d", "bench", "-c",
            'CREATE ROLE "reader@bench-proj.iam" LOGIN; CREATE ROLE azreader LOGIN; '
            'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "reader@bench-proj.iam", azreader']), stdout=subprocess.DEVNULL)

    def start_fakes(self):
        """The fake Google (metadata server, IAM Credentials) and Entra ID (IMDS) as processes;
        each sets a login token as its role's password before answering with it."""
        conninfo = f"host={self.cloud_root / 'run'} port={self.cloud_port} user=postgres dbname=postgres"
        examples = ROOT / "target/release/examples"
        for name, cmd, last in (
            ("fake Google", [str(examples / "fake_google"), "--relay", CLOUD_RELAY_SA, "--db-user", "reader@bench-proj.iam", "--set-passwords", conninfo], "FAKE_GOOGLE_URL="),
            ("fake Entra ID", [str(examples / "fake_entra"), AZ_TENANT, f"{AZ_CLIENT}={AZ_OBJECT}=azreader", "--set-passwords", conninfo], "signing-key "),
        ):
            log(f"start the {name}")
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.work / f"{name.replace(' ', '-')}.log", "w"), text=True)
            self.procs.append(p)
            for line in p.stdout:
                if line.startswith(last):
                    break
                key, _, value = line.strip().partition("=")
                if key:
                    self.cloud_env[key] = value
            else:
                sys.exit(f"the {name} did not start; see {self.work}")

    def warm_cloud_tokens(self):
        """One session per token upstream, so the relay holds its tokens before the runs (as it
        does in steady state: tokens are refreshed in the background, never on the session path)."""
        for path in CLOUD_LOGINS:
            env = self.env_for(path)
            res = subprocess.run(["psql", "-X", "-A", "-t", "-c", "select current_user"], env=env, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"a session through {path} failed:\n{res.stderr}")

    def psql_super(self, sql, db="postgres"):
        run(as_postgres(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.pg_sock), "-p", str(self.pg_port), "-U", "postgres", "-d", db, "-c", sql]), stdout=subprocess.DEVNULL)

    def query_super(self, sql, db="bench"):
        """One value from a superuser query."""
        res = run(as_postgres(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.pg_sock), "-p", str(self.pg_port), "-U", "postgres", "-d", db, "-c", sql]), capture_output=True, text=True)
        return res.stdout.strip()

    def provisioning_counts(self):
        """(dbward.activate calls, dbward.deactivate + dbward.drop calls, admin sessions opened)."""
        self.query_super("SELECT pg_stat_clear_snapshot()")
        calls = dict(
            line.split("|")
            for line in self.query_super(
                "SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'dbward' "
                "AND funcname IN ('activate', 'deactivate', 'drop')"
            ).splitlines()
            if "|" in line
        )
        # The pool keeps admin connections for 60 s after their last use, so within a run the
        # live admin backends are those the relay opened.
        admin = self.query_super(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'dbward-admin'"
        )
        return (
            int(calls.get("activate", 0)),
            int(calls.get("deactivate", 0)) + int(calls.get("drop", 0)),
            int(admin or 0),
        )

    def start_relay(self):
        log(f"start dbward-relay on 127.0.0.1:{self.relay_port}")
        p = subprocess.Popen([str(self.relay_bin), "--config", str(self.out / "relay/frozen.json"), *self.args.relay_args.split()], stdout=subprocess.DEVNULL, stderr=open(self.work / "relay.log", "w"), env={**os.environ, **self.cloud_env, "RUST_LOG": "warn"})
        self.procs.append(p)
        self.relay_pid = p.pid
        self.wait_port(self.relay_port, "dbward-relay", self.work / "relay.log")

    def start_relay_b(self):
        """A second relay, the --compare binary, on its own port: an A/B in the same rounds."""
        config = json.loads((self.out / "relay/frozen.json").read_text())
        config["relay"]["listen"] = f"127.0.0.1:{self.relay_b_port}"
        config["relay"]["metrics"] = None
        if config["relay"].get("audit"):
            config["relay"]["audit"]["path"] = str(self.work / "audit-b.jsonl")
        # The relay refuses a config whose checksum does not match: recompute it the way the
        # compiler does (sha256 of the compact JSON, fields in order, with checksum "").
        config["checksum"] = ""
        compact = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()
        config["checksum"] = "sha256:" + hashlib.sha256(compact).hexdigest()
        frozen_b = self.out / "relay/frozen-b.json"
        frozen_b.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        log(f"start the --compare relay on 127.0.0.1:{self.relay_b_port}")
        p = subprocess.Popen([str(self.args.compare), "--config", str(frozen_b), *self.args.relay_args.split()], stdout=subprocess.DEVNULL, stderr=open(self.work / "relay-b.log", "w"), env={**os.environ, "RUST_LOG": "warn"})
        self.procs.append(p)
        self.relay_b_pid = p.pid
        self.wait_port(self.relay_b_port, "the --compare relay", self.work / "relay-b.log")

    def start_peers(self):
        """Two replicas with `relay { peers }`: the bench manifest plus a peers block, applied to a
        copy of the output (the certificates stay those PostgreSQL trusts), each started with
        its --peer-id and its own --listen."""
        self.out_peers = self.work / "out-peers"
        shutil.copytree(self.out, self.out_peers)
        peers = "".join(f'        peer {i} address="127.0.0.1:{port}"\n' for i, port in self.peer_ports.items())
        text = self.manifest.read_text().replace(
            "relay {\n", "relay {\n    peers {\n" + peers + "    }\n", 1
        ).replace(f"{self.work}/audit.jsonl", f"{self.work}/audit-peers.jsonl")
        manifest = self.work / "bench-peers.kdl"
        manifest.write_text(text)
        run([str(self.dbward), "apply", str(manifest), "--out", str(self.out_peers), "--auto-approve"], stdout=subprocess.DEVNULL)
        for i, port in self.peers_relay_ports.items():
            log(f"start the peers relay {i} on 127.0.0.1:{port}")
            p = subprocess.Popen(
                [str(self.relay_bin), "--config", str(self.out_peers / "relay/frozen.json"), "--peer-id", str(i),
                 "--listen", f"127.0.0.1:{port}", *self.args.relay_args.split()],
                stdout=subprocess.DEVNULL, stderr=open(self.work / f"relay-peers-{i}.log", "w"), env={**os.environ, "RUST_LOG": "warn"},
            )
            self.procs.append(p)
            if i == 1:
                self.relay_peers_pid = p.pid
            self.wait_port(port, f"the peers relay {i}", self.work / f"relay-peers-{i}.log")
            self.wait_port(self.peer_ports[i], f"the peer listener of relay {i}", self.work / f"relay-peers-{i}.log")

    async def cancel_once(self, ctx, session_port, cancel_port):
        """One session on `session_port` running pg_sleep; returns the seconds from sending a
        plaintext CancelRequest to `cancel_port` until the session's ErrorResponse."""
        reader, writer = await asyncio.open_connection("127.0.0.1", session_port)
        writer.write(struct.pack("!ii", 8, 80877103))
        await writer.drain()
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("relay refused TLS")
        await writer.start_tls(ctx, server_hostname="bench.db.localhost")
        params = b"user\0bench\0database\0bench\0\0"
        writer.write(struct.pack("!ii", 8 + len(params), 196608) + params)
        await writer.drain()

        async def message():
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            return kind, await reader.readexactly(length - 4)

        key = None
        while True:
            kind, body = await message()
            if kind == b"K":
                key = body[:8]
            if kind == b"E":
                raise RuntimeError(body.decode(errors="replace"))
            if kind == b"Z":
                break
        query = b"select pg_sleep(10)\0"
        writer.write(b"Q" + struct.pack("!i", 4 + len(query)) + query)
        await writer.drain()
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        _, cancel = await asyncio.open_connection("127.0.0.1", cancel_port)
        cancel.write(struct.pack("!ii", 16, 80877102) + key)
        await cancel.drain()
        while True:
            kind, body = await message()
            if kind == b"E":
                elapsed = time.perf_counter() - t0
                break
        cancel.close()
        writer.close()
        if b"57014" not in body:
            raise RuntimeError("not cancelled: " + body.decode(errors="replace"))
        return elapsed

    def scenario_cancel(self, path):
        env = self.env_for("relay")
        ctx = ssl.create_default_context(cafile=env["PGSSLROOTCERT"])
        ctx.load_cert_chain(env["PGSSLCERT"], env["PGSSLKEY"])
        session = self.peers_relay_ports[1]
        target = session if path == "local" else self.peers_relay_ports[2]
        times = sorted(asyncio.run(self.cancel_many(ctx, session, target)))
        return {"cancel_ms_p50": statistics.median(times) * 1e3, "cancel_ms_p90": times[int(len(times) * 0.9)] * 1e3}

    async def cancel_many(self, ctx, session, target):
        return [await self.cancel_once(ctx, session, target) for _ in range(self.args.cancels)]

    def start_hop(self):
        """socat forwarding bytes to PostgreSQL: one more process and two more wake-ups per
        round trip, and nothing else (no TLS of its own, no protocol)."""
        log(f"start the hop (socat) on 127.0.0.1:{self.hop_port}")
        p = subprocess.Popen(["socat", f"TCP-LISTEN:{self.hop_port},bind=127.0.0.1,reuseaddr,fork,backlog=128,nodelay", f"TCP:127.0.0.1:{self.pg_port},nodelay"], stdout=subprocess.DEVNULL, stderr=open(self.work / "hop.log", "w"))
        self.procs.append(p)
        self.hop_pid = p.pid
        self.wait_port(self.hop_port, "socat", self.work / "hop.log")

    def start_pgbouncer(self):
        log(f"start pgbouncer on 127.0.0.1:{self.bouncer_port}")
        d = self.work / "pgbouncer"
        d.mkdir()
        relay = self.out / "relay"
        for name in ("server.crt", "server.key", "users-ca.crt", "server-ca.crt", "upstream-client.crt", "upstream-client.key"):
            shutil.copy(relay / name, d / name)
            os.chmod(d / name, 0o600 if name.endswith(".key") else 0o644)
        (d / "userlist.txt").write_text('"bench" ""\n')
        (d / "pgbouncer.ini").write_text(
            f"""[databases]
bench = host=127.0.0.1 port={self.pg_port} dbname=bench user=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.bouncer_port}
unix_socket_dir =
auth_type = trust
auth_file = {d}/userlist.txt
pool_mode = session
server_lifetime = 0
max_client_conn = 6000
default_pool_size = 6000
max_db_connections = 0
client_tls_sslmode = verify-full
client_tls_key_file = {d}/server.key
client_tls_cert_file = {d}/server.crt
client_tls_ca_file = {d}/users-ca.crt
server_tls_sslmode = verify-full
server_tls_ca_file = {d}/server-ca.crt
server_tls_cert_file = {d}/upstream-client.crt
server_tls_key_file = {d}/upstream-client.key
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""
        )
        chown_postgres(d)
        # runuser starts pgbouncer with the postgres user's soft limit of open files (often 1024),
        # too few for the idle-session scenario (two descriptors per session): raise it to the
        # hard limit first.
        cmd = as_postgres(["sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec pgbouncer "$0"', str(d / "pgbouncer.ini")])
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self.wait_port(self.bouncer_port, "pgbouncer", d / "pgbouncer.log")
        self.bouncer_pid = int((d / "pgbouncer.pid").read_text().strip())

    def wait_port(self, port, what, logfile):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"{what} did not start listening on {port}; log:\n{Path(logfile).read_text() if Path(logfile).exists() else ''}")

    # ---- the three paths ----------------------------------------------------------------

    def env_for(self, path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGUSER="bench", PGDATABASE="bench", PGSSLMODE="verify-full", PGCONNECT_TIMEOUT="10")
        if path in PROVISION_PEOPLE:
            # The person logs in as their own, provisioned, user through the relay.
            person = PROVISION_PEOPLE[path]
            env.update(
                PGUSER=person, PGHOST="bench.db.localhost", PGHOSTADDR="127.0.0.1", PGPORT=str(self.relay_port),
                PGSSLROOTCERT=str(self.work / person / "root.crt"),
                PGSSLCERT=str(self.work / person / "postgresql.crt"),
                PGSSLKEY=str(self.work / person / "postgresql.key"),
            )
            return env
        if path in CLOUD_LOGINS:
            database, user = CLOUD_LOGINS[path]
            env.update(
                PGUSER=user, PGHOST=f"{database}.db.localhost", PGHOSTADDR="127.0.0.1", PGPORT=str(self.relay_port),
                PGSSLROOTCERT=str(self.user_dir / "root.crt"),
                PGSSLCERT=str(self.user_dir / "postgresql.crt"),
                PGSSLKEY=str(self.user_dir / "postgresql.key"),
            )
            return env
        if path in ("direct", "hop"):
            env.update(
                PGHOST="127.0.0.1", PGPORT=str(self.pg_port if path == "direct" else self.hop_port),
                PGSSLROOTCERT=str(self.out / "relay/server-ca.crt"),
                PGSSLCERT=str(self.out / "relay/upstream-client.crt"),
                PGSSLKEY=str(self.out / "relay/upstream-client.key"),
            )
        else:
            env.update(
                PGHOST="bench.db.localhost", PGHOSTADDR="127.0.0.1",
                PGPORT=str({"relay": self.relay_port, "relay-b": self.relay_b_port, "relay-peers": self.peers_relay_ports[1], "pgbouncer": self.bouncer_port}[path]),
                PGSSLROOTCERT=str(self.user_dir / "root.crt"),
                PGSSLCERT=str(self.user_dir / "postgresql.crt"),
                PGSSLKEY=str(self.user_dir / "postgresql.key"),
            )
        return env

    def middle_pid(self, path):
        if path in PROVISION_PEOPLE or path in CLOUD_LOGINS:
            return self.relay_pid
        return {"relay": self.relay_pid, "relay-b": self.relay_b_pid, "relay-peers": self.relay_peers_pid, "hop": self.hop_pid, "pgbouncer": self.bouncer_pid}.get(path)

    def middle_cpu(self, path):
        pid = self.middle_pid(path)
        if not pid:
            return 0.0
        return proc_tree_cpu_seconds(pid) if path == "hop" else proc_cpu_seconds(pid)

    def pgbench(self, path, args, workdir=None):
        """Runs pgbench on one path; returns (parsed output, middle CPU s, postgres CPU s, wall s)."""
        pid = self.middle_pid(path)
        cpu0 = self.middle_cpu(path)
        pg_data = self.cloud_data if path in CLOUD_LOGINS else self.pg_data
        pg0 = postgres_cpu_seconds(pg_data)
        perf = None
        if self.args.perf and path in ("relay", "relay-b"):
            # A CPU profile of the relay during this run, for `perf report -i FILE`.
            Path(self.args.perf).mkdir(parents=True, exist_ok=True)
            name = path + "_" + re.sub(r"[^A-Za-z0-9]+", "_", " ".join(args)).strip("_")[:60]
            perf_data = Path(self.args.perf) / f"{name}.data"
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p", str(pid), "-o", str(perf_data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        res = subprocess.run([str(self.pg_bin / "pgbench"), "-n", *args], env=self.env_for(path), capture_output=True, text=True, cwd=workdir)
        wall = time.time() - t0
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
            flame_graph(perf_data)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        if res.returncode != 0:
            sys.exit(f"pgbench on {path} failed ({' '.join(args)}):\n{res.stdout}\n{res.stderr}")
        if path == "hop":
            time.sleep(0.3)  # let socat reap the child that served this run
        cpu = self.middle_cpu(path) - cpu0
        pg_cpu = postgres_cpu_seconds(pg_data) - pg0
        out = res.stdout
        parsed = {}
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        parsed["transactions"] = int(m.group(1)) if m else 0
        m = re.search(r"tps = ([\d.]+)", out)
        parsed["tps"] = float(m.group(1)) if m else 0.0
        m = re.search(r"latency average = ([\d.]+) ms", out)
        parsed["latency_ms"] = float(m.group(1)) if m else None
        m = re.search(r"average connection time = ([\d.]+) ms", out)
        parsed["connection_ms"] = float(m.group(1)) if m else None
        return parsed, cpu, pg_cpu, wall

    # ---- scenarios ----------------------------------------------------------------------

    def scenario_saturation(self, path, mode, clients, threads):
        d = self.args.duration
        parsed, cpu, pg_cpu, wall = self.pgbench(path, ["-S", "-M", mode, "-c", str(clients), "-j", str(threads), "-T", str(d)])
        n = max(parsed["transactions"], 1)
        return {
            "tps": parsed["tps"],
            "latency_ms": parsed["latency_ms"],
            "middle_cpu_us_per_query": cpu / n * 1e6,
            "middle_cpu_cores": cpu / wall,
            "postgres_cpu_cores": pg_cpu / wall,
            # pgbench itself competes for the same two cores; a path that makes pgbench work
            # harder (e.g. TLS) shows up here.
            "pgbench_cpu_cores": self.last_client_cpu / wall,
        }

    def scenario_latency(self, path):
        d = self.args.duration
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            parsed, cpu, _, _ = self.pgbench(path, ["-R", "2000", "-c", "4", "-j", "2", "-S", "-M", "prepared", "-T", str(d), "--log", "--log-prefix", "lat"], workdir=tmp)
            lat = []
            for f in Path(tmp).glob("lat*"):
                for line in f.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3:
                        lat.append(int(parts[2]))
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
        return {"tps": parsed["tps"], "p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "samples": len(lat)}

    def scenario_connections(self, path):
        d = self.args.duration
        parsed, cpu, _, _ = self.pgbench(path, ["-S", "-C", "-c", "4", "-j", "2", "-T", str(d)])
        n = max(parsed["transactions"], 1)
        return {"connections_per_s": parsed["tps"], "connection_ms": parsed["connection_ms"], "middle_cpu_us_per_session": cpu / n * 1e6}

    def scenario_cloud_sessions(self, path):
        """New sessions per second through an mTLS upstream or a token upstream (pgbench -C),
        with the relay's and the upstream server's CPU per session."""
        d = self.args.duration
        parsed, cpu, pg_cpu, wall = self.pgbench(path, ["-S", "-C", "-c", "4", "-j", "2", "-T", str(d)])
        n = max(parsed["transactions"], 1)
        return {
            "sessions_per_s": parsed["tps"],
            "connection_ms": parsed["connection_ms"],
            "middle_cpu_us_per_session": cpu / n * 1e6,
            "postgres_cpu_us_per_session": pg_cpu / n * 1e6,
        }

    def scenario_provision(self, path, clients, threads):
        """New sessions per second as a declared user (`relay`) or a provisioned person, with
        the provisioning calls per session PostgreSQL counted."""
        before = self.provisioning_counts()
        d = self.args.duration
        parsed, cpu, pg_cpu, wall = self.pgbench(path, ["-S", "-C", "-c", str(clients), "-j", str(threads), "-T", str(d)])
        # The last sessions' retirements run just after pgbench exits, and an idle backend (the
        # warm admin connections) reports its function counts only after 10 s idle
        # (PGSTAT_IDLE_INTERVAL): read them after that.
        time.sleep(11.0)
        after = self.provisioning_counts()
        n = max(parsed["transactions"], 1)
        return {
            "sessions_per_s": parsed["tps"],
            "connection_ms": parsed["connection_ms"],
            "middle_cpu_us_per_session": cpu / n * 1e6,
            "postgres_cpu_us_per_session": pg_cpu / n * 1e6,
            # One call is one round trip on a warm admin connection.
            "round_trips_at_start": (after[0] - before[0]) / n,
            "round_trips_at_end": (after[1] - before[1]) / n,
            "admin_backends": after[2],
        }

    def scenario_bulk(self, path):
        script = self.work / "bulk.sql"
        script.write_text("select repeat('x', 40000000);\n")
        parsed, cpu, _, _ = self.pgbench(path, ["-f", str(script), "-c", "1", "-j", "1", "-t", str(self.args.bulk_count)])
        return {"latency_ms": parsed["latency_ms"], "middle_cpu_ms_per_result": cpu / self.args.bulk_count * 1e3}

    # ---- idle sessions (memory) ---------------------------------------------------------

    async def open_idle_sessions(self, path, count):
        env = self.env_for(path)
        ctx = ssl.create_default_context(cafile=env["PGSSLROOTCERT"])
        ctx.load_cert_chain(env["PGSSLCERT"], env["PGSSLKEY"])
        host = env["PGHOST"]
        port = int(env["PGPORT"])
        conns = []
        sem = asyncio.Semaphore(32)

        async def one():
            async with sem:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(struct.pack("!ii", 8, 80877103))
                await writer.drain()
                if await reader.readexactly(1) != b"S":
                    raise RuntimeError("server refused TLS")
                await writer.start_tls(ctx, server_hostname=host)
                params = b"user\0bench\0database\0bench\0\0"
                writer.write(struct.pack("!ii", 8 + len(params), 196608) + params)
                await writer.drain()
                while True:
                    kind = await reader.readexactly(1)
                    (length,) = struct.unpack("!i", await reader.readexactly(4))
                    body = await reader.readexactly(length - 4)
                    if kind == b"E":
                        raise RuntimeError(body.decode(errors="replace"))
                    if kind == b"Z":
                        break
                conns.append(writer)

        try:
            # A middle process that stops accepting (e.g. out of file descriptors) must fail the
            # run, not hang it.
            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=max(120, count / 10))
        except (asyncio.TimeoutError, OSError, RuntimeError) as e:
            for w in conns:
                w.close()
            raise RuntimeError(f"only {len(conns)} of {count} idle sessions opened on {path}: {e!r}") from None
        return conns

    def scenario_idle_memory(self, path, count):
        pid = self.middle_pid(path)
        before = proc_rss_kib(pid)

        async def go():
            conns = await self.open_idle_sessions(path, count)
            await asyncio.sleep(2)
            after = proc_rss_kib(pid)
            for w in conns:
                w.close()
            await asyncio.sleep(1)
            return after

        after = asyncio.run(go())
        # Memory freed after an earlier, smaller run stays in the process (allocator arenas) and
        # is reused, which would flatter a later run: per session is counted from the RSS the
        # process had before its first idle session.
        start = self.idle_rss_start.setdefault(path, before)
        return {"sessions": count, "rss_before_kib": before, "rss_after_kib": after, "kib_per_session": (after - start) / count}

    # ---- driver -------------------------------------------------------------------------

    def run_all(self):
        results = []  # rows: {round, scenario, path, metrics}
        scenarios = [
            ("A prepared c1", lambda p: self.scenario_saturation(p, "prepared", 1, 1)),
            ("A simple c1", lambda p: self.scenario_saturation(p, "simple", 1, 1)),
            ("A prepared c8", lambda p: self.scenario_saturation(p, "prepared", 8, 2)),
            ("A simple c8", lambda p: self.scenario_saturation(p, "simple", 8, 2)),
            ("B latency R2000", self.scenario_latency),
            ("C new connections", self.scenario_connections),
            ("E bulk 40MB", self.scenario_bulk),
            ("G provision c1", lambda p: self.scenario_provision(p, 1, 1)),
            ("G provision c4", lambda p: self.scenario_provision(p, 4, 2)),
            ("H cloud sessions", self.scenario_cloud_sessions),
        ]
        if self.args.peers:
            scenarios.append(("I cancel", self.scenario_cancel))
        if self.args.scenarios:
            scenarios = [(n, f) for n, f in scenarios if any(w.lower() in n.lower() for w in self.args.scenarios)]
        paths = PATHS + (["relay-b"] if self.args.compare else []) + (["relay-peers"] if self.args.peers else [])
        for r in range(self.args.rounds):
            log(f"round {r + 1}/{self.args.rounds}")
            for name, fn in scenarios:
                these = paths + (["hop"] if name in HOP_SCENARIOS and not self.args.no_hop else [])
                if name.startswith("G provision"):
                    these = PROVISION_PATHS
                if name.startswith("H cloud"):
                    these = CLOUD_PATHS
                if name.startswith("I cancel"):
                    these = ["local", "forwarded"]
                order = these[r % len(these):] + these[: r % len(these)]
                for path in order:
                    # CPU time the hypervisor gave to other guests during this run: on a shared
                    # VM every figure of a run with a high steal share is suspect.
                    steal0, total0 = cpu_ticks()
                    m = fn(path)
                    steal1, total1 = cpu_ticks()
                    m["steal_pct"] = 100.0 * (steal1 - steal0) / max(total1 - total0, 1)
                    log(f"  {name:20} {path:10} {m}")
                    results.append({"round": r, "scenario": name, "path": path, "metrics": m})
        for count in self.args.idle:
            for path in ["relay", "pgbouncer"] + (["relay-b"] if self.args.compare else []):
                log(f"F idle sessions: {count} on {path}")
                m = self.scenario_idle_memory(path, count)
                log(f"  {m}")
                results.append({"round": 0, "scenario": f"F idle {count}", "path": path, "metrics": m})
        return results

    def cleanup(self):
        for p in self.procs:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=10)
            except Exception:
                p.kill()
        if self.bouncer_pid:
            try:
                os.kill(self.bouncer_pid, signal.SIGTERM)
            except OSError:
                pass
        for data in (self.pg_data, self.cloud_data):
            if data.exists():
                subprocess.run(as_postgres([str(self.pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"kept {self.work}")


def same_round(by_path, a, b, combine):
    """Median over rounds of combine(a's value, b's value), from runs of the same round."""
    if a not in by_path or b not in by_path:
        return None
    b_by_round = dict(by_path[b])
    values = [combine(v, b_by_round[r]) for r, v in by_path[a] if b_by_round.get(r)]
    return statistics.median(values) if values else None


def summarize(results):
    """Medians per (scenario, path, metric), and medians of same-round ratios and differences."""
    table = {}
    for row in results:
        for metric, value in row["metrics"].items():
            if isinstance(value, (int, float)) and value is not None:
                table.setdefault((row["scenario"], metric), {}).setdefault(row["path"], []).append((row["round"], value))
    summary = []
    for (scenario, metric), by_path in table.items():
        entry = {"scenario": scenario, "metric": metric}
        for path, values in by_path.items():
            entry[path] = statistics.median(v for _, v in values)
        if metric != "steal_pct":
            for a, b in (("relay", "direct"), ("relay", "pgbouncer"), ("relay-b", "relay"), ("relay-peers", "relay"), ("forwarded", "local"), ("relay-keep", "relay"), ("relay-drop", "relay"), ("relay-cloudsql", "relay"), ("relay-azure", "relay")):
                ratio = same_round(by_path, a, b, lambda x, y: x / y)
                if ratio is not None:
                    entry[f"{a}/{b}"] = ratio
        # Added latency: the same-round difference X - direct, in microseconds; `hop` (a plain
        # forwarder) is the floor for any middle process, and relay - hop what the relay adds
        # on top of it.
        scale = {"_ms": 1000.0, "_us": 1.0}.get(metric[-3:])
        if scale and ("latency" in metric or re.fullmatch(r"p\d+_us", metric)):
            for a, b in (("relay", "direct"), ("hop", "direct"), ("relay", "hop"), ("pgbouncer", "direct")):
                diff = same_round(by_path, a, b, lambda x, y: (x - y) * scale)
                if diff is not None:
                    entry[f"{a}-{b}_us"] = diff
        summary.append(entry)
    return summary


def print_table(summary):
    order = ["direct", "hop", "relay", "relay-b", "relay-peers", "local", "forwarded", "relay-keep", "relay-drop", "relay-cloudsql", "relay-azure", "pgbouncer", "relay/direct", "relay/pgbouncer",
             "relay-b/relay", "relay-peers/relay", "forwarded/local", "relay-keep/relay", "relay-drop/relay", "relay-cloudsql/relay", "relay-azure/relay",
             "relay-direct_us", "hop-direct_us", "relay-hop_us", "pgbouncer-direct_us"]
    cols = [c for c in order if any(c in e for e in summary)]
    print(f"{'scenario':22} {'metric':26} " + " ".join(f"{c:>15}" for c in cols))
    for e in summary:
        cells = []
        for c in cols:
            v = e.get(c)
            cells.append(f"{v:>15.3f}" if isinstance(v, float) else f"{'' if v is None else v:>15}")
        print(f"{e['scenario']:22} {e['metric']:26} " + " ".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--bulk-count", type=int, default=5)
    ap.add_argument("--idle", type=int, nargs="*", default=[1000, 5000], help="idle session counts for memory")
    ap.add_argument("--quick", action="store_true", help="one round of 3 s runs, 200 idle sessions")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", default=str(ROOT / "bench-out/relay.json"))
    ap.add_argument("--scenarios", nargs="*", help="run only scenarios whose name contains one of these words (e.g. 'prepared c1' bulk)")
    ap.add_argument("--relay-bin", help="benchmark this dbward-relay binary (e.g. an older build, to compare)")
    ap.add_argument("--relay-args", default="", help="extra arguments for dbward-relay, e.g. --relay-args='--threads 1'")
    ap.add_argument("--perf", metavar="DIR", help="record a perf profile (and, with inferno installed, a flame graph) of the relay during each of its runs into DIR (needs an unstripped build)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build; use target/release as it is")
    ap.add_argument("--compare", metavar="BIN", help="also run this dbward-relay binary as path relay-b, in the same rounds (an A/B; ratio relay-b/relay)")
    ap.add_argument("--peers", action="store_true", help="also run path relay-peers (a relay with peers configured) in scenarios A and C, and the cancel-forward scenario I")
    ap.add_argument("--cancels", type=int, default=30, help="CancelRequests per path and round in scenario I")
    ap.add_argument("--no-hop", action="store_true", help="skip the hop path (socat) in the latency scenarios")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.bulk_count, args.idle = 1, 3, 2, [200]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    bench = Bench(args)
    try:
        bench.build()
        if bench.cloud:
            bench.cloud_certificates()
        bench.generate()
        bench.start_postgres()
        if bench.cloud:
            bench.start_cloud_postgres()
            bench.start_fakes()
        bench.start_relay()
        if bench.cloud:
            bench.warm_cloud_tokens()
        if args.compare:
            bench.start_relay_b()
        if args.peers:
            bench.start_peers()
        if not args.no_hop:
            bench.start_hop()
        bench.start_pgbouncer()
        results = bench.run_all()
    finally:
        bench.cleanup()
    summary = summarize(results)
    print_table(summary)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format_version": 1, "args": vars(args), "results": results, "summary": summary}, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
