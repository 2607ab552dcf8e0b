#!/usr/bin/env python3
"""What one run of a program costs in x86 instructions and L1 instruction misses, by source line.

    report.py PLUGIN_LOG RESULTS_LOG [TOP]

PLUGIN_LOG is the output of QEMU's cache plugin as scripts/profile-msg.sh patches it (each
instruction's fetch misses and executions); RESULTS_LOG the guest's output, which holds the
program's JIT line table (jit_lines.py: `PROG` and `LI` lines) and the bench's run count
(`imdsg_msg runs in all: N`). Everything counted is inside the program's JIT image: the kernel
functions and helpers it calls are not.
"""
import bisect
import collections
import re
import sys


def main():
    log, res = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    lines, ranges, runs = [], [], 0
    for l in open(res, errors="replace"):
        m = re.search(r"PROG \d+ (\S+) jlen \d+ ksyms (.*?) lens \((.*)\)", l)
        if m:
            starts = [int(x, 16) for x in m.group(2).split()]
            lens = [int(x) for x in m.group(3).replace(",", " ").split()]
            ranges = list(zip(starts, lens))
        m = re.search(r"LI ([0-9a-f]+) (\d+) (\S+) ?(.*)", l)
        if m:
            lines.append((int(m.group(1), 16), m.group(3), m.group(4)))
        m = re.search(r"imdsg_msg runs in all: (\d+)", l)
        if m:
            runs = int(m.group(1))
    if not ranges or not lines or not runs:
        sys.exit("report: the results hold no program line table or no run count")
    lines.sort()
    addrs = [a for a, *_ in lines]
    base = ranges[0][0]
    execs, misses = collections.Counter(), collections.Counter()
    line_execs, line_misses = collections.Counter(), collections.Counter()
    by_line = collections.defaultdict(collections.Counter)
    data_misses = collections.Counter()
    section = None

    def source(a):
        k = bisect.bisect_right(addrs, a) - 1
        return (f"{lines[k][1]} {lines[k][2][:70]}", lines[k][1]) if k >= 0 else ("?", "?")

    for l in open(log, errors="replace"):
        if l.startswith("address, data misses"):
            section = "d"
            continue
        if l.startswith("address, fetch misses"):
            section = "i"
            continue
        if l.startswith("address, L2"):
            break
        if not section or not l.startswith("0x"):
            continue
        if section == "d":
            m = re.match(r"0x([0-9a-f]+)(?: \([^)]*\))?, (\d+), ", l)
            if m and any(s <= int(m.group(1), 16) < s + n for s, n in ranges) and int(m.group(2)):
                data_misses[source(int(m.group(1), 16))[0]] += int(m.group(2))
            continue
        m = re.match(r"0x([0-9a-f]+)(?: \([^)]*\))?, (\d+), x(\d+), ", l)
        if not m:
            continue
        a = int(m.group(1), 16)
        if not any(s <= a < s + n for s, n in ranges):
            continue
        im, ex = int(m.group(2)), int(m.group(3))
        src, file_line = source(a)
        execs[src] += ex
        misses[src] += im
        cache_line = (a - base) // 64
        line_execs[cache_line] += ex
        line_misses[cache_line] += im
        by_line[cache_line][file_line] += ex
    total_ex, total_im = sum(execs.values()), sum(misses.values())
    hot = sorted(n for n, e in line_execs.items() if e >= runs / 2)
    print(f"runs: {runs}")
    print(f"per run: {total_ex / runs:.1f} x86 instructions executed, {total_im / runs:.2f} L1 instruction misses")
    print(f"64-byte code lines run in at least half the runs: {len(hot)} (any: {len(line_execs)})")
    print(f"L1 data misses per run, by loads and stores of the image: {sum(data_misses.values()) / runs:.2f}")
    print(f"\nby source line (instructions per run, misses per run), the {top} most run:")
    for src, n in execs.most_common(top):
        print(f"  {n / runs:8.1f} {misses[src] / runs:6.2f}  {src}")
    print("\nL1 data misses per run, by source line (at least 0.5):")
    for src, n in data_misses.most_common():
        if n >= runs / 2:
            print(f"  {n / runs:6.2f}  {src}")
    print("\nthe code lines run in at least half the runs (offset in the image, per run: instructions, misses; source lines):")
    for n in hot:
        srcs = ", ".join(s for s, _ in by_line[n].most_common(3))
        print(f"  +{n * 64:#06x} {line_execs[n] / runs:7.1f} {line_misses[n] / runs:5.2f}  {srcs}")


if __name__ == "__main__":
    main()
