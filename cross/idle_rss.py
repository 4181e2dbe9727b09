#!/usr/bin/env python3
"""Idle RSS of a static build, server and client, split into file pages and anonymous memory.

    idle_rss.py BIN                     print the figures (medians of --runs runs)
    idle_rss.py BIN --max-file-kib N    also fail (exit 1) when the file pages of all four
                                        processes (server and client, tls=0 and tls=1) sum
                                        to more than N KiB

For each of tls=0 and tls=1: a server and a client on 127.0.0.1:0, a session, one 32-byte
echo through the tunnel (the benchmark harness's probe), then the memory of each process
once it has settled (no change for a second; polled with a deadline).

The file pages are the code and read-only data the idle tunnel faulted in. They are what
cross/hot-symbols.txt keeps small: when code changes and the list is not remade
(cross/hot-order.sh), the idle code spreads over more 64 KiB fault-around windows of the
binary and this figure grows by 64-200 KiB, while nothing else shows it. The binary should
be freshly built (all of it in the page cache, so every fault maps its whole window): then
the figure is the same from run to run.
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


def echo_target():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)

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
        return settled(roles)
    finally:
        for r in roles:
            r.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-file-kib", type=int)
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"idle_rss: {a.binary} is not an executable")
    target = echo_target()
    total = 0
    print("idle RSS, KiB (median of %d)   file pages   anonymous" % a.runs)
    for tls in (0, 1):
        runs = [one_run(a.binary, tls, target) for _ in range(a.runs)]
        for i, role in enumerate(("server", "client")):
            file_kib = int(statistics.median(r[i][0] for r in runs))
            anon_kib = int(statistics.median(r[i][1] for r in runs))
            spread = sorted({r[i][0] for r in runs})
            total += file_kib
            print(f"  tls={tls} {role:<6} {file_kib:>22} {anon_kib:>11}   (file pages seen: {spread})")
    print(f"  file pages, all four: {total} KiB")
    if a.max_file_kib is not None and total > a.max_file_kib:
        print(f"idle_rss: the idle tunnel faults in {total} KiB of the binary, more than the "
              f"{a.max_file_kib} KiB budget. If code that runs at idle changed, remake the "
              "hot-code list: bash cross/hot-order.sh (cross/README.md)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
