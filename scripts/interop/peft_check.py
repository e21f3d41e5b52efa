"""Interoperability check: does transformers + PEFT compute what loramesh computes for an adapter it wrote?

Run it wherever torch + transformers + peft are installed (never part of `npm test`):

  npx tsx coordinator/cli.ts logits --model MODEL --adapter ADAPTER --prompt-ids 1,5,9 --prompt-ids 3,4 \\
      --out ref.safetensors
  npx tsx coordinator/cli.ts merge --model MODEL --adapter ADAPTER --out merged/
  python3 scripts/interop/peft_check.py --model MODEL --adapter ADAPTER --reference ref.safetensors \\
      --merged merged/ [--name NAME] [--engine transformers|reference] [--device cpu]

Needs: Python 3.9+, torch; engine `transformers` (default) also transformers and peft. Run and passing on all six
cases of scripts/gpu-machine.sh (four fixtures, demo, demo-nf4) with transformers 5.18.0 + peft 0.21.0 + torch 2.13
(CPU). 4.x was read, not run: 4.57's generate, masking_utils and dtype handling match what this script relies on;
before 4.53 (no masking_utils) Mistral's sliding window and before ~4.45 Qwen2's rope_scaling may differ.
Engine `reference` needs only torch: the project's independent float64 references in scripts/reference/
(llama_torch.py: Llama, Qwen2, Mistral; gpt2_torch.py: GPT-2) load the same model folder and PEFT files
and stand in for transformers + PEFT (how the check itself is tested where transformers is missing:
scripts/interop/selftest.sh). The safetensors package is not needed (scripts/reference reads the files).

Engine transformers: AutoModelForCausalLM.from_pretrained(MODEL, float32, eager attention) wrapped by
PeftModel.from_pretrained(model, ADAPTER); logits of each prompt; model.generate of the same number of greedy
tokens with EOS disabled (do_sample=False, eos_token_id=None, also in the model's generation_config, from which
generate fills every unset field); then merge_and_unload() and its parameters. HF_HUB_OFFLINE=1 unless set.
Loading is checked too: transformers' loading info (missing, unexpected, mismatched keys), PEFT's warnings, and
every LoRA layer PEFT built against the adapter file (same modules, exactly the file's A and B, same scaling).
Engine reference: W + scaling * B A merged in float64 (Conv1D: (B A)^T), greedy by full recompute per token.

Both engines feed the same comparison. The engine is the reference, loramesh's files are compared with it:
  logits_max_abs  max |loramesh - engine| over every prompt's logits                          <= 1e-3
  logits_rel      max over prompts of ||loramesh - engine|| / ||engine|| (Frobenius)         <= 1e-5
  greedy          tokens that differ, over all prompts (position by position, + length gap)   == 0
  merge_rel       max over tensors of ||merged file - engine merge|| / ||engine merge||       <= 1e-6
                  (every parameter of the merged model; tied ones once; names matched with or without
                  GPT-2's "transformer." prefix). Meant for F32 checkpoints: `loramesh merge` keeps a BF16
                  base's dtype, and BF16 rounding alone exceeds 1e-6.

Output (fixed format, one line each; INFO lines add detail to a FAIL or say what did not load):
  ENGINE <engine> torch=<v> transformers=<v|-> peft=<v|-> device=<d> reference=<file> loramesh=<v> base=<fmt>
  CHECK <name>.<check>: PASS|FAIL <value> <tolerance>
  INFO <name>.base_load|adapter_load: ...  engine transformers: the model or adapter did not load as written
                              (after the CHECK lines; the exit status is then 1 whatever the CHECKs say)
  NOTE <name>.qlora: ...      when loramesh's metadata says the adapter was trained on a compact base
                              (int8, nf4, f16, bf16): the gap to the float base is stated, never a FAIL.
Exit status: 0 iff every CHECK passes and all loaded as written, 1 otherwise, 2 for unusable input (message on
stderr).
"""
import argparse
import json
import math
import os
import re
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from llama_torch import read_safetensors  # noqa: E402

