#!/usr/bin/env python3
"""Helpers for cross/smoke.sh: free ports, an echo target, waits and an echo round trip.

Every wait here is a poll with a deadline; nothing sleeps as synchronisation.

  smoke_util.py freeport                      print a TCP port that is free on 127.0.0.1
  smoke_util.py echo-server PORTFILE          TCP+UDP echo on 127.0.0.1:0, port written to PORTFILE
  smoke_util.py wait-file PATH TIMEOUT        wait until PATH exists and is non-empty
  smoke_util.py wait-listen PORT TIMEOUT [PID] wait until something LISTENs on TCP PORT
                                              (read from /proc/net/tcp*, so it never connects);
                                              give up at once if process PID has exited
  smoke_util.py roundtrip PORT TIMEOUT NBYTES send NBYTES random bytes to 127.0.0.1:PORT over
                                              TCP and expect the same bytes back; retried
                                              until TIMEOUT (the client may still be joining)
  smoke_util.py udp-roundtrip PORT TIMEOUT    the same with a few UDP datagrams
"""

import os
import socket
import sys
import threading
import time

POLL = 0.05  # seconds between polls: short, so waits end soon after the event


def freeport():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def echo_server(portfile):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("127.0.0.1", port))  # same number as TCP, like a real dual-stack service
    except OSError:
        udp = None

    def serve_udp():
        while True:
            data, peer = udp.recvfrom(65535)
            udp.sendto(data, peer)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    if udp is not None:
        threading.Thread(target=serve_udp, daemon=True).start()
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, portfile)  # atomic: readers never see a half-written number
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def wait_file(path, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return 0
        time.sleep(POLL)
    print(f"timed out after {timeout}s waiting for {path}", file=sys.stderr)
    return 1


def listening(port):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def alive(pid):
    if pid is None:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def wait_listen(port, timeout, pid=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return 0
        if not alive(pid):
            print(f"process {pid} exited before listening on port {port}", file=sys.stderr)
            return 1
        time.sleep(POLL)
    print(f"timed out after {timeout}s waiting for a listener on port {port}", file=sys.stderr)
    return 1


def recv_at_least(s, n):
    """Bytes from socket s until n have come or the peer closed; what arrived beyond n in the
    same reads is kept, so a caller comparing the bytes sees it."""
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def one_roundtrip(port, payload, timeout):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        errors = []

        def send():
            try:
                s.sendall(payload)
            except OSError as e:
                errors.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = recv_at_least(s, len(payload))
        sender.join(timeout)
        if errors:
            raise errors[0]
        return got


def roundtrip(port, timeout, nbytes):
    payload = os.urandom(nbytes)
    deadline = time.monotonic() + timeout
    attempt, last = 0, "no attempt"
    while time.monotonic() < deadline:
        attempt += 1
        start = time.monotonic()
        left = max(0.5, deadline - start)
        try:
            got = one_roundtrip(port, payload, min(10.0, left))
            if got == payload:
                ms = (time.monotonic() - start) * 1000
                print(f"echo OK: {nbytes} bytes in == bytes out ({ms:.0f} ms, attempt {attempt})")
                return 0
            last = f"got {len(got)} of {nbytes} bytes" + (
                "" if payload.startswith(got) else ", content differs")
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        # The server may take users before the client's pool is up; back off and retry.
        time.sleep(min(0.2 * attempt, 1.0))
    print(f"echo FAILED after {attempt} attempts in {timeout}s: {last}", file=sys.stderr)
    return 1


def udp_roundtrip(port, timeout):
    deadline = time.monotonic() + timeout
    attempt, last = 0, "no attempt"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        while time.monotonic() < deadline:
            attempt += 1
            payload = os.urandom(512)
            try:
                s.settimeout(min(1.0, max(0.1, deadline - time.monotonic())))
                s.send(payload)
                got = s.recv(65535)
                if got == payload:
                    print(f"udp echo OK: 512-byte datagram returned (attempt {attempt})")
                    return 0
                last = f"got {len(got)} bytes that differ"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(min(0.1 * attempt, 1.0))  # refused or lost: back off, do not spin
    print(f"udp echo FAILED after {attempt} attempts in {timeout}s: {last}", file=sys.stderr)
    return 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "freeport":
        freeport()
        return 0
    if cmd == "echo-server":
        echo_server(args[0])
        return 0
    if cmd == "wait-file":
        return wait_file(args[0], float(args[1]))
    if cmd == "wait-listen":
        return wait_listen(int(args[0]), float(args[1]), int(args[2]) if len(args) > 2 else None)
    if cmd == "roundtrip":
        return roundtrip(int(args[0]), float(args[1]), int(args[2]))
    if cmd == "udp-roundtrip":
        return udp_roundtrip(int(args[0]), float(args[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
