#!/usr/bin/env bash
# Checks the offline bundle the way an offline GPU node uses it (README "An offline GPU node"):
#   1. `npm run bundle` writes the archive, within its 52 MiB limit, and its .sha256 matches;
#   2. it unpacks into an empty folder, and everything below runs from there with `node`, `npm`, `npx`
#      and `tsx` on PATH replaced by stubs that record the call and exit 1;
#   3. a coordinator started from this checkout runs 3 steps with the bundled worker as its only worker;
#      the same run with a checkout worker (--local-workers 1) ends with a byte-identical adapter;
#   4. the bundled GPU bench runs its row here and says "SOFTWARE DEVICE" (SwiftShader; needs chromium
#      and libvulkan1 as the Node WebGPU tests do; skipped with a note without them).
# Not part of `npm test` (xz takes about 2 minutes; test/integration/bundle*.test.ts check the unpacked
# folder in `npm test`). KEEP=1 keeps the temp folder.
# Usage: bash scripts/bundle-check.sh   (or npm run bundle:check)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tmp=$(mktemp -d "${TMPDIR:-/tmp}/loramesh-bundle-check.XXXXXX")
coordinator_pid=
cleanup() {
  if [ -n "$coordinator_pid" ] && kill -0 "$coordinator_pid" 2>/dev/null; then kill "$coordinator_pid"; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
fail() { echo "bundle-check: FAIL: $*" >&2; exit 1; }

# 1. The archive.
node scripts/bundle.mjs --out "$tmp/out" | tee "$tmp/bundle.log"
archive=$(ls "$tmp"/out/loramesh-*.tar.xz)
bytes=$(stat -c %s "$archive")
[ "$bytes" -le $((52 * 1024 * 1024)) ] || fail "$archive is $bytes bytes, over 52 MiB"
(cd "$tmp/out" && sha256sum -c "$(basename "$archive").sha256" >/dev/null) || fail 'the .sha256 does not match'
echo "archive: $(basename "$archive"), $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB), sha256 checked"

# 2. An empty folder, no Node or npm.
mkdir "$tmp/node-stubs" "$tmp/offline"
for tool in node npm npx tsx; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/stub-calls.log"\nexit 1\n' "$tool" "$tmp" >"$tmp/node-stubs/$tool"
  chmod +x "$tmp/node-stubs/$tool"
done
offline_env=(env -i "PATH=$tmp/node-stubs:/usr/bin:/bin" "HOME=$tmp/home" "LORAMESH_CACHE=$tmp/cache")
cd "$tmp/offline"
tar -xJf "$archive"
bundle=$(ls -d "$tmp"/offline/loramesh-*)
"${offline_env[@]}" "$bundle/loramesh-worker" --help | grep -q 'join a run as a worker' || fail 'loramesh-worker --help'
echo "unpacked into an empty folder: $(du -sh "$bundle" | cut -f1); loramesh-worker --help runs with node/npm stubbed"

# 3. A run with the bundled worker, and the same run with a checkout worker.
cd "$repo"
run() { # run <id> <local workers>
  node --import tsx coordinator/cli.ts train --steps 3 --global-batch 8 --micro-batch 4 --train-size 64 \
    --eval-every 1000 --seed 3 --token bundle-check --local-workers "$2" --out "$tmp/runs" --run-id "$1"
}
LORAMESH_CACHE=$tmp/coordinator-cache run bundled 0 >"$tmp/coordinator.log" 2>&1 &
coordinator_pid=$!
for _ in $(seq 1 600); do
  url=$(grep -o 'ws://[^ ]*/ws' "$tmp/coordinator.log" | head -n1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/coordinator.log"; fail 'the coordinator did not start'; }
(cd "$tmp/offline" && "${offline_env[@]}" "$bundle/loramesh-worker" "$url" --token bundle-check --name offline) \
  >"$tmp/worker.log" 2>&1 || { cat "$tmp/worker.log"; fail 'the bundled worker failed'; }
wait "$coordinator_pid" || { cat "$tmp/coordinator.log"; fail 'the coordinator failed'; }
coordinator_pid=
grep -q 'sha256 verified' "$tmp/worker.log" || fail 'the worker did not verify the base model'
echo "bundled worker: $(grep -o 'finished after [0-9]* micro-batches' "$tmp/worker.log"); $(tail -n1 "$tmp/coordinator.log" | cut -c1-60)…"
run checkout 1 >"$tmp/checkout.log" 2>&1 || { cat "$tmp/checkout.log"; fail 'the checkout run failed'; }
cmp "$tmp/runs/bundled/adapter_model.safetensors" "$tmp/runs/checkout/adapter_model.safetensors" ||
  fail 'the adapters differ'
echo "adapter: byte-identical to the checkout worker's ($(stat -c %s "$tmp/runs/bundled/adapter_model.safetensors") bytes, sha256 $(sha256sum "$tmp/runs/bundled/adapter_model.safetensors" | cut -c1-16)…)"

# 4. The GPU bench on this machine's software device.
if [ -f /usr/lib/chromium/vk_swiftshader_icd.json ] && ldconfig -p | grep -q 'libvulkan\.so\.1 '; then
  (cd "$tmp/offline" && "${offline_env[@]}" "$bundle/loramesh-bench-gpu" "$tmp/offline/gpu" --torch-device none) \
    >"$tmp/bench.log" 2>&1 || { cat "$tmp/bench.log"; fail 'loramesh-bench-gpu failed'; }
  grep -q '^SOFTWARE DEVICE: WebGPU runs on' "$tmp/bench.log" || fail 'the bench did not report the software device'
  grep -E '^SOFTWARE DEVICE|^  [0-9.]+ GFLOP/step' "$tmp/bench.log" | cut -c1-160
  grep -q '(software device)' "$tmp/offline/gpu/compute.device.md" || fail 'the row is not marked software device'
else
  echo 'GPU bench: skipped (no chromium SwiftShader or libvulkan1 here)'
fi

[ ! -e "$tmp/stub-calls.log" ] || { cat "$tmp/stub-calls.log"; fail 'something called node/npm from PATH'; }
echo "bundle-check: OK (no call to node, npm, npx or tsx from PATH)"
