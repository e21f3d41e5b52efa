#!/usr/bin/env bash
# Checks the npm package the way a volunteer uses it (README "A second machine joins"):
#   1. `npm pack` (prepack builds dist/ and build/), and the tarball holds what a worker and a
#      coordinator need, no tests, benchmarks, fixtures or runs, and no install script;
#   2. from an empty folder, `npx <tarball> --help` installs it and runs it without tsx;
#   3. a coordinator started from this repo runs 3 steps with one worker started from the empty folder
#      by npx: the worker downloads the base model and verifies its sha256; a second run, with the
#      coordinator started from the installed package, serves its pages and reuses the worker's cache.
# Not part of `npm test`: it installs the package's dependencies from the registry into a fresh npm
# cache (LORAMESH_PACK_CHECK_CACHE=DIR reuses one). KEEP=1 keeps the temp folder.
# Usage: bash scripts/pack-check.sh   (or npm run pack:check)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tmp=$(mktemp -d "${TMPDIR:-/tmp}/loramesh-pack-check.XXXXXX")
coordinator_pid=
cleanup() {
  if [ -n "$coordinator_pid" ] && kill -0 "$coordinator_pid" 2>/dev/null; then kill "$coordinator_pid"; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
fail() { echo "pack-check: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

export npm_config_cache=${LORAMESH_PACK_CHECK_CACHE:-$tmp/npm-cache}
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# 1. The tarball.
t=$(now)
npm pack --pack-destination "$tmp" >"$tmp/pack.log" 2>&1 || { cat "$tmp/pack.log"; fail 'npm pack failed'; }
tarball=$(ls "$tmp"/loramesh-*.tgz)
echo "npm pack: $(basename "$tarball"), $(stat -c %s "$tarball") bytes, $(since "$t")"
tar -tzf "$tarball" >"$tmp/files.txt"
echo "files: $(wc -l <"$tmp/files.txt"), unpacked $(tar -xzOf "$tarball" | wc -c) bytes"
for needed in package/package.json package/bin/loramesh.mjs package/dist/cli.js package/build/tfjs-gradients.cjs \
  package/build/web/join.js package/build/web/join.html package/build/web/index.html package/build/web/dashboard.js \
  package/models/demo-base/model.safetensors package/models/demo-base/config.json package/README.md; do
  grep -qxF "$needed" "$tmp/files.txt" || fail "$needed is missing from the tarball"
done
if grep -E '^package/(test|bench|runs|docs|scripts|coordinator|worker|shared|node_modules)/|fixture|\.ts$' "$tmp/files.txt"; then
  fail 'the tarball holds the files above, which no worker or coordinator needs'
fi
tar -xzOf "$tarball" package/package.json >"$tmp/package.json"
node -e '
  const pkg = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const hooks = ["preinstall", "install", "postinstall"].filter((s) => pkg.scripts?.[s]);
  if (hooks.length) throw new Error(`the packed package.json has install scripts: ${hooks.join(", ")}`);
  if (pkg.dependencies?.tsx) throw new Error("tsx is a runtime dependency of the packed package");
' "$tmp/package.json" || fail 'packed package.json'
echo "packed package.json: no install script, tsx not a dependency"

# 2. An empty folder, only Node and npm: install and run the package.
mkdir "$tmp/volunteer"
cd "$tmp/volunteer"
cp "$tarball" .
tgz=./$(basename "$tarball")
t=$(now)
npx --yes "$tgz" --help >"$tmp/help.log" 2>&1 || { cat "$tmp/help.log"; fail 'npx <tarball> --help'; }
grep -q 'worker \[options\] <url>' "$tmp/help.log" || { cat "$tmp/help.log"; fail '--help does not list the worker command'; }
echo "npx $tgz --help (installs the dependencies): $(since "$t")"
installed=$(dirname "$(dirname "$(npx --yes --package "$tgz" -c 'command -v loramesh')")")
[ -f "$installed/loramesh/dist/cli.js" ] || fail "no loramesh/dist/cli.js under $installed"
[ ! -e "$installed/tsx" ] || fail "tsx was installed with the package ($installed/tsx)"
[ ! -e "$installed/loramesh/coordinator" ] || fail 'the installed package holds the TypeScript source'
echo "installed under $installed ($(du -sm "$installed" | cut -f1) MB with dependencies), without tsx"

# 3. Runs: a worker from the empty folder joins a coordinator started from the repo (the base model is
# downloaded and verified), then one started from the installed package (the base model comes from
# the cache; the package's own paths serve the demo model, the browser pages and tfjs's wasm files).
token=pack-check-$RANDOM$RANDOM
train_flags=(train --local-workers 0 --min-workers 1 --steps 3 --global-batch 8 --micro-batch 4 --train-size 64
  --eval-every 1000 --checkpoint-every 0 --backend wasm --port 0 --token "$token" --out "$tmp/runs")
run() { # $1: label (names the logs), $2: folder, then the coordinator command
  local label=$1 dir=$2 log=$tmp/coordinator-$1.log url= t
  shift 2
  (cd "$dir" && exec "$@" "${train_flags[@]}") >"$log" 2>&1 &
  coordinator_pid=$!
  for _ in $(seq 600); do
    url=$(grep -o 'coordinator listening on ws://[^ ]*' "$log" | sed 's/coordinator listening on //' || true)
    [ -n "$url" ] && break
    kill -0 "$coordinator_pid" 2>/dev/null || { cat "$log"; fail "coordinator ($label) exited before listening"; }
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$log"; fail "coordinator ($label) did not say where it listens"; }
  local http=${url/ws:/http:}
  http=${http%/ws}
  for path in / /join /assets/join.js /assets/dashboard.js /wasm/tfjs-backend-wasm-simd.wasm; do
    curl -fsS -o /dev/null "$http$path" || fail "coordinator ($label) does not serve $path"
  done
  t=$(now)
  timeout 600 npx --yes "$tgz" worker "$url" --token "$token" --cache-dir "$tmp/model-cache" --backend wasm \
    --name volunteer >"$tmp/worker-$label.log" 2>&1 || { cat "$tmp/worker-$label.log"; fail "worker ($label) failed"; }
  wait "$coordinator_pid" || { cat "$log"; fail "coordinator ($label) failed"; }
  coordinator_pid=
  grep -q '^done: 3 steps' "$log" || { cat "$log"; fail "coordinator ($label) did not finish 3 steps"; }
  echo "run $label: served the pages and wasm files; the worker joined and finished in $(since "$t")" \
    "($(grep -o 'finished after [0-9]* micro-batches' "$tmp/worker-$label.log"))"
}
run repo-coordinator "$repo" node --import tsx coordinator/cli.ts
grep -q 'sha256 verified' "$tmp/worker-repo-coordinator.log" ||
  { cat "$tmp/worker-repo-coordinator.log"; fail 'the first run downloaded no verified base model'; }
grep 'sha256 verified' "$tmp/worker-repo-coordinator.log" | sed 's/^/  /'
# The installed bin itself rather than npx, so that $coordinator_pid is the coordinator's own process.
run package-coordinator "$tmp/volunteer" node "$installed/loramesh/bin/loramesh.mjs"
if grep -q 'downloaded' "$tmp/worker-package-coordinator.log"; then
  cat "$tmp/worker-package-coordinator.log"; fail 'the second run downloaded the base model again'
fi
echo "  second run: no download, the base model came from the cache"
echo 'pack-check: OK'
