#!/usr/bin/env python3
"""Tests of cross/hot_order.py on a small linker map and made-up runs (no build, no tracing).

    python3 cross/test_hot_order.py
"""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "hot_order.py")

# An lld map: a .text section from 0x1000 with one symbol every 0x100 bytes (f0 .. f15),
# and a .data section whose symbol a callgrind address may hit but must not be ordered.
MAP = "\n".join(
    ["             VMA              LMA     Size Align Out     In      Symbol",
     "            1000             1000     1000    16 .text"]
    + [f"            {0x1000 + i * 0x100:x}             {0x1000 + i * 0x100:x}      100     1"
       f"                 f{i}" for i in range(16)]
    + ["            3000             3000      100    16 .data",
       "            3000             3000      100     1                 table"]
) + "\n"


def words(path):
    with open(path) as f:
        return f.read().split()


class HotOrder(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.map = self.file("map.txt", MAP)

    def tearDown(self):
        self.dir.cleanup()

    def file(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def names(self, name, *syms):
        return self.file(name, "\n".join(syms) + "\n")

    def order(self, *args):
        out = os.path.join(self.dir.name, "out.txt")
        subprocess.run([sys.executable, SCRIPT, self.map, out, *args], check=True,
                       capture_output=True)
        return words(out)

    def test_burst_code_goes_in_the_middle_of_the_idle_code(self):
        idle = self.names("idle.names", "f0", "f1", "f2", "f3")
        conns = self.names("conns.names", "f1", "f4")
        burst = self.names("burst.names", "f2", "f5", "f6")
        got = self.order("--block", f"idle:{idle}", conns, f"burst:{burst}")
        self.assertEqual(got, ["f0", "f1", "f5", "f6", "f2", "f3", "f4"])

    def test_native_runs_decide_and_callgrind_only_code_goes_after(self):
        idle = self.names("idle.names", "f0", "f1", "f2", "f3")
        # Under callgrind: f8, a fallback this CPU never runs, and f5, which that run reached
        # while stopping (callgrind has no stop mark) but which natively only a burst runs.
        idle_cg = self.file("idle.cg", "fn=(1) 0x1800\nfn=(2) 0x1500\n")
        burst = self.names("burst.names", "f5", "f6")
        got = self.order("--block", f"idle:{idle}", f"idle:{idle_cg}", f"burst:{burst}")
        self.assertEqual(got, ["f0", "f1", "f5", "f6", "f2", "f3", "f8"])

    def test_each_block_keeps_its_own_code_and_names_come_once(self):
        s_idle = self.names("s-idle.names", "f0", "f1")
        s_burst = self.names("s-burst.names", "f2")
        c_idle = self.names("c-idle.names", "f1", "f3", "f4")
        c_burst = self.names("c-burst.names", "f2", "f5")
        got = self.order("--block", f"idle:{s_idle}", f"burst:{s_burst}",
                         "--block", f"idle:{c_idle}", f"burst:{c_burst}")
        self.assertEqual(got, ["f0", "f2", "f1", "f3", "f5", "f4"])

    def test_code_run_only_after_the_stop_goes_last(self):
        run = self.names("run.names", "f0", "f1", "--stop--", "f7", "f1")
        other = self.names("other.names", "f2")
        self.assertEqual(self.order(f"idle:{run}", other), ["f0", "f1", "f2", "f7"])

    def test_the_entry_point_goes_first(self):
        self.map = self.file("map-entry.txt", MAP.replace(" f15\n", " _start\n"))
        idle = self.names("idle.names", "f0", "f1")
        self.assertEqual(self.order("--block", f"idle:{idle}"), ["_start", "f0", "f1"])
        late = self.names("late.names", "f2", "_start")
        got = self.order("--block", f"idle:{idle}", "--block", f"idle:{late}")
        self.assertEqual(got, ["_start", "f0", "f1", "f2"])

    def test_callgrind_addresses_are_looked_up_in_the_map(self):
        cg = self.file("run.cg", "fn=(1) 0x1234\ncfn=(2) 0x1000\nfn=(3) 0x3010\nfn=(4) 0x12ff\n")
        # 0x1234 and 0x12ff are inside f2, 0x1000 is f0; 0x3010 is data, not code.
        self.assertEqual(self.order(cg), ["f2", "f0"])

    def test_merge_puts_names_only_the_second_list_has_after_their_predecessor(self):
        base = self.names("base.txt", "a", "b", "c")
        extra = self.names("extra.txt", "x", "a", "y", "c", "z")
        out = os.path.join(self.dir.name, "merged.txt")
        subprocess.run([sys.executable, SCRIPT, "--merge", base, extra, out], check=True,
                       capture_output=True)
        self.assertEqual(words(out), ["x", "a", "y", "b", "c", "z"])

    def test_keep_holds_the_old_order_under_the_new_names(self):
        # A closure of `app::release` that became `app::release::run`, with a back-reference
        # after it shifted; f's suffix renumbered; y and x new; the new trace missed "gone" and
        # laid the rest out another way.
        tick = "_RNCNvCsdtIYA4b8sOl_3app7release0"
        run = "_RNCNvNtCsdtIYA4b8sOl_3app7release3run0"
        old = self.names("old.txt", "a", tick + "NtB5_4Task", "b", "f.12", "gone", "c")
        new = self.names("new.txt", "c", "f.15", "b", "x", run + "NtB9_4Task", "a", "y")
        out = os.path.join(self.dir.name, "kept.txt")
        subprocess.run([sys.executable, SCRIPT, "--keep", old, new, out], check=True,
                       capture_output=True)
        self.assertEqual(words(out),
                         ["a", "y", run + "NtB9_4Task", "b", "x", "f.15", "gone", "c"])

    def test_keep_does_not_rename_to_a_different_function(self):
        old = self.names("old.txt", "a", "_RNCNvCsdtIYA4b8sOl_3app7release0")
        new = self.names("new.txt", "a", "_RNvNtCs7BliBxkEZsN_4core3fmt5write")
        out = os.path.join(self.dir.name, "kept.txt")
        subprocess.run([sys.executable, SCRIPT, "--keep", old, new, out], check=True,
                       capture_output=True)
        self.assertEqual(words(out), ["a", "_RNvNtCs7BliBxkEZsN_4core3fmt5write",
                                      "_RNCNvCsdtIYA4b8sOl_3app7release0"])


if __name__ == "__main__":
    unittest.main()
