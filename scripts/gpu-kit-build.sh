#!/usr/bin/env bash
# Prepares the GPU kit here (docs/GPU.md): the release binaries of the
# benchmark (every table) and of gpu_check, stripped, in .kit/, and the Vulkan
# loader's Debian package in .gl/ (the device machine may lack it; it is
# unpacked there). Both folders are ignored by git and travel as `carry`.
# Then one `run` call runs scripts/gpu-kit-run.sh on the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/wgpu-batchnorm/target}"

cargo build --release --features bench --example bench --example gpu_check
mkdir -p .kit
for binary in bench gpu_check; do
  cp "$CARGO_TARGET_DIR/release/examples/$binary" .kit/
  strip .kit/$binary
done

# The Vulkan loader as amd64 packages, whatever this machine's architecture.
mkdir -p .gl /tmp/gpu-kit-apt/partial
rm -f .gl/*.deb
apt_amd64=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-kit-apt)
apt-get "${apt_amd64[@]}" update -qq
(cd .gl && apt-get "${apt_amd64[@]}" download libvulkan1 >/dev/null)

du -sh .kit .gl
echo "gpu kit ready: run \`bash scripts/gpu-kit-run.sh\` on the device with carry [\".kit\", \".gl\"] (docs/GPU.md)"
