#!/usr/bin/env python3
"""PyTorch's own normalization ops timed on the crate's benchmark rows.

The peer of `cargo run --release --features bench --example bench`: the same
ops, shapes, layouts and dtypes, timed inside PyTorch (cuDNN where PyTorch uses
it), written as the benchmark's JSON rows, so that `side_by_side.py` can put
the two side by side.

    python3 scripts/torch_peer.py [--quick] [--json FILE] [--device cuda|cpu]

Rows: batch norm's training forward, inference forward and training backward
(`F.batch_norm`, channels-first tensors NCHW, channels-last ones NCHW in
`torch.channels_last` memory format, named by the crate's NHWC dims) on the
benchmark's seven shapes; layer norm, RMS norm, group norm (32 groups, both
layouts) and instance norm forward and backward on its six; each in f32, and
batch norm's 32x64x56x56 (both layouts) and 8x512x7x7, layer norm's 4096x768 and
channels-last group norm also in f16 and bf16, as the benchmark's half-precision
table. A backward row times the backward alone (`torch.autograd.grad` over a
kept graph: dx and the parameter gradients).

Timing: CUDA events around each call on a GPU (wall clock and a synchronize on
the CPU), the median of 21 after 3 warm-up (`--quick`: 5 after 1). Bytes: the
benchmark's model (docs/SPEC.md section 8): training forward 3, inference 2,
backward 5 tensors; the family's forward 2, backward 3; GB/s and the fraction
of a plain device copy (`y.copy_(x)`) of the same bytes, measured here.

Without CUDA it runs on the CPU and says so (a dry run of the script, not a
peer); without torch it prints why and exits 0 having written no rows, so that
a device run goes on without it.
"""

import argparse
import json
import statistics
import sys
import time

