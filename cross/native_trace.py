"""gdb script: the functions a run of the binary calls natively, in the order first called.

Usage: HOT_MAP=map.txt HOT_OUT=names.txt gdb -q -batch -x cross/native_trace.py --args BIN ARGS

callgrind runs the code on valgrind's CPU, which lacks some of the host's features (ADX,
VAES, VPCLMULQDQ, SHA extensions), so ring's assembly takes other paths there than on the
machine itself. This puts a one-shot breakpoint on every function of the linker map, runs
the binary as it is, and writes the name of each function hit, once, to HOT_OUT. Each
breakpoint costs a stop only the first time, so the run is slow only while new code runs.
Signal the binary itself (the child of gdb), not gdb, to end the run: the names of the
functions first hit after that signal (SIGINT or SIGTERM) follow a line `--stop--`, so the
code that runs only at exit can be laid out apart from the code of a running tunnel.
"""
import os
import sys

import gdb  # noqa: F401 (provided by gdb)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hot_order import symbols  # noqa: E402 (the map parser, beside this file)


def code_symbols(map_path):
    """{address: name} of the map's code symbols (one name per address)."""
    out = {}
    for addr, name in symbols(map_path)[0]:
        out.setdefault(addr, name)
    return out


def load_base(binary):
    """Where the (position-independent) binary was mapped."""
    mappings = gdb.execute("info proc mappings", to_string=True)
    for line in mappings.splitlines():
        f = line.split()
        if len(f) >= 5 and os.path.realpath(f[-1]) == binary:
            return int(f[0], 16) - int(f[3], 16)
    raise gdb.GdbError("binary not mapped")


def main():
    functions = code_symbols(os.environ["HOT_MAP"])
    binary = os.path.realpath(gdb.current_progspace().filename)
    for cmd in (
        "set pagination off",
        "set confirm off",
        "set breakpoint always-inserted on",
        "handle SIGPIPE SIGCHLD nostop noprint pass",
        "handle SIGINT SIGTERM stop print pass",
        "starti",
    ):
        gdb.execute(cmd, to_string=True)
    base = load_base(binary)
    by_pc = {}
    for addr, name in functions.items():
        by_pc[base + addr] = name
        gdb.Breakpoint("*" + hex(base + addr), internal=True, temporary=True)
    order = []

    def on_stop(event):
        if isinstance(event, gdb.SignalEvent) and event.stop_signal in ("SIGINT", "SIGTERM"):
            if "--stop--" not in order:
                order.append("--stop--")

    gdb.events.stop.connect(on_stop)
    while True:
        try:
            gdb.execute("continue", to_string=True)
            pc = int(gdb.parse_and_eval("(unsigned long)$pc"))
        except gdb.error:  # the process is gone
            break
        if pc in by_pc:
            order.append(by_pc.pop(pc))
    with open(os.environ["HOT_OUT"], "w") as f:
        f.write("".join(n + "\n" for n in order))


main()
