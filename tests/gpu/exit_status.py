#!/usr/bin/env python3
"""The exit status of every test process of a GPU check, per test binary, as a markdown table: whether a process
that passed its tests then crashed on the way out (docs/GPU.md, "the exit crash").

  exit_status.py --ctest ctest.log --last-test build/Testing/Temporary/LastTest.log [--extra NAME=RC ...]
  exit_status.py --direct NAME=RC:LOGFILE ... [--extra NAME=RC ...]

--ctest/--last-test: ctest's own output (one line per case with its result: Passed, ***Failed, ***Exception:
SegFault, ...) and its LastTest.log (each case's command, hence its binary, and its output). --direct: binaries run
whole, with their exit status and output. --extra NAME=RC:W: other processes (the benchmark runs), their exit status and whether they wrote their
results (W 1 or 0).
Prints the table, then one summary line: "exit crash: gone", "exit crash: PERSISTS" or "exit crash: unknown".
"""

import argparse
import re
import signal
import sys
from collections import OrderedDict
from pathlib import Path

RESULT = re.compile(r"^\s*\d+/\d+ Test\s+#\d+: (\S+) \.*\s*(\**)(Passed|Failed|Exception: ?(\S+)|Not Run|Timeout|"
                    r"Child aborted|\S+)")
PASSED = re.compile(r"^\[  PASSED  \] \d+ tests?\.", re.M)
FAILED = re.compile(r"^\[  FAILED  \] ", re.M)


def describe_rc(rc):
    if rc == 0:
        return "0"
    sig = rc - 128 if rc > 128 else (-rc if rc < 0 else 0)
    if sig:
        try:
            return f"{rc} ({signal.Signals(sig).name})"
        except ValueError:
            return f"{rc} (signal {sig})"
    return str(rc)


class Binary:
    def __init__(self):
        self.processes = 0
        self.clean = 0
        self.skipped = 0      # exited 0 with its test skipped (no GPU for it)
        self.failed = 0       # a test assertion failed (gtest said FAILED), whatever the exit
        self.exit_crash = 0   # gtest said PASSED, then the process did not exit 0
        self.other = 0        # no gtest verdict: crashed or timed out during the tests, not run
        self.statuses = set()


def from_ctest(ctest_log, last_test):
    results = OrderedDict()
    for line in Path(ctest_log).read_text(errors="replace").splitlines():
        m = RESULT.match(line)
        if m:
            results[m.group(1)] = m.group(3)
    # LastTest.log: per case its command (the binary) and output.
    binary_of, output_of = {}, {}
    if last_test and Path(last_test).is_file():
        text = Path(last_test).read_text(errors="replace")
        for block in re.split(r"\n\d+/\d+ Testing: ", "\n" + text)[1:]:
            name = block.split("\n", 1)[0].strip()
            cmd = re.search(r'^Command: "([^"]+)"', block, re.M)
            if cmd:
                binary_of[name] = Path(cmd.group(1)).name
            out = re.search(r"^Output:\n-+\n(.*?)<end of output>", block, re.M | re.S)
            output_of[name] = out.group(1) if out else ""
    binaries = OrderedDict()
    for name, status in results.items():
        b = binaries.setdefault(binary_of.get(name, name.split(".")[0]), Binary())
        b.processes += 1
        out = output_of.get(name, "")
        if status in ("Passed", "Skipped"):
            b.clean += 1
            b.skipped += status == "Skipped"
        elif FAILED.search(out):
            b.failed += 1
            b.statuses.add(status)
        elif PASSED.search(out) and (status.startswith("Exception") or status == "Child aborted"):
            b.exit_crash += 1
            b.statuses.add(status)
        else:
            b.other += 1
            b.statuses.add(status)
    return binaries


def from_direct(entries):
    binaries = OrderedDict()
    for entry in entries:
        name, rest = entry.split("=", 1)
        rc, log = rest.split(":", 1)
        rc = int(rc)
        out = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
        b = binaries.setdefault(name, Binary())
        b.processes += 1
        if rc == 0:
            b.clean += 1
        elif FAILED.search(out):
            b.failed += 1
            b.statuses.add(describe_rc(rc))
        elif PASSED.search(out) and (rc > 128 or rc < 0):
            b.exit_crash += 1
            b.statuses.add(describe_rc(rc))
        else:
            b.other += 1
            b.statuses.add(describe_rc(rc))
    return binaries


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ctest")
    p.add_argument("--last-test")
    p.add_argument("--direct", nargs="*", default=[])
    p.add_argument("--extra", nargs="*", default=[])
    a = p.parse_args(argv)
    binaries = from_ctest(a.ctest, a.last_test) if a.ctest else OrderedDict()
    binaries.update(from_direct(a.direct))
    print("| process | runs | exited 0 | test failures | crashed at exit after passing | other (status) |")
    print("|---|---|---|---|---|---|")
    crash = 0
    total = 0
    for name, b in binaries.items():
        total += b.processes
        crash += b.exit_crash
        statuses = ", ".join(sorted(b.statuses))
        clean = f"{b.clean} ({b.skipped} skipped)" if b.skipped else str(b.clean)
        print(f"| {name} | {b.processes} | {clean} | {b.failed} | {b.exit_crash} | {b.other}"
              f"{f' ({statuses})' if statuses else ''} |")
    for entry in a.extra:
        name, rest = entry.rsplit("=", 1)
        rc, wrote = rest.split(":") if ":" in rest else (rest, "1")
        rc = int(rc)
        total += 1
        # A benchmark writes its results before it exits: killed by a signal after writing them is the exit crash;
        # 1 and 2 are its own verdicts (a row failed, an error), 124 the time limit.
        signalled = rc > 128 or rc < 0
        crashed = signalled and wrote == "1"
        crash += crashed
        other = "" if rc in (0, 1, 2) or crashed else describe_rc(rc) + ("" if wrote == "1" else ", no results")
        print(f"| {name} | 1 | {1 if rc == 0 else 0} | {1 if rc in (1, 2) else 0} | {1 if crashed else 0} | "
              f"{1 if other else 0}{f' ({other})' if other else ''} |")
    print()
    if total == 0:
        print("exit crash: unknown (no test process ran)")
    elif crash:
        print(f"exit crash: PERSISTS ({crash} of {total} processes crashed after passing)")
    else:
        print(f"exit crash: gone (none of {total} processes crashed at exit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
