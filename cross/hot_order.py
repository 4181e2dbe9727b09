#!/usr/bin/env python3
"""Turn callgrind profiles of a stripped static-pie build into lld's --symbol-ordering-file.

Usage: hot_order.py MAP OUT [--block] [idle:|burst:]PROFILE...
       hot_order.py --merge BASE EXTRA OUT
       hot_order.py --keep OLD NEW OUT

MAP is the linker map of the build (`-Map`), PROFILE the callgrind files and the `.names` files
of cross/native_trace.py (one symbol per line) in order of priority (idle runs first).
callgrind names the code of a stripped executable by its address in the file's own layout, so
every address is looked up in the map as it is. The symbols found are written to OUT in the
order first seen, so the code an idle tunnel runs is laid out together, then the code of its
connections; functions the native runs hit only after being told to stop (below `--stop--`)
go last.

`--block` starts a block (one role's runs of one group of scenarios). In a block, the native
runs are read first: the code first seen in a `burst:` one goes in the middle of the code
first seen in its `idle:` ones, not after everything: then every 64 KiB window that burst code
shares holds idle code too (it is shorter than a window and has idle code on both sides), so a
burst faults in no window the idle process had not. At the end of a block it may straddle a
window boundary past the last idle code, and the burst would fault that window in. Then the
rest of the native runs, and last what only callgrind saw: fallbacks for CPUs without this
one's features, and code its runs reached while stopping (callgrind has no stop mark).

`--merge` joins two such lists, made from builds whose C code two compilers built (gcc for
`cargo build`, zig's clang for `cross/build.sh`): they inline differently, so each build runs
functions the other does not have. Each name only EXTRA has goes right after the name before
it in EXTRA that BASE has, so it lands beside the code it runs with in either build.

`--keep` keeps the layout of an OLD list that measured well across a change of the code, with
the names of a NEW list remade after it. A remade list is not the same twice (the traces'
thread order), and may lay out a 64 KiB window worse. Each name only OLD has takes the place
of its renamed self in NEW (code moved to another module, a closure's parent renamed, a local
symbol's `.N` suffix renumbered): first a name that is the same but for `.N` suffixes and
back-references, then the most similar one (`difflib`, ratio at least `RENAMED`). OLD's
other names stay (lld ignores names it does not find), and names only NEW has are merged in
as with `--merge`.
"""
import bisect
import difflib
import re
import sys


def symbols(map_path):
    """(address, name) of every symbol in the map's code sections, sorted by address, and the
    (start, end) of those sections."""
    out, ranges = [], []
    code = False
    for line in open(map_path, errors="replace"):
        parts = line.split()
        if len(parts) != 5:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        if parts[4].startswith("."):  # an output section
            code = parts[4].startswith(".text")
            if code:
                ranges.append((addr, addr + int(parts[2], 16)))
        elif code and not parts[4].startswith(("<", "/", "(")):
            out.append((addr, parts[4]))
    out.sort()
    return out, ranges


def addresses(profile):
    """Code addresses callgrind named (a stripped binary's functions are named by address)."""
    for line in open(profile, errors="replace"):
        m = re.match(r"^c?fn=\(\d+\) 0x([0-9a-fA-F]+)", line)
        if m:
            yield int(m.group(1), 16)


def native_run(path):
    """The names of a `.names` file, split at `--stop--`: (running, exiting)."""
    names = open(path).read().split()
    cut = names.index("--stop--") if "--stop--" in names else len(names)
    return names[:cut], names[cut + 1:]


def split_kind(arg):
    """`idle:PATH` -> ("idle", PATH), `burst:PATH` -> ("burst", PATH), PATH -> ("", PATH)."""
    kind, sep, path = arg.partition(":")
    return (kind, path) if sep and kind in ("idle", "burst") else ("", arg)


def merge(base, extra):
    """`base` with the names only `extra` has, each after its predecessor in `extra`."""
    known = set(base)
    after = {}  # a name of base -> the names of extra that follow it
    anchor = None
    for name in extra:  # each name once: the lists hot_order.py writes have no repeats
        if name in known:
            anchor = name
        else:
            after.setdefault(anchor, []).append(name)
    out = list(after.get(None, []))
    for name in base:
        out.append(name)
        out.extend(after.get(name, []))
    return out


# How alike two mangled names must be to count as one function renamed (`--keep`).
RENAMED = 0.9


def shape(name):
    """A mangled name without what a rename elsewhere changes: LLVM's `.N` suffix of a local
    symbol and v0 back-references (`B<base-62>_`, offsets into the name itself)."""
    return re.sub(r"B[0-9A-Za-z]*_", "B_", re.sub(r"(\.\d+)+$", "", name))