TOLERANCES = {"logits_max_abs": 1e-3, "logits_rel": 1e-5, "greedy": 0, "merge_rel": 1e-6}
PEFT_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
GPT2_PREFIX = "transformer."


class InputError(Exception):
    """An input file or folder that cannot be used (exit 2)."""


# ---------------------------------------------------------------------------------------------- files

def read_metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: {err}") from err


def read_model_tensors(folder):
    """Every tensor of a HF model folder (model.safetensors or a sharded index), as float64."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise InputError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(folder, name)))
    return {k: v.to(torch.float64) for k, v in tensors.items()}


def read_reference(path):
    """loramesh logits' file: per prompt k input_ids.k (1, T), logits.k ([1,] T, V), greedy.k (N,),
    optional logits_compact.k; returns (prompts, metadata)."""
    if not os.path.exists(path):
        raise InputError(f"--reference {path}: no such file (write it with `loramesh logits`)")
    tensors = read_safetensors(path)
    meta = read_metadata(path)
    count = len([k for k in tensors if k.startswith("input_ids.")])
    if count == 0:
        raise InputError(f"--reference {path}: no input_ids.0; expected the output of `loramesh logits`")
    prompts = []
    for k in range(count):
        missing = [f"{n}.{k}" for n in ("input_ids", "logits", "greedy") if f"{n}.{k}" not in tensors]
        if missing:
            raise InputError(f"--reference {path}: prompt {k} lacks {', '.join(missing)}")
        ids = tensors[f"input_ids.{k}"].reshape(-1).long()
        logits = tensors[f"logits.{k}"].to(torch.float64)
        logits = logits.reshape(logits.shape[-2], logits.shape[-1])
        if logits.shape[0] != ids.numel():
            raise InputError(f"--reference {path}: logits.{k} has {logits.shape[0]} rows for {ids.numel()} tokens")
        compact = tensors.get(f"logits_compact.{k}")
        prompts.append({"ids": ids, "logits": logits, "greedy": tensors[f"greedy.{k}"].reshape(-1).tolist(),
                        "logits_compact": None if compact is None else compact.to(torch.float64).reshape(logits.shape)})
    return prompts, meta


def read_peft_adapter(folder):
    """adapter_config.json + adapter_model.safetensors -> (scaling, {module path: (A (r, in), B (out, r))})."""
    config = read_json(os.path.join(folder, "adapter_config.json"))
    if config.get("peft_type") != "LORA":
        raise InputError(f"{folder}/adapter_config.json: peft_type {config.get('peft_type')!r}, expected 'LORA'")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    halves = {}
    for key, t in read_safetensors(os.path.join(folder, "adapter_model.safetensors")).items():
        match = PEFT_KEY.match(key)
        if not match:
            raise InputError(f"{folder}/adapter_model.safetensors: key {key!r} is not a PEFT LoRA key")
        halves.setdefault(match.group(1), {})[match.group(2)] = t.to(torch.float64)
    for path, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise InputError(f"{folder}: module {path} has only lora_{''.join(ab)}")
    return scaling, {path: (ab["A"], ab["B"]) for path, ab in halves.items()}


# -------------------------------------------------------------------------------------------- engines

class ReferenceEngine:
    """The project's float64 references in place of transformers + PEFT."""

    def __init__(self, model_dir, adapter_dir):
        from gpt2_torch import GPT2Lora, merge_conv1d
        from llama_torch import LlamaLora

        self.versions = {"torch": torch.__version__, "transformers": "-", "peft": "-"}
        self.config = read_json(os.path.join(model_dir, "config.json"))
        self.gpt2 = self.config.get("model_type") == "gpt2"
        self.weights = read_model_tensors(model_dir)
        self.scaling, self.lora = read_peft_adapter(adapter_dir)
        self.merge_conv1d = merge_conv1d
        Model = GPT2Lora if self.gpt2 else LlamaLora
        self.model = Model(self.config, self.weights, self.lora, self.scaling)
        for path in self.lora:
            if self.stored_name(path) is None:
                raise InputError(f"--adapter {adapter_dir}: module {path} is not in the model")

    def stored_name(self, module_path):
        """The model file's name of a module's weight (GPT-2 files may lack the "transformer." prefix)."""
        for name in (module_path + ".weight", module_path.removeprefix(GPT2_PREFIX) + ".weight"):
            if name in self.weights:
                return name
        return None

    def logits(self, ids):
        with torch.no_grad():
            return self.model.forward(ids.reshape(1, -1))[0]

    def greedy(self, ids, n):
        seq = ids.tolist()
        for _ in range(n):  # full recompute per token: slow but independent of any cache
            seq.append(int(self.logits(torch.tensor(seq)).argmax(-1)[-1]))
        return seq[ids.numel():]

    def merged(self):
        out = dict(self.weights)
        for path, (a, b) in self.lora.items():
            name = self.stored_name(path)
            w = self.weights[name]
            out[name] = self.merge_conv1d(w, a, b, self.scaling) if self.gpt2 else w + self.scaling * (b @ a)
        return out


