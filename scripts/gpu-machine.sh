#!/usr/bin/env bash
# Everything a borrowed GPU machine is for, in one run of at most about 5 minutes: unpack the offline
# bundle (`npm run bundle`; no Node or npm needed there); run the transformers + PEFT interoperability
# check (scripts/interop/peft_check.py) on the Llama, Qwen2, GPT-2 and Mistral fixtures and on adapters
# the bundle trains there (the demo, and the demo on an nf4 base: the QLoRA note); then the GPU bench
# rows (WebGPU through Dawn next to the machine's PyTorch CUDA: the demo model, GPT-2 small's and
# Qwen2.5-0.5B's shapes, each on a float32 and an nf4 base; Qwen's weights are made on the machine).
# Results, logs and a summary go to one folder.
#
#   scripts/gpu-machine.sh BUNDLE.tar.xz OUTDIR     (or an unpacked bundle's folder instead of the archive)
#
# Run from a checkout (the fixtures and scripts/interop/ are read from it). Needs: tar, xz, a Vulkan driver
# for the GPU, and a python3 with torch (+ transformers and peft for the check). Environment:
#   PYTHON=…           the python (default: the first python3 on PATH whose torch sees CUDA, else python3)
#   INTEROP_ENGINE=…   transformers (default) | reference (the project's float64 references: how this
#                      script is tried where transformers is missing)
#   BENCH_MODELS=…, BENCH_FORMATS=…, BENCH_ARGS=…   passed to loramesh-bench-gpu (defaults below)
#   INTEROP_LIMIT_S=120, BENCH_LIMIT_S=…           time limits: the check runs first (its verdicts are the surer
#                                                   result), the bench gets what is left of 295 s (at least 60)
# Exit status: 0 when the bench wrote rows and every interoperability case ended as expected.
#
# With the project's device tool (64 MiB travel with the working tree: the archive, ~32 MiB, plus the
# checkout, ~10 MiB): `npm run bundle` here, then run
#   bash scripts/gpu-machine.sh build/bundle/loramesh-0.1.0-linux-x64.tar.xz "$OUT/gpu"
# with carry = the .tar.xz and its .sha256 and a timeout of about 330 s; OUT/gpu comes back. Its
# bench/compute.device.md is the compute-device-table section of bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: scripts/gpu-machine.sh BUNDLE.tar.xz OUTDIR" >&2; exit 2; }
ARCHIVE=$(realpath "$1")
mkdir -p "$2" && OUT=$(realpath "$2")
[ -e "$ARCHIVE" ] || { echo "gpu-machine: no bundle at $1 (npm run bundle writes build/bundle/*.tar.xz)" >&2; exit 2; }
exec > >(tee "$OUT/run.log") 2>&1
START=$SECONDS
stamp() { echo "[$((SECONDS - START)) s] $*"; }
STATUS=0

# --- the machine --------------------------------------------------------------------------------------
if [ -z "${PYTHON:-}" ]; then
  for py in python3 /usr/bin/python3 python; do
    if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then PYTHON=$(command -v "$py"); break; fi
  done
  PYTHON=${PYTHON:-python3}
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo) RAM"
  echo "glibc: $(getconf GNU_LIBC_VERSION 2>/dev/null || echo unknown)"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
  echo "python: $PYTHON"
  "$PYTHON" - <<'EOF' 2>&1
import importlib
for name in ("torch", "transformers", "peft"):
    try:
        m = importlib.import_module(name)
        extra = f", CUDA {m.version.cuda}, {m.cuda.get_device_name(0)}" if name == "torch" and m.cuda.is_available() else ""
        print(f"{name}: {m.__version__}{extra}")
    except Exception as e:  # noqa: BLE001 - report whatever is missing
        print(f"{name}: missing ({e.__class__.__name__}: {e})")
EOF
  if [ -f "$ARCHIVE" ]; then echo "archive: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)), sha256 $(sha256sum "$ARCHIVE" | cut -d' ' -f1)"; else echo "bundle folder: $ARCHIVE"; fi
} | tee "$OUT/environment.txt"
if [ -f "$ARCHIVE.sha256" ]; then
  (cd "$(dirname "$ARCHIVE")" && sha256sum -c "$(basename "$ARCHIVE").sha256") || { echo "gpu-machine: the archive does not match its .sha256" >&2; exit 2; }
fi

# --- the bundle ---------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/loramesh-gpu-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -d "$ARCHIVE" ]; then
  B=$ARCHIVE
else
  stamp "unpacking the bundle"
  tar -xJf "$ARCHIVE" -C "$WORK" || { echo "gpu-machine: tar -xJf failed" >&2; exit 2; }
  B=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'loramesh-*' | head -n1)
fi
[ -x "$B/loramesh-bench-gpu" ] || { echo "gpu-machine: $ARCHIVE holds no loramesh-bench-gpu" >&2; exit 2; }
export LORAMESH_CACHE="$WORK/cache"
stamp "bundle at $B ($(du -sh "$B" | cut -f1) unpacked)"