def keep(old, new):
    """`old`'s order, with its names renamed as `new` names them, and `new`'s other names
    merged in."""
    known_new, known_old = set(new), set(old)
    gone = [n for n in old if n not in known_new]
    fresh = [n for n in new if n not in known_old]
    by_shape = {}
    for n in fresh:
        by_shape.setdefault(shape(n), []).append(n)
    renamed = {}
    for n in gone:
        same = by_shape.get(shape(n))
        if same:
            renamed[n] = same.pop(0)
    taken = set(renamed.values())
    left = [n for n in fresh if n not in taken]
    for n in gone:
        if n in renamed or not left:
            continue
        ratios = ((difflib.SequenceMatcher(None, n, m).ratio(), m) for m in left)
        ratio, best = max(ratios, key=lambda r: r[0])  # the first of equals, in NEW's order
        if ratio >= RENAMED:
            renamed[n] = best
            left.remove(best)
    return merge([renamed.get(n, n) for n in old], new), renamed


def write_list(path, order):
    """One symbol per line, as lld's --symbol-ordering-file reads it."""
    with open(path, "w") as f:
        f.write("\n".join(order) + "\n")


# The program's entry point (musl's crt1.o / rcrt1.o), laid out first.
ENTRY = "_start"


def main():
    if sys.argv[1] in ("--keep", "--merge"):
        first, second = (open(p).read().split() for p in sys.argv[2:4])
        out = sys.argv[4]
        if sys.argv[1] == "--keep":
            order, renamed = keep(first, second)
            for a, b in renamed.items():
                print(f"renamed: {a}\n      -> {b}")
            what = f"{len(renamed)} renamed, {len(order) - len(first)} new"
        else:
            order = merge(first, second)
            what = f"{len(order) - len(first)} from the second build"
        write_list(out, order)
        print(f"{len(order)} symbols ({what}) -> {out}")
        return
    map_path, out_path = sys.argv[1], sys.argv[2]
    profiles = sys.argv[3:]
    syms, ranges = symbols(map_path)
    starts = [a for a, _ in syms]
    paths = [split_kind(a)[1] for a in profiles if a != "--block"]
    native = {p: native_run(p) for p in paths if p.endswith(".names")}
    # Code that natively ran only once the run was told to stop goes last, after the code of
    # every running scenario: an idle tunnel never runs it.
    running = {name for run, _ in native.values() for name in run}
    exit_only = {name for _, exit_ in native.values() for name in exit_} - running
    seen, order = set(), []
    block = []  # (kind, profile) of the current block

    def names_of(profile):
        """The names a profile ran, in order: a native run's before its stop, or callgrind's
        addresses looked up in the map."""
        if profile in native:
            yield from native[profile][0]
            return
        for addr in addresses(profile):
            # Code outside the executable's own (the vDSO, valgrind's) is not ours to order.
            if not any(lo <= addr < hi for lo, hi in ranges):
                continue
            i = bisect.bisect_right(starts, addr) - 1
            if i >= 0:
                yield syms[i][1]

    def end_block():
        # Native runs first: they say what this CPU runs idle and in bursts. Then callgrind's,
        # whose new names are the fallbacks of CPUs without this one's features, and code its
        # runs reached while stopping (they have no stop mark): cold here, so after.
        parts = {}
        for is_native in (True, False):
            for kind, profile in block:
                if (profile in native) != is_native:
                    continue
                part = parts.setdefault((kind, is_native), [])
                for name in names_of(profile):
                    if name not in seen and name not in exit_only:
                        seen.add(name)
                        part.append(name)
        idle = parts.get(("idle", True), [])
        half = len(idle) // 2
        order.extend(idle[:half] + parts.get(("burst", True), []) + idle[half:])
        for key in (("", True), ("idle", False), ("", False), ("burst", False)):
            order.extend(parts.get(key, []))
        block.clear()

    for arg in profiles:
        if arg == "--block":
            end_block()
        else:
            block.append(split_kind(arg))
    end_block()
    # The entry point runs once in every process, first. The runs see it late or not at all
    # (a process under gdb is past it when the breakpoints go in), and where they put it, it
    # may fault in a window of its own: in the middle of the client's block, the idle
    # plaintext server's one window more after one change of the list.
    if ENTRY in {name for _, name in syms}:
        if ENTRY in seen:
            order.remove(ENTRY)
        seen.add(ENTRY)
        order.insert(0, ENTRY)
    # Now the exit-only code, in the order the runs reached it.
    for _, exit_ in native.values():
        for name in exit_:
            if name not in seen:
                seen.add(name)
                order.append(name)
    write_list(out_path, order)
    print(f"{len(order)} symbols of {len(syms)} -> {out_path}")


if __name__ == "__main__":
    main()
