#!/bin/sh
# Overlay creation: kvm-mcp in-process vs `qemu-img create -f qcow2 -b BASE -F qcow2`,
# in one run on one file system. Usage: bench/overlay.sh [COUNT] [DIR]
# PROFILE=debug skips the release build (the in-process path is syscall-bound).
set -eu
cd "$(dirname "$0")/.."
count=${1:-200}
dir=${2:-/tmp}
if [ "${PROFILE:-release}" = release ]; then
  cargo run -q --release --example overlay_bench -- "$count" "$dir"
else
  cargo run -q --example overlay_bench -- "$count" "$dir"
fi
