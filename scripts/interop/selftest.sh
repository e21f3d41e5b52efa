#!/usr/bin/env bash
# Self-test of scripts/interop/peft_check.py on this machine, where transformers and peft are missing:
# the check runs with --engine reference (the project's float64 references in scripts/reference/ load the
# model folder and the PEFT files) on real files that loramesh wrote. Run by hand, never by `npm test`:
#
#   scripts/interop/selftest.sh [--demo-run runs/<id>]     (about a minute; PYTHON=/usr/bin/python3 by default)
#
# Cases, each expecting peft_check's exit status:
#   llama-tied-gqa, qwen2, gpt2, mistral   the fixture's golden LoRA as a PEFT adapter (golden-adapter.ts),
#                                          `loramesh logits` + `loramesh merge` on its f32 folder  -> 0
#   demo                                   an adapter trained on the demo model (the --demo-run folder of
#                                          `npm start`, else 30 in-process steps of the demo task)  -> 0
#   demo-nf4                               2 steps on an nf4 base: passes and prints NOTE demo-nf4.qlora -> 0
#   qwen2-bad-adapter                      loramesh's files from the golden adapter, the engine given one
#                                          with lora_B + 1e-2: logits, greedy and merge FAIL           -> 1
#   mistral-bad-merge                      one merged tensor scaled by 1 + 1e-5: merge_rel FAILs       -> 1
# Every output line must match the fixed format (LINE_FORMAT below). Exit status 0 iff every case ends as expected.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-/usr/bin/python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/loramesh-interop-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEMO_RUN=""
if [ "${1:-}" = "--demo-run" ]; then DEMO_RUN=${2:?--demo-run needs a run folder}; fi

loramesh() { node --import tsx coordinator/cli.ts "$@" 2>>"$WORK/stderr.log" >>"$WORK/stdout.log"; }
tsx_script() { node --import tsx "$@" >>"$WORK/stdout.log" 2>>"$WORK/stderr.log"; }
SUMMARY=()
BROKEN=0

# The fixed output format: every line is one of these, and the four CHECK lines come in this order.
LINE_FORMAT='^(ENGINE (transformers|reference) torch=[^ ]+ transformers=[^ ]+ peft=[^ ]+ device=[^ ]+ reference=[^ ]+ loramesh=[^ ]+ base=[^ ]+|CHECK [^ ]+\.(logits_max_abs|logits_rel|greedy|merge_rel): (PASS|FAIL) [^ ]+ [^ ]+|INFO [^ ]+\.[a-z_]+: .+|NOTE [^ ]+\.qlora: .+)$'
CHECK_ORDER='logits_max_abs logits_rel greedy merge_rel'

# check <name> <wanted exit> <model> <adapter the engine loads> <reference> <merged>
check() {
  local name=$1 wanted=$2 out status fails order
  out=$("$PY" scripts/interop/peft_check.py --engine reference --name "$name" --model "$3" --adapter "$4" \
    --reference "$5" --merged "$6" 2>&1)
  status=$?
  echo "$out"
  fails=$(grep -c '^CHECK .*: FAIL ' <<<"$out")
  order=$(sed -n 's/^CHECK [^ ]*\.\([a-z_]*\): .*/\1/p' <<<"$out" | tr '\n' ' ')
  if grep -qvE "$LINE_FORMAT" <<<"$out" || [ "$order" != "$CHECK_ORDER " ]; then
    SUMMARY+=("BROKEN  $name: output off the fixed format (CHECK order: $order)")
    BROKEN=1
  elif [ "$status" -eq "$wanted" ] && { [ "$wanted" -eq 0 ] || [ "$fails" -gt 0 ]; }; then
    SUMMARY+=("ok      $name: exit $status (wanted $wanted), $fails FAIL line(s)")
  else
    SUMMARY+=("BROKEN  $name: exit $status (wanted $wanted), $fails FAIL line(s)")
    BROKEN=1
  fi
}

