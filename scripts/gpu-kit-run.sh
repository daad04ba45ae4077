#!/usr/bin/env bash
# Runs the GPU kit (docs/GPU.md) where it lands, the device machine: unpacks
# the Vulkan loader, checks that the adapter is the NVIDIA GPU, then runs
# gpu_check (every op against the f64 reference), the benchmark (--json) and
# PyTorch's peer (scripts/torch_peer.py), and writes their outputs and a
# side-by-side table (crate ms, torch ms, ratio) under $OUT.
#
#   bash scripts/gpu-kit-run.sh [--allow-software] [--quick]
#
# --allow-software runs on an adapter that is not NVIDIA's (the end-to-end test
# on lavapipe here) instead of failing; --quick passes --quick to each step.
# Each step has a time limit, together 7 minutes, so that a second try fits a
# lease; the exit status is non-zero where a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-kit-out}"
mkdir -p "$OUT"
allow_software=0
quick=()
for arg in "$@"; do
  case "$arg" in
    --allow-software) allow_software=1 ;;
    --quick) quick=(--quick) ;;
    *) echo "gpu-kit-run: unknown argument $arg" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
log() { echo "$*" | tee -a "$OUT/kit.log"; }
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ ! -x .kit/gpu_check ] || [ ! -x .kit/bench ]; then
  log "FAILED: .kit/ holds no binaries: run scripts/gpu-kit-build.sh here first, and carry .kit"
  exit 1
fi
# The Vulkan loader, where the machine lacks it, and NVIDIA's driver manifest.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  for deb in .gl/*.deb; do
    [ -f "$deb" ] && dpkg -x "$deb" /
  done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$nvidia_icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES="$nvidia_icd"
fi
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

if ! adapter=$(timeout 60 .kit/gpu_check --adapter 2>&1); then
  log "FAILED: no adapter: $adapter"
  exit 1
fi
log "adapter: $adapter"
if ! grep -qi nvidia <<<"$adapter"; then
  if [ "$allow_software" = 1 ]; then
    log "not NVIDIA's adapter: running anyway (--allow-software)"
  else
    log "FAILED: the adapter is not the NVIDIA GPU (a software adapter?): $adapter"
    exit 1
  fi
fi
# At most 8 files come back from $OUT: the driver's report goes in the log.
(nvidia-smi 2>&1 | tee -a "$OUT/kit.log" >/dev/null) || true

status=0
step() {
  local name=$1 limit=$2
  shift 2
  log "== $name (limit ${limit} s, at $(elapsed))"
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
    log "$name: ok ($(tail -n 1 "$OUT/$name.log"))"
  else
    log "$name: FAILED (exit $?; $OUT/$name.log ends: $(tail -n 3 "$OUT/$name.log" | tr '\n' ' '))"
    status=1
  fi
}
step gpu_check 150 .kit/gpu_check "${quick[@]}" --json "$OUT/gpu_check.json"
step bench 210 .kit/bench "${quick[@]}" --json "$OUT/bench.json"
step torch_peer 75 python3 scripts/torch_peer.py "${quick[@]}" --json "$OUT/torch.json"
if [ -s "$OUT/bench.json" ] && [ -s "$OUT/torch.json" ]; then
  python3 scripts/side_by_side.py "$OUT/bench.json" "$OUT/torch.json" > "$OUT/side_by_side.md" || status=1
  log "side by side: $OUT/side_by_side.md"
fi
log "done in $(elapsed), status $status"
exit $status
