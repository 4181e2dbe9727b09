#!/usr/bin/env python3
"""Idle RSS of a static build, server and client, split into file pages and anonymous memory.

    idle_rss.py BIN                     print the figures (medians of --runs runs)
    idle_rss.py BIN --max-file-kib N    also fail (exit 1) when the file pages of all four
                                        processes (server and client, tls=0 and tls=1) sum
                                        to more than N KiB
    idle_rss.py BIN --max-burst-kib N   also fail when a burst leaves any one process with
                                        more than N KiB of file pages above its idle figure

For each of tls=0 and tls=1: a server and a client on 127.0.0.1:0, a session, one 32-byte
echo through the tunnel (the benchmark harness's probe), then the memory of each process
once it has settled (no change for a second; polled with a deadline). Then a burst, as the
harness's `conc` figure makes one: BURST users held open at once through the tunnel, each
echoing 32 bytes, all closed, and the memory once it has settled again.

The file pages are the code and read-only data the idle tunnel faulted in. They are what
cross/hot-symbols.txt keeps small: when code changes and the list is not remade
(cross/hot-order.sh), the idle code spreads over more 64 KiB fault-around windows of the
binary and this figure grows by 64-200 KiB, while nothing else shows it. The file pages a
burst adds show the other way a list goes wrong: code only a burst runs, laid out in a window
the idle process does not touch, stays resident after the burst. Before each start the binary
is dropped from the page cache (as after a boot), so the figures repeat from run to run.
"""

import argparse
import contextlib
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

import smoke_util  # beside this file: the echo round trip of cross/smoke.sh

DEADLINE = 20.0  # seconds for any one wait
POLL = 0.05
BURST = 500  # users held at once in the burst


def echo_target():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(BURST + 16)  # the burst dials it all at once

    def serve(c):
        with c:
            while data := c.recv(65536):
                c.sendall(data)

    def accept():
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return s.getsockname()[1]


class Role:
    """A process whose stderr (the log) is read on a thread and kept."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.log, self.lock = [], threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.log.append(line)

    def wait_for(self, pattern):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with self.lock:
                for line in self.log:
                    if m := re.search(pattern, line):
                        return m
            if self.proc.poll() is not None:
                break
            time.sleep(POLL)
        with self.lock:
            tail = "".join(self.log[-5:])
        sys.exit(f"idle_rss: no '{pattern}' from {self.proc.args[1]}:\n{tail}")

    def memory(self):
        """(file KiB, anonymous KiB) from smaps_rollup."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[key] = int(rest.split()[0])
        return fields["Rss"] - fields["Anonymous"], fields["Anonymous"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def settled(roles):
    """The memory of every role once no figure has changed for a second."""
    deadline = time.monotonic() + DEADLINE
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = [r.memory() for r in roles]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            break
        time.sleep(0.1)
    return last


def probe(port):
    """One 32-byte echo through the tunnel (retried while the client's pool comes up)."""
    with contextlib.redirect_stdout(io.StringIO()):  # its "echo OK" line
        failed = smoke_util.roundtrip(port, DEADLINE, 32)
    if failed:
        sys.exit(f"idle_rss: no echo through the tunnel on port {port}")


def burst(port):
    """BURST users open at once through the tunnel, each echoed 32 bytes, then all closed."""
    users = []
    try:
        for _ in range(BURST):
            users.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        for i, u in enumerate(users):
            u.sendall(i.to_bytes(32, "big"))
        for i, u in enumerate(users):
            got = smoke_util.recv_at_least(u, 32)
            if len(got) < 32:
                sys.exit(f"idle_rss: user {i} of the burst closed before its echo")
            if got != i.to_bytes(32, "big"):
                sys.exit(f"idle_rss: user {i} of the burst got another user's bytes")
    except OSError as e:
        sys.exit(f"idle_rss: the burst failed after {len(users)} users: {e}")
    finally:
        for u in users:
            u.close()


def evict(path):
    """Drop the binary's pages from the page cache, so that this run reads it as a fresh start
    does. The pages a fault maps around it depend on how the file came into the cache: right
    after a linker or `cp` wrote it, a fault can map many more of them than after a read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_run(binary, tls, target):
    evict(binary)
    server = Role([binary, f"server://k@127.0.0.1:0/127.0.0.1:0?log=info&tls={tls}"])
    roles = [server]
    try:
        tun = server.wait_for(r"tunnel on 127\.0\.0\.1:(\d+)").group(1)
        pub = int(server.wait_for(r"users on 127\.0\.0\.1:(\d+)").group(1))
        client = Role([binary, f"client://k@127.0.0.1:{tun}/127.0.0.1:{target}?log=info"])
        roles.append(client)
        client.wait_for("session up")
        probe(pub)
        idle = settled(roles)
        burst(pub)
        return idle, settled(roles)
    finally:
        for r in roles:
            r.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-file-kib", type=int)
    ap.add_argument("--max-burst-kib", type=int)
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"idle_rss: {a.binary} is not an executable")
    target = echo_target()
    total, growth = 0, []
    print(f"RSS, KiB (median of {a.runs})   idle: file pages  anonymous"
          f"   after {BURST} held: file pages  anonymous")
    for tls in (0, 1):
        runs = [one_run(a.binary, tls, target) for _ in range(a.runs)]
        for i, role in enumerate(("server", "client")):
            idle_file, idle_anon, after_file, after_anon = (
                int(statistics.median(r[when][i][kind] for r in runs))
                for when, kind in ((0, 0), (0, 1), (1, 0), (1, 1)))
            spread = sorted({r[0][i][0] for r in runs})
            total += idle_file
            growth.append((f"tls={tls} {role}", after_file - idle_file))
            print(f"  tls={tls} {role:<6} {idle_file:>22} {idle_anon:>10} {after_file:>23}"
                  f" {after_anon:>10}   (idle file pages seen: {spread})")
    print(f"  idle file pages, all four: {total} KiB")
    failed = False
    if a.max_file_kib is not None and total > a.max_file_kib:
        print(f"idle_rss: the idle tunnel faults in {total} KiB of the binary, more than the "
              f"{a.max_file_kib} KiB budget. If code that runs at idle changed, remake the "
              "hot-code list: bash cross/hot-order.sh (cross/README.md)", file=sys.stderr)
        failed = True
    for who, kib in growth:
        if a.max_burst_kib is not None and kib > a.max_burst_kib:
            print(f"idle_rss: after a burst the {who} keeps {kib} KiB more of the binary than "
                  f"idle, more than the {a.max_burst_kib} KiB budget: the hot-code list puts "
                  "code a burst runs in a window the idle process does not touch. Remake it "
                  "(bash cross/hot-order.sh), or keep the last list's layout under the new "
                  "names (hot_order.py --keep; cross/README.md)", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