# prepare <name> <model> <adapter> <greedy tokens> <prompt ids>...: writes $WORK/<name>/{ref.safetensors,merged}
prepare() {
  local name=$1 model=$2 adapter=$3 greedy=$4
  shift 4
  local prompts=()
  for p in "$@"; do prompts+=(--prompt-ids "$p"); done
  loramesh logits --model "$model" --adapter "$adapter" "${prompts[@]}" --greedy-tokens "$greedy" \
    --out "$WORK/$name/ref.safetensors" || { echo "loramesh logits failed for $name"; tail -3 "$WORK/stderr.log"; exit 2; }
  loramesh merge --model "$model" --adapter "$adapter" --out "$WORK/$name/merged" ||
    { echo "loramesh merge failed for $name"; tail -3 "$WORK/stderr.log"; exit 2; }
}

FIXTURE_PROMPTS=(1,5,9,13,17,21,25,29 3,60,2,7 40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55)
for m in llama-tied-gqa qwen2 gpt2 mistral; do
  mkdir -p "$WORK/$m"
  tsx_script scripts/interop/golden-adapter.ts "test/fixtures/hf/$m" "$WORK/$m/adapter"
  prepare "$m" "test/fixtures/hf/$m/f32" "$WORK/$m/adapter" 32 "${FIXTURE_PROMPTS[@]}"
  check "$m" 0 "test/fixtures/hf/$m/f32" "$WORK/$m/adapter" "$WORK/$m/ref.safetensors" "$WORK/$m/merged"
done

# The demo task's prompts "<bos>V:hello=" and "<bos>C:cat=" (char vocabulary of models/demo-base, context 32).
DEMO_PROMPTS=(1,50,55,10,7,14,14,17,56 1,31,55,5,3,22,56)
mkdir -p "$WORK/demo"
if [ -z "$DEMO_RUN" ]; then
  loramesh train --in-process --steps 30 --train-size 512 --global-batch 16 --micro-batch 16 --lr 3e-3 \
    --eval-every 100 --out "$WORK/runs" --run-id demo
  DEMO_RUN="$WORK/runs/demo"
fi
prepare demo models/demo-base "$DEMO_RUN" 23 "${DEMO_PROMPTS[@]}"
check demo 0 models/demo-base "$DEMO_RUN" "$WORK/demo/ref.safetensors" "$WORK/demo/merged"

mkdir -p "$WORK/demo-nf4"
loramesh train --in-process --steps 2 --train-size 64 --global-batch 8 --micro-batch 8 --base-format nf4 \
  --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --eval-every 100 --out "$WORK/runs" --run-id nf4
prepare demo-nf4 models/demo-base "$WORK/runs/nf4" 23 "${DEMO_PROMPTS[@]}"
check demo-nf4 0 models/demo-base "$WORK/runs/nf4" "$WORK/demo-nf4/ref.safetensors" "$WORK/demo-nf4/merged"

# Negative runs: the check must see a wrong adapter and a wrong merged file.
tsx_script scripts/interop/golden-adapter.ts test/fixtures/hf/qwen2 "$WORK/qwen2/adapter-bad" --perturb 1e-2
check qwen2-bad-adapter 1 test/fixtures/hf/qwen2/f32 "$WORK/qwen2/adapter-bad" "$WORK/qwen2/ref.safetensors" \
  "$WORK/qwen2/merged"
cp -r "$WORK/mistral/merged" "$WORK/mistral/merged-bad"
"$PY" - "$WORK/mistral/merged-bad/model.safetensors" <<'EOF'
import os, sys
sys.path.insert(0, os.path.join("scripts", "reference"))
from llama_torch import read_safetensors, write_safetensors
tensors = read_safetensors(sys.argv[1])
tensors["model.layers.1.self_attn.v_proj.weight"] *= 1 + 1e-5
write_safetensors(sys.argv[1], tensors, {"format": "pt"})
EOF
check mistral-bad-merge 1 test/fixtures/hf/mistral/f32 "$WORK/mistral/adapter" "$WORK/mistral/ref.safetensors" \
  "$WORK/mistral/merged-bad"

echo
echo "summary (peft_check.py --engine reference, $SECONDS s):"
printf '  %s\n' "${SUMMARY[@]}"
exit "$BROKEN"
