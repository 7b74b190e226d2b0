#!/usr/bin/env python3
"""Multiply-adds per instruction in the inner loops of the INT8 engine's ARM kernels,
from the disassembly of a cross-built edgemed-run (qemu timings mean nothing; this
counts what the loops issue). A loop is a backward branch inside a function; for each
kernel function the smallest loops holding multiply-accumulate instructions are listed
with their length, their multiply-accumulates and the MACs those do:
  sdot .4s (16 MACs), smlal/smlal2 .4s (4), mla .4s (4) / .8h (8); armv7 vmlal.s16 (4).

  python3 scripts/arm_macs_per_instruction.py aarch64   [N loops per function, default 8]
  python3 scripts/arm_macs_per_instruction.py armv7

Needs the binaries of scripts/test-arm.sh (target/device/<triple>/release/edgemed-run) and
binutils' aarch64-linux-gnu-objdump / arm-linux-gnueabihf-objdump (scripts/setup-cross.sh).
"""
import collections
import re
import subprocess
import sys

TARGETS = {
    "aarch64": ("aarch64-linux-gnu-objdump", "target/device/aarch64-unknown-linux-gnu/release/edgemed-run",
                r"edgemed_engine::kernels::neon::"),
    "armv7": ("arm-linux-gnueabihf-objdump", "target/device/armv7-unknown-linux-gnueabihf/release/edgemed-run",
              r"edgemed_engine::kernels::armv7::"),
}


def macs(op, args):
    if op == "sdot":
        return 16 if ".4s" in args else 8
    if op in ("smlal", "smlal2", "umlal", "umlal2"):
        return 4 if ".4s" in args.split(",")[0] else 8
    if op in ("mla", "mls"):
        m = re.search(r"\.(4s|8h|16b)", args)
        return {"4s": 4, "8h": 8, "16b": 16}[m.group(1)] if m else 0
    if op.startswith("vmlal"):
        return 4
    return 0


def main():
    objdump, binary, pattern = TARGETS[sys.argv[1]]
    keep = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", binary], capture_output=True, text=True, check=True).stdout
    funcs, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            cur = m.group(2) if re.search(pattern, m.group(2)) else None
            if cur:
                funcs[cur] = []
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line) if cur else None
        if m:
            funcs[cur].append((int(m.group(1), 16), m.group(2), m.group(3)))
    for name, ins in sorted(funcs.items()):
        if not ins:
            continue
        lo = min(a for a, _, _ in ins)
        loops = set()
        for a, op, args in ins:
            t = re.search(r"\b([0-9a-f]+) <", args) if re.match(r"(b|cb|tb)", op) else None
            if t and lo <= int(t.group(1), 16) < a:
                body = [(o, r) for x, o, r in ins if int(t.group(1), 16) <= x <= a]
                mac = [(o, r) for o, r in body if macs(o, r)]
                if mac:
                    kinds = tuple(sorted(collections.Counter(o for o, _ in mac).items()))
                    loops.add((len(body), len(mac), sum(macs(o, r) for o, r in mac), kinds))
        for n, k, m, kinds in sorted(loops)[:keep]:
            print(f"{name.split('::')[-1]:<20} loop of {n:4} instructions: {k:3} multiply-accumulates {dict(kinds)}, "
                  f"{m:4} MACs, {m / n:5.2f} MACs per instruction")


if __name__ == "__main__":
    main()