BATCH_SHAPES = [
    ([32, 64, 56, 56], "channels-first"),
    ([32, 56, 56, 64], "channels-last"),
    ([256, 1024], "channels-first"),
    ([8, 512, 7, 7], "channels-first"),
    ([8, 7, 7, 512], "channels-last"),
    ([4, 3, 224, 224], "channels-first"),
    ([4, 224, 224, 3], "channels-last"),
]
# (name, crate's dims, kind, layout)
NORM_SHAPES = [
    ("layer norm", [4096, 768], "layer", "rows"),
    ("layer norm", [2048, 4096], "layer", "rows"),
    ("rms norm", [4096, 4096], "rms", "rows"),
    ("group norm G=32", [2, 320, 64, 64], "group", "channels-first"),
    ("group norm G=32", [2, 64, 64, 320], "group", "channels-last"),
    ("instance norm", [8, 64, 128, 128], "instance", "channels-first"),
]
# The rows the benchmark's half-precision table times (its SHAPES[0], [1], [3]
# and NORM_SHAPES[0], [4]).
HALF_BATCH = [BATCH_SHAPES[0], BATCH_SHAPES[1], BATCH_SHAPES[3]]
HALF_NORMS = [NORM_SHAPES[0], NORM_SHAPES[4]]
# Tensors each op reads and writes, in the benchmark's model.
PASSES = {
    "training forward": 3,
    "inference forward": 2,
    "training backward": 5,
    "fwd": 2,
    "bwd": 3,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 repetitions after 1 warm-up")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda where available")
    args = parser.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"torch_peer: PyTorch is not installed ({e}): no PyTorch rows", file=sys.stderr)
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("torch_peer: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 1
    if device == "cpu":
        print("torch_peer: no CUDA device: running on the CPU, a dry run of the script, not a GPU peer")
        # Large shapes take minutes on a CPU: the dry run times the small half.
    adapter = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    backend = f"torch {torch.__version__} {device}" + (f", cuDNN {torch.backends.cudnn.version()}" if device == "cuda" else "")
    warmup, reps = (1, 5) if args.quick else (3, 21)
    print(f"torch_peer on {adapter} | {backend} | median of {reps} after {warmup} warm-up")
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

    def median_ms(call):
        for _ in range(warmup):
            call()
        times = []
        for _ in range(reps):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                call()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    def tensor(dims, layout, dtype, seed):
        """The crate's dims as a torch tensor: NHWC dims become NCHW in channels_last memory."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        if layout == "channels-last":
            nchw = [dims[0], dims[-1]] + dims[1:-1]
            t = torch.randn(nchw, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
            fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(nchw))
            return t.contiguous(memory_format=fmt) if fmt else t
        return torch.randn(dims, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)

    copy_cache = {}

    def copy_ms(numel, dtype):
        key = (numel, dtype)
        if key not in copy_cache:
            x = torch.empty(numel, device=device, dtype=dtype).normal_()
            y = torch.empty_like(x)
            copy_cache[key] = median_ms(lambda: y.copy_(x))
        return copy_cache[key]

    rows = []

    def row(op, layout, dims, ms, passes, numel, dtype):
        size = torch.tensor([], dtype=dtype).element_size()
        tensor_bytes = numel * size
        copy = copy_ms(numel, dtype)
        roofline = 2 * tensor_bytes / copy / 1e6
        gbps = passes * tensor_bytes / ms / 1e6
        r = {
            "kind": "kernel",
            "op": op,
            "layout": layout,
            "shape": dims,
            "ms": round(ms, 6),
            "gbps": round(gbps, 3),
            "roofline_gbps": round(roofline, 3),
            "fraction": round(gbps / roofline, 4),
            "copy_multiple": round(ms / copy, 4),
            "floor_copies": None,
            "of_floor": None,
            "cpu_ms": None,
            "timer": "cuda-events" if device == "cuda" else "wall",
            "adapter": adapter,
            "backend": backend,
        }
        rows.append(r)
        print(f"{op:<34} {layout:<15} {str(dims):<18} {ms:>9.3f} ms {gbps:>8.1f} GB/s {r['fraction']:>6.2f} of copy")

    def batch_rows(shapes, dname):
        dtype = dtypes[dname]
        suffix = "" if dname == "f32" else f" {dname}"
        for dims, layout in shapes:
            x = tensor(dims, layout, dtype, 1)
            c = x.shape[1]
            numel = x.numel()
            weight = torch.ones(c, device=device, requires_grad=True)
            bias = torch.zeros(c, device=device, requires_grad=True)
            mean, var = torch.zeros(c, device=device), torch.ones(c, device=device)
            with torch.no_grad():
                train = lambda: F.batch_norm(x, mean, var, weight, bias, training=True, momentum=0.1, eps=1e-5)
                infer = lambda: F.batch_norm(x, mean, var, weight, bias, training=False, eps=1e-5)
                row("training forward" + suffix, layout, dims, median_ms(train), PASSES["training forward"], numel, dtype)
                row("inference forward" + suffix, layout, dims, median_ms(infer), PASSES["inference forward"], numel, dtype)
            xg = x.detach().clone().requires_grad_(True)
            y = F.batch_norm(xg, mean, var, weight, bias, training=True, momentum=0.1, eps=1e-5)
            dy = torch.randn_like(y)
            backward = lambda: torch.autograd.grad(y, (xg, weight, bias), dy, retain_graph=True)
            row("training backward" + suffix, layout, dims, median_ms(backward), PASSES["training backward"], numel, dtype)

    def norm_rows(shapes, dname):
        dtype = dtypes[dname]
        suffix = "" if dname == "f32" else f" {dname}"
        for name, dims, kind, layout in shapes:
            x = tensor(dims, layout, dtype, 2)
            numel = x.numel()
            if kind in ("layer", "rms"):
                params = dims[-1]
            else:
                params = x.shape[1]
            weight = torch.ones(params, device=device, dtype=dtype if kind in ("layer", "rms") else torch.float32, requires_grad=True)
            bias = torch.zeros(params, device=device, dtype=weight.dtype, requires_grad=True)
            if kind == "layer":
                f = lambda t: F.layer_norm(t, [params], weight, bias, 1e-5)
                grads = (weight, bias)
            elif kind == "rms":
                f = lambda t: F.rms_norm(t, [params], weight, 1e-5)
                grads = (weight,)
            elif kind == "group":
                f = lambda t: F.group_norm(t, 32, weight.to(t.dtype), bias.to(t.dtype), 1e-5)
                grads = (weight, bias)
            else:
                f = lambda t: F.instance_norm(t, weight=weight.to(t.dtype), bias=bias.to(t.dtype), eps=1e-5)
                grads = (weight, bias)
            with torch.no_grad():
                row(f"{name} fwd{suffix}", layout, dims, median_ms(lambda: f(x)), PASSES["fwd"], numel, dtype)
            xg = x.detach().clone().requires_grad_(True)
            y = f(xg)
            dy = torch.randn_like(y)
            backward = lambda: torch.autograd.grad(y, (xg,) + grads, dy, retain_graph=True)
            row(f"{name} bwd{suffix}", layout, dims, median_ms(backward), PASSES["bwd"], numel, dtype)

    def numel(dims):
        n = 1
        for d in dims:
            n *= d
        return n

    # On the CPU, shapes of at most 4 M values: the others take minutes there.
    fits = lambda dims: device == "cuda" or numel(dims) <= 1 << 22
    batch = [s for s in BATCH_SHAPES if fits(s[0])]
    norms = [s for s in NORM_SHAPES if fits(s[1])]
    runs = [(batch_rows, batch, "f32"), (norm_rows, norms, "f32")]
    for dname in ("f16", "bf16"):
        runs += [(batch_rows, [s for s in HALF_BATCH if s in batch], dname), (norm_rows, [s for s in HALF_NORMS if s in norms], dname)]
    for rows_of, shapes, dname in runs:
        for shape in shapes:
            try:
                rows_of([shape], dname)
            except RuntimeError as e:
                # An op PyTorch lacks for a dtype on this device (half on some CPUs).
                print(f"skipped {shape} {dname}: {str(e).splitlines()[0]}")
    if args.json:
        with open(args.json, "w") as out:
            out.write("[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n]\n")
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
