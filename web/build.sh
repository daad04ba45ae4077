#!/usr/bin/env bash
# Builds the web package: the crate for wasm32-unknown-unknown and its
# JavaScript bindings in web/pkg/ (wasm-bindgen's `web` target, which Deno and
# browsers both load). Installs what it lacks: the wasm32 target (rustup) and
# wasm-bindgen-cli of the version the lockfile pins for `wasm-bindgen`.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -x wasm32-unknown-unknown >/dev/null || rustup target add wasm32-unknown-unknown
version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
  echo "installing wasm-bindgen-cli $version"
  cargo install wasm-bindgen-cli --version "$version" --quiet
fi

cargo build --release --locked --target wasm32-unknown-unknown -p wgpu-batchnorm-web
target="${CARGO_TARGET_DIR:-target}"
wasm-bindgen --target web --out-dir web/pkg "$target/wasm32-unknown-unknown/release/wgpu_batchnorm_web.wasm"
echo "web/pkg: $(du -h web/pkg/wgpu_batchnorm_web_bg.wasm | cut -f1) of wasm"
