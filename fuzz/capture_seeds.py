#!/usr/bin/env python3
"""Records real PostgreSQL wire traffic as fuzz seeds (run once; the seeds are committed).

Starts a throwaway PostgreSQL 15 cluster on loopback (as the `postgres` OS user when run as
root), puts a recording TCP proxy in front of it, and runs psql and pgbench through the proxy
with each authentication method (trust, password, md5, scram-sha-256) and a refused login.
Plain TCP (sslmode=disable) so the bytes are the ones the relay reads inside TLS.

Writes, under fuzz/seeds/:
  startup_packet/    each client's first packet (SSLRequest, StartupMessage, a CancelRequest
                     built from a captured BackendKeyData)
  frame_scanner/     each client's stream after its StartupMessage, behind 2 chunking bytes
  upstream_startup/  each server's stream up to ReadyForQuery, behind 1 chunking byte

Usage: fuzz/capture_seeds.py   (needs /usr/lib/postgresql/15/bin or $DBWARD_PG_BIN)
"""

import glob
import hashlib
import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
# The longest stream kept as a seed (the fuzz runs use -max_len=4096 for the wire targets).
MAX_STREAM = 4000


def pg_bin():
    if os.environ.get("DBWARD_PG_BIN"):
        return os.environ["DBWARD_PG_BIN"]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        sys.exit("no PostgreSQL server binaries: apt-get install postgresql-15")
    return os.path.dirname(found[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A PostgreSQL cluster in a temp dir, removed by stop()."""

    def __init__(self):
        self.bin = pg_bin()
        self.root = tempfile.mkdtemp(prefix="dbward-seeds-")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\npassword_encryption = 'md5'\n"
            )
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"), "-w", "start")

    def run(self, program, *args):
        cmd = [os.path.join(self.bin, program), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def sql(self, sql):
        self.run("psql", "-h", self.root, "-p", str(self.port), "-U", "postgres",
                 "-d", "postgres", "-q", "-c", sql)

    def hba(self, method):
        """Every TCP login uses `method`; the local socket stays trust for setup."""
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(f"local all all trust\nhost all all 127.0.0.1/32 {method}\n")
        self.run("pg_ctl", "-D", self.data, "reload")

    def stop(self):
        self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root)


class Recorder:
    """A one-connection-at-a-time TCP proxy that keeps each connection's two byte streams."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sessions = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            session = {"client": bytearray(), "server": bytearray()}
            self.sessions.append(session)
            done = threading.Event()
            threading.Thread(target=self.pipe, args=(client, server, session["client"], done),
                             daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, session["server"], done),
                             daemon=True).start()

    @staticmethod
    def pipe(src, dst, record, done):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take(self):
        sessions, self.sessions = self.sessions, []
        return sessions


def first_packet(stream):
    (length,) = struct.unpack(">I", stream[:4])
    return bytes(stream[:length]), bytes(stream[length:])


def frames(stream):
    """Whole regular messages (tag, bytes) from the start of `stream`."""
    out, i = [], 0
    while i + 5 <= len(stream):
        (length,) = struct.unpack(">I", stream[i + 1:i + 5])
        out.append((stream[i], bytes(stream[i:i + 1 + length])))
        i += 1 + length
    return out


def write(target, data):
    directory = os.path.join(SEEDS, target)
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def record(session):
    client, server = session["client"], session["server"]
    if len(client) < 8:
        return
    packet, after = first_packet(client)
    write("startup_packet", packet)
    if after:
        # pgbench -i sends megabytes of COPY data: the first few kilobytes are enough.
        after = after[:MAX_STREAM]
        write("frame_scanner", b"\x00\x01" + after)
        write("frame_scanner", b"\x5a\xc3" + after)
    until_ready = bytearray()
    for tag, frame in frames(server):
        until_ready.extend(frame)
        if tag == ord("K"):
            pid, secret = struct.unpack(">II", frame[5:13])
            write("startup_packet", struct.pack(">IIII", 16, 80877102, pid, secret))
        if tag in (ord("Z"), ord("E")):
            break
    if until_ready:
        write("upstream_startup", b"\x00" + bytes(until_ready))
        write("upstream_startup", b"\x07" + bytes(until_ready))


def main():
    cluster = Cluster()
    try:
        cluster.sql("create role app login password 'app-secret-for-seeds'")
        cluster.sql("create database orders owner app")
        recorder = Recorder(cluster.port)
        bin_ = cluster.bin
        env = dict(os.environ, PGPASSWORD="app-secret-for-seeds", PGSSLMODE="disable",
                   PGCONNECT_TIMEOUT="10")
        base = ["-h", "127.0.0.1", "-p", str(recorder.port)]

        def psql(*args, options=None, user="app", database="orders"):
            e = dict(env, PGOPTIONS=options) if options else env
            subprocess.run([os.path.join(bin_, "psql"), *base, "-U", user, "-d", database,
                            "-X", "-q", *args], env=e, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

        def pgbench(*args):
            subprocess.run([os.path.join(bin_, "pgbench"), *base, "-U", "app", *args, "orders"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        for method in ("trust", "password", "md5", "scram-sha-256"):
            if method == "scram-sha-256":
                cluster.sql("set password_encryption = 'scram-sha-256'; "
                            "alter role app password 'app-secret-for-seeds'")
            cluster.hba(method)
            psql("-c", "select 1", "-c", "select $$a'b$$, now()",
                 options=r"-c dbward.database=orders -c application_name=seed\ run")
            psql("-c", "select 1; select 2")
            # A refused login: the ErrorResponse a client must get as is.
            psql("-c", "select 1", database="nosuchdb")
        cluster.hba("scram-sha-256")
        pgbench("-i", "-s", "1", "-q")
        for mode in ("simple", "extended", "prepared"):
            pgbench("-M", mode, "-t", "3", "-c", "1")
        # The relay's first packet inside TLS is a StartupMessage; the one before is this.
        write("startup_packet", struct.pack(">II", 8, 80877103))
        write("startup_packet", struct.pack(">II", 8, 80877104))
        time.sleep(0.5)  # The proxy threads finish copying the last bytes.
        for session in recorder.take():
            record(session)
    finally:
        cluster.stop()
    for target in sorted(os.listdir(SEEDS)):
        print(f"{target}: {len(os.listdir(os.path.join(SEEDS, target)))} seeds")


if __name__ == "__main__":
    main()
