#!/usr/bin/env bash
# The compute bench on a machine with a GPU: the LoRA training step of the demo model and the
# GPT-2-small shape on tfjs WebGPU in Node (Dawn, npm package `webgpu`) next to PyTorch CUDA on
# the same weights, adapter and batch, steps alternated (bench/compute.ts --device). Writes
# bench/results/compute.device.json and the compute-device-table section of bench/RESULTS.md.
#
# Needs: Node >= 20 with this checkout's node_modules (npm ci; the `webgpu` package ships Dawn),
# a Vulkan driver for the GPU (Dawn's backend on Linux; without one Dawn falls back to SwiftShader
# and every row says "software"), and a python3 with CUDA torch (LORAMESH_BENCH_PYTHON picks it;
# default: the first of /usr/bin/python3, python3 whose torch sees a CUDA device).
# Usage: bench/device.sh            (about 2 minutes on a datacenter GPU)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "bench/device.sh: $*" >&2; exit 1; }

command -v node >/dev/null || fail "node not found (Node >= 20 needed)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || fail "Node >= 20 needed, found $(node --version)"
[ -d node_modules/webgpu ] && [ -d node_modules/@tensorflow/tfjs-backend-webgpu ] || fail "node_modules missing: run npm ci (or carry node_modules to this machine)"
[ -f build/tfjs-gradients.cjs ] || node scripts/build-gradients.mjs

if [ -z "${LORAMESH_BENCH_PYTHON:-}" ]; then
  for py in /usr/bin/python3 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      LORAMESH_BENCH_PYTHON="$(command -v "$py")"
      break
    fi
  done
fi
[ -n "${LORAMESH_BENCH_PYTHON:-}" ] || fail "no python3 with CUDA torch found; set LORAMESH_BENCH_PYTHON"
export LORAMESH_BENCH_PYTHON

echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
echo "PyTorch: $("$LORAMESH_BENCH_PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))')"
exec npx tsx bench/compute.ts --device "$@"
