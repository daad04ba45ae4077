#!/usr/bin/env python3
"""The crate's benchmark rows beside PyTorch's, as a Markdown table.

    python3 scripts/side_by_side.py BENCH.json TORCH.json > side_by_side.md

BENCH.json is `bench --json`'s output, TORCH.json `torch_peer.py --json`'s.
Rows pair by op, layout and shape; the crate's half-precision rows name their
storage ("f16 (words)", "f16 (shader-f16)", "bf16 (words)"), PyTorch's the dtype
alone, and the crate's f32 rows of its half-precision table ("... f32") pair with
PyTorch's f32 rows too. `crate / torch` is the crate's time over PyTorch's: below
1 the crate is faster. Rows of one side alone are listed after the table.
"""

import json
import re
import sys


def load(path):
    with open(path) as f:
        return [r for r in json.load(f) if r.get("kind") == "kernel"]


def key(row):
    op = re.sub(r" \((words|shader-f16)\)$", "", row["op"])
    op = re.sub(r" f32$", "", op)
    return (op, row["layout"], tuple(row["shape"]))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    crate, torch = load(sys.argv[1]), load(sys.argv[2])
    torch_by_key = {}
    for r in torch:
        torch_by_key.setdefault(key(r), r)
    crate_adapter = crate[0]["adapter"] + " (" + crate[0]["backend"] + ")" if crate else "none"
    torch_adapter = torch[0]["adapter"] + " (" + torch[0]["backend"] + ")" if torch else "none"
    print(f"crate: {crate_adapter}; torch: {torch_adapter}\n")
    print("| op | layout | shape | crate ms | torch ms | crate / torch | crate GB/s | torch GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    paired, seen = 0, set()
    for r in crate:
        t = torch_by_key.get(key(r))
        if t is None:
            continue
        paired += 1
        seen.add(key(r))
        shape = "x".join(str(d) for d in r["shape"])
        print(
            f"| {r['op']} | {r['layout']} | {shape} | {r['ms']:.3f} | {t['ms']:.3f} | {r['ms'] / t['ms']:.2f} "
            f"| {r['gbps']:.1f} | {t['gbps']:.1f} |"
        )
    crate_alone = sorted({" ".join(map(str, key(r))) for r in crate if key(r) not in torch_by_key})
    torch_alone = sorted({" ".join(map(str, key(r))) for r in torch if key(r) not in seen})
    print(f"\n{paired} rows paired.")
    if crate_alone:
        print(f"\nThe crate's rows without a PyTorch row ({len(crate_alone)}): " + "; ".join(crate_alone))
    if torch_alone:
        print(f"\nPyTorch's rows without a crate row ({len(torch_alone)}): " + "; ".join(torch_alone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