class TransformersEngine:
    """transformers' AutoModelForCausalLM + peft's PeftModel, float32."""

    def __init__(self, model_dir, adapter_dir, device):
        # Everything is local: never let huggingface_hub try the network (an offline machine would wait on it).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import warnings

        import peft
        import transformers
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        torch.set_float32_matmul_precision("highest")  # no TF32 on a GPU: the tolerances are float32's
        if hasattr(transformers.utils.logging, "disable_progress_bar"):
            transformers.utils.logging.disable_progress_bar()
        self.versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__}
        # transformers 5 renamed torch_dtype to dtype (4.56+ take both; 5.x still takes torch_dtype, with a warning).
        major = int(re.match(r"\d+", transformers.__version__).group())
        dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
        base, info = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                          output_loading_info=True, **dtype)
        # What did not load as written; any entry is reported after the CHECK lines and fails the run.
        self.problems = [f"base_load: transformers reported {k} {sorted(map(str, info[k]))}"
                         for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs") if info.get(k)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, adapter_dir)
        for w in caught:
            print(f"peft_check: warning while PEFT loaded the adapter: {w.message}", file=sys.stderr)
            if "adapter keys" in str(w.message):  # peft: "Found missing adapter keys while loading the checkpoint"
                self.problems.append(f"adapter_load: peft warned: {w.message}")
        self.problems += self.loaded_adapter_problems(model, adapter_dir)
        self.model = model.to(device).eval()
        self.device = device

    @staticmethod
    def loaded_adapter_problems(model, adapter_dir):
        """PEFT's LoRA layers against the files: every module of the file has a layer holding exactly its A and B
        and the file's scaling, and no LoRA layer lacks a module in the file (it would keep its initial weights).
        Covers what peft reports as missing or unexpected keys, whatever the peft version says."""
        scaling, lora = read_peft_adapter(adapter_dir)
        layers = {}
        for name, module in model.named_modules():
            halves = getattr(module, "lora_A", None)
            if isinstance(halves, torch.nn.ModuleDict) and "default" in halves:
                layers[name.removeprefix("base_model.model.")] = module
        problems = []
        if sorted(layers) != sorted(lora):
            unloaded = sorted(set(lora) - set(layers))
            untouched = sorted(set(layers) - set(lora))
            problems.append(f"adapter_load: modules of the file without a PEFT LoRA layer {unloaded[:4]} "
                            f"({len(unloaded)}); PEFT LoRA layers without weights in the file {untouched[:4]} "
                            f"({len(untouched)})")
        for path in sorted(set(layers) & set(lora)):
            layer, (a, b) = layers[path], lora[path]
            for side, want, got in (("A", a, layer.lora_A["default"].weight), ("B", b, layer.lora_B["default"].weight)):
                got = got.detach().to("cpu", torch.float64)
                if got.shape != want.shape or not torch.equal(got, want):
                    problems.append(f"adapter_load: {path}.lora_{side} holds other values than the file "
                                    f"(shape {tuple(got.shape)} vs {tuple(want.shape)})")
            theirs = float(layer.scaling["default"])
            if abs(theirs - scaling) > 1e-12 * max(1.0, abs(scaling)):
                problems.append(f"adapter_load: {path} scaling {theirs} in PEFT, {scaling} from adapter_config.json")
        return problems

    def logits(self, ids):
        ids = ids.reshape(1, -1).to(self.device)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return out.logits[0].to("cpu", torch.float64)

    def greedy(self, ids, n):
        import copy

        # generate fills every field left None in the config it is given from the model's own generation_config
        # (transformers 5; 4.50+ likewise for fields at their global default), which would bring the checkpoint's
        # EOS back and stop early: EOS is removed from the model's generation_config too.
        own = self.model.get_base_model().generation_config
        own.eos_token_id = None
        own.forced_eos_token_id = None
        config = copy.deepcopy(own)
        config.eos_token_id = None  # exactly n tokens, as loramesh logits writes them
        config.do_sample, config.max_new_tokens, config.min_new_tokens = False, n, None
        config.num_beams, config.temperature, config.top_k, config.top_p = 1, None, None, None
        ids = ids.reshape(1, -1).to(self.device)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        # a decoder-only model's generate returns the prompt, then the new tokens
        if not torch.equal(out[0, :ids.shape[1]], ids[0]):
            raise InputError("model.generate did not return the prompt ahead of the new tokens")
        return out[0, ids.shape[1]:].tolist()

    def merged(self):
        merged = self.model.merge_and_unload()
        # named_parameters lists a tied weight once (under its first name, e.g. the embedding).
        return {name: p.detach().to("cpu", torch.float64) for name, p in merged.named_parameters()}


# --------------------------------------------------------------------------------------- comparisons

def compare_logits(prompts, engine):
    """(max abs, max relative, differing greedy tokens) of loramesh's file against the engine."""
    max_abs, max_rel, differing = 0.0, 0.0, 0
    for p in prompts:
        ref = engine.logits(p["ids"])
        if ref.shape != p["logits"].shape:
            raise InputError(f"logits shape {tuple(p['logits'].shape)} vs the engine's {tuple(ref.shape)}")
        delta = p["logits"] - ref
        max_abs = max(max_abs, delta.abs().max().item())
        max_rel = max(max_rel, (delta.norm() / ref.norm()).item())
        theirs = engine.greedy(p["ids"], len(p["greedy"]))
        differing += sum(x != y for x, y in zip(p["greedy"], theirs)) + abs(len(theirs) - len(p["greedy"]))
    return max_abs, max_rel, differing


def match_name(name, candidates):
    for n in (name, GPT2_PREFIX + name, name.removeprefix(GPT2_PREFIX)):
        if n in candidates:
            return n
    return None


def compare_merged(file_tensors, engine_tensors):
    """(max over tensors of ||file - engine|| / ||engine||, the worst tensor's name). A parameter on
    either side without a partner counts as infinitely far."""
    worst, worst_name = 0.0, ""
    matched = set()
    for name, t in sorted(file_tensors.items()):
        other = match_name(name, engine_tensors)
        if other is None or engine_tensors[other].shape != t.shape:
            return math.inf, f"{name} (no parameter of that name and shape in the engine's merged model)"
        matched.add(other)
        ref = engine_tensors[other]
        rel = ((t - ref).norm() / ref.norm()).item() if ref.norm() > 0 else (t - ref).norm().item()
        if rel > worst or worst_name == "":
            worst, worst_name = rel, name
    missing = sorted(set(engine_tensors) - matched)
    if missing:
        return math.inf, f"{missing[0]} (in the engine's merged model, not in the merged file)"
    return worst, worst_name


# ------------------------------------------------------------------------------------------- report

def verdict(name, check, value, info=None):
    tolerance = TOLERANCES[check]
    ok = value <= tolerance
    shown = str(value) if check == "greedy" else f"{value:.3e}"
    print(f"CHECK {name}.{check}: {'PASS' if ok else 'FAIL'} {shown} {tolerance if check == 'greedy' else f'{tolerance:.0e}'}")
    if not ok and info:
        print(f"INFO {name}.{check}: {info}")
    return ok


def qlora_note(name, prompts, meta):
    """The adapter saw a compact base; PEFT (without bitsandbytes) loads the float checkpoint."""
    fmt = meta.get("base_format", "f32")
    if fmt in ("", "f32"):
        return
    gaps = [(p["logits_compact"] - p["logits"]) for p in prompts if p["logits_compact"] is not None]
    if gaps:
        gap_abs = max(g.abs().max().item() for g in gaps)
        gap_rel = max((g.norm() / p["logits"].norm()).item() for g, p in zip(gaps, prompts))
        measured = f"loramesh's logits on the {fmt} base differ from those on the float base by max abs " \
                   f"{gap_abs:.3e}, relative {gap_rel:.3e}"
    else:
        measured = "the reference file has no logits_compact.k, so the gap was not measured"
    print(f"NOTE {name}.qlora: the adapter was trained on a compact {fmt} base "
          f"({meta.get('base_format_source', '?')}); PEFT without bitsandbytes loads the float checkpoint, so "
          f"every CHECK above compares on the float base; {measured} (expected, not a failure)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the base model folder (HF layout)")
    parser.add_argument("--adapter", required=True, help="the PEFT adapter folder loramesh wrote")
    parser.add_argument("--reference", required=True, help="the file `loramesh logits` wrote")
    parser.add_argument("--merged", required=True, help="the folder `loramesh merge` wrote")
    parser.add_argument("--name", help="label of the verdict lines (default: the adapter folder's name)")
    parser.add_argument("--engine", choices=["transformers", "reference"], default="transformers")
    parser.add_argument("--device", default="cpu", help="torch device of engine transformers (default cpu)")
    args = parser.parse_args(argv)
    name = args.name or os.path.basename(os.path.normpath(args.adapter))
    try:
        prompts, meta = read_reference(args.reference)
        merged_file = read_model_tensors(args.merged)
        if args.engine == "reference":
            engine = ReferenceEngine(args.model, args.adapter)
        else:
            engine = TransformersEngine(args.model, args.adapter, args.device)
        v = engine.versions
        print(f"ENGINE {args.engine} torch={v['torch']} transformers={v['transformers']} peft={v['peft']} "
              f"device={args.device if args.engine == 'transformers' else 'cpu-float64'} "
              f"reference={args.reference} loramesh={meta.get('version', '?')} base={meta.get('base_format', '?')}")
        max_abs, max_rel, differing = compare_logits(prompts, engine)
        merge_rel, worst = compare_merged(merged_file, engine.merged())
    except InputError as err:
        print(f"peft_check: {err}", file=sys.stderr)
        return 2
    results = [
        verdict(name, "logits_max_abs", max_abs),
        verdict(name, "logits_rel", max_rel),
        verdict(name, "greedy", differing, f"{differing} of {sum(len(p['greedy']) for p in prompts)} tokens differ"),
        verdict(name, "merge_rel", merge_rel, f"worst tensor {worst}"),
    ]
    for problem in getattr(engine, "problems", []):  # the model or adapter did not load as written: fails the run
        problem = " ".join(problem.split())  # one line, whatever a library's message holds
        print(f"INFO {name}.{problem}")
        print(f"peft_check: {name}: {problem}", file=sys.stderr)
    qlora_note(name, prompts, meta)
    return 0 if all(results) and not getattr(engine, "problems", []) else 1


if __name__ == "__main__":
    sys.exit(main())