# --- interoperability ---------------------------------------------------------------------------------
ENGINE=${INTEROP_ENGINE:-transformers}
stamp "interoperability check (engine $ENGINE)"
mkdir -p "$OUT/interop"
interop() {
  local lm=("$B/loramesh") verdicts="$OUT/interop/verdicts.txt" name model adapter greedy prompts args
  : >"$verdicts"
  # case <name> <model> <adapter> <greedy tokens> <prompt ids>...
  case_() {
    name=$1 model=$2 adapter=$3 greedy=$4
    shift 4
    args=()
    for prompts in "$@"; do args+=(--prompt-ids "$prompts"); done
    mkdir -p "$OUT/interop/$name"
    if ! "${lm[@]}" logits --model "$model" --adapter "$adapter" "${args[@]}" --greedy-tokens "$greedy" \
      --out "$OUT/interop/$name/ref.safetensors" >"$OUT/interop/$name/loramesh.log" 2>&1 ||
      ! "${lm[@]}" merge --model "$model" --adapter "$adapter" --out "$OUT/interop/$name/merged" \
        >>"$OUT/interop/$name/loramesh.log" 2>&1; then
      echo "CASE $name: loramesh logits/merge failed: $(tail -n1 "$OUT/interop/$name/loramesh.log")" | tee -a "$verdicts"
      return 1
    fi
    # stderr too (an unusable input exits 2 with its reason there); the case's status is peft_check's
    "$PYTHON" scripts/interop/peft_check.py --engine "$ENGINE" --name "$name" --model "$model" --adapter "$adapter" \
      --reference "$OUT/interop/$name/ref.safetensors" --merged "$OUT/interop/$name/merged" 2>&1 | tee -a "$verdicts"
    return "${PIPESTATUS[0]}"
  }
  local failed=0 m
  for m in llama-tied-gqa qwen2 gpt2 mistral; do
    case_ "$m" "test/fixtures/hf/$m/f32" "test/fixtures/interop/$m/adapter" 32 \
      1,5,9,13,17,21,25,29 3,60,2,7 40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55 || failed=1
  done
  # adapters the bundle trains here: the demo task, and the same on an nf4 base (QLoRA: NOTE, not FAIL)
  "${lm[@]}" train --in-process --steps 30 --train-size 512 --global-batch 16 --micro-batch 16 --lr 3e-3 \
    --eval-every 100 --out "$OUT/interop/runs" --run-id demo >"$OUT/interop/train-demo.log" 2>&1 || failed=1
  "${lm[@]}" train --in-process --steps 2 --train-size 64 --global-batch 8 --micro-batch 8 --base-format nf4 \
    --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --eval-every 100 \
    --out "$OUT/interop/runs" --run-id demo-nf4 >"$OUT/interop/train-demo-nf4.log" 2>&1 || failed=1
  for m in demo demo-nf4; do
    case_ "$m" "$B/models/demo-base" "$OUT/interop/runs/$m" 23 1,50,55,10,7,14,14,17,56 1,31,55,5,3,22,56 || failed=1
  done
  return $failed
}
timeout --kill-after=5 "${INTEROP_LIMIT_S:-120}" bash -o pipefail -c "$(declare -f interop); B='$B' OUT='$OUT' PYTHON='$PYTHON' ENGINE='$ENGINE' interop"
interop_status=$?
[ $interop_status -eq 0 ] || { echo "gpu-machine: the interoperability check ended with status $interop_status (124: its time limit)"; STATUS=1; }


# --- the GPU bench ------------------------------------------------------------------------------------
# whatever is left of the 5 minutes (at least a minute): rows are kept as they finish
BENCH_LIMIT_S=${BENCH_LIMIT_S:-$((295 - (SECONDS - START)))}
[ "$BENCH_LIMIT_S" -ge 60 ] || BENCH_LIMIT_S=60
stamp "GPU bench (limit $BENCH_LIMIT_S s)"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
timeout --kill-after=5 "$BENCH_LIMIT_S" "$B/loramesh-bench-gpu" "$OUT/bench" --python "$PYTHON" \
  --models "${BENCH_MODELS:-demo,gpt2-small,qwen2.5-0.5b}" --formats "${BENCH_FORMATS:-f32,nf4}" \
  --row-timeout-s 100 ${BENCH_ARGS:-}
bench_status=$?
[ $bench_status -eq 0 ] || { echo "gpu-machine: the bench ended with status $bench_status (124: its time limit)"; STATUS=1; }

# --- summary ------------------------------------------------------------------------------------------
{
  echo "# GPU machine run, $(date -u +%FT%TZ), $((SECONDS - START)) s"
  echo
  echo '```'
  cat "$OUT/environment.txt"
  echo '```'
  echo
  [ -f "$OUT/bench/compute.device.md" ] && sed -n '/compute-device-table:start/,/compute-device-table:end/p' "$OUT/bench/compute.device.md" | sed '1d;$d'
  echo
  echo "## Interoperability (engine $ENGINE)"
  echo
  echo '```'
  cat "$OUT/interop/verdicts.txt" 2>/dev/null
  echo '```'
  echo
  echo "bench status $bench_status, interop status $interop_status"
} >"$OUT/summary.md"
stamp "done: $OUT/summary.md (status $STATUS)"
exit $STATUS
