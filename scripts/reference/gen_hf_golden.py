"""Golden fixtures for four tiny models in Hugging Face checkpoint layout, from the independent PyTorch
references (llama_torch.py for Llama / Qwen2 / Mistral, gpt2_torch.py for GPT-2).

Rerun: /usr/bin/python3 scripts/reference/gen_hf_golden.py   (Debian python3-torch; no transformers,
no safetensors package needed). Output is deterministic (seeded); rerunning rewrites identical files.

For each model <name> in llama-tied-gqa, qwen2, gpt2, mistral it writes test/fixtures/hf/<name>/:
  f32/config.json, f32/model.safetensors     random weights stored as F32 (HF names, metadata format=pt)
  bf16/config.json, bf16/model.safetensors   the same weights rounded to BF16 by torch
  sharded/ (llama-tied-gqa only)             the F32 weights over model-0000{1,2}-of-00002.safetensors
                                             + model.safetensors.index.json + config.json
  golden.safetensors                         input_ids, targets (I32 [2, 8]), loss_mask (F32 [2, 8]),
                                             logits_f32, logits_bf16, logits_lora, logits_merged (F32 [2, 8, V]),
                                             lora.<module path>.A (r, in) / .B (out, r),
                                             grad.<module path>.A / .B  (d loss_sum / d A, B)
  golden.json                                config, LoRA config, loss_sum, token_count, the PEFT adapter
                                             keys/shapes and adapter_config fields PEFT would write
GPT-2: f32/ names carry the "transformer." prefix (GPT2LMHeadModel.save_pretrained); bf16/ names do not
(the original hub gpt2 checkpoint). Tied models store no lm_head.weight. mistral has sliding_window 4 < T = 8,
so the window changes the logits (asserted, as rope_scaling's effect is for qwen2).

Everything is computed in float64 from the stored (float32- or bfloat16-rounded) values:
logits_f32 from the F32 weights, logits_bf16 from the BF16 weights read back from the file and upcast,
logits_lora from the F32 weights plus LoRA branches (scaling alpha/r), logits_merged from the F32 weights
with LoRA merged in (asserted equal to logits_lora). loss_sum = sum(mask * CE(logits_lora, targets)).
Self-checks: autograd vs central finite differences (float64), merge identity, BF16 bytes vs a
hand-rounded round-to-nearest-even of the float32 bits, and a read-back of every written file.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt2_torch import GPT2Lora, merge_conv1d  # noqa: E402
from llama_torch import LlamaLora, read_safetensors, token_loss_sum, write_safetensors  # noqa: E402

GENERATOR = "scripts/reference/gen_hf_golden.py"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "hf")
R, ALPHA = 4, 8
SCALING = ALPHA / R
B, T = 2, 8
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
MODEL_FILE_METADATA = {"format": "pt"}  # what save_pretrained writes; transformers refuses files without it

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
    "mlp_bias": False, "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
}
QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "use_sliding_window": False, "sliding_window": 64,
    "max_window_layers": 2, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "sliding_window": 4, "attention_dropout": 0.0, "initializer_range": 0.02,
    "use_cache": True, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}
GPT2_CONFIG = {
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 64, "n_positions": 64, "n_ctx": 64,
    "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": None, "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": True,
    "bos_token_id": 63, "eos_token_id": 63,
}


def f32(t):
    """Round to float32 (what the file stores), compute in float64."""
    return t.to(torch.float32).to(torch.float64)


def llama_shapes(c):
    """HF parameter name -> shape, and LoRA module path -> (in, out)."""
    d, i_size, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hs = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hs
    qkv_bias = c["model_type"] == "qwen2"
    shapes = {"model.embed_tokens.weight": (v, d)}
    modules = {}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        shapes[p + ".input_layernorm.weight"] = (d,)
        for name, (out_f, in_f) in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)),
                                    ("self_attn.v_proj", (kv, d)), ("self_attn.o_proj", (d, d))]:
            shapes[f"{p}.{name}.weight"] = (out_f, in_f)
            if qkv_bias and name != "self_attn.o_proj":
                shapes[f"{p}.{name}.bias"] = (out_f,)
            modules[f"{p}.{name}"] = (in_f, out_f)
        shapes[p + ".post_attention_layernorm.weight"] = (d,)
        for name, (out_f, in_f) in [("mlp.gate_proj", (i_size, d)), ("mlp.up_proj", (i_size, d)),
                                    ("mlp.down_proj", (d, i_size))]:
            shapes[f"{p}.{name}.weight"] = (out_f, in_f)
            modules[f"{p}.{name}"] = (in_f, out_f)
    shapes["model.norm.weight"] = (d,)
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes, modules


def gpt2_shapes(c):
    d, v, n_pos = c["n_embd"], c["vocab_size"], c["n_positions"]
    inner = c["n_inner"] or 4 * d
    shapes = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (n_pos, d)}
    modules = {}
    for layer in range(c["n_layer"]):
        p = f"transformer.h.{layer}"
        shapes[p + ".ln_1.weight"] = (d,)
        shapes[p + ".ln_1.bias"] = (d,)
        for name, (in_f, out_f) in [("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d))]:
            shapes[f"{p}.{name}.weight"] = (in_f, out_f)  # Conv1D: stored (in, out)
            shapes[f"{p}.{name}.bias"] = (out_f,)
            modules[f"{p}.{name}"] = (in_f, out_f)
        shapes[p + ".ln_2.weight"] = (d,)
        shapes[p + ".ln_2.bias"] = (d,)
        for name, (in_f, out_f) in [("mlp.c_fc", (d, inner)), ("mlp.c_proj", (inner, d))]:
            shapes[f"{p}.{name}.weight"] = (in_f, out_f)
            shapes[f"{p}.{name}.bias"] = (out_f,)
            modules[f"{p}.{name}"] = (in_f, out_f)
    shapes["transformer.ln_f.weight"] = (d,)
    shapes["transformer.ln_f.bias"] = (d,)
    return shapes, modules


def is_norm_weight(name):
    return name.endswith(".weight") and any(k in name for k in ("norm.", "layernorm.", "ln_1.", "ln_2.", "ln_f."))


def init_weight(name, shape):
    if name.endswith(".bias"):
        return f32(0.1 * torch.randn(shape, dtype=torch.float64))
    if is_norm_weight(name):
        return f32(1 + 0.1 * torch.randn(shape, dtype=torch.float64))
    return f32(0.2 * torch.randn(shape, dtype=torch.float64))


def bf16_bits_by_hand(t32):
    """BF16 bit patterns by round-to-nearest-even of the float32 bits (finite values only)."""
    bits = t32.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded & 0xFFFF


def check_bf16_file(path, weights32):
    """The BF16 file's raw 16-bit words equal hand-rounded float32 bits, and read back as torch's rounding."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert (8 + n) % 8 == 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", name
        begin, end = info["data_offsets"]
        words = torch.tensor(struct.unpack(f"<{(end - begin) // 2}H", data[8 + n + begin : 8 + n + end]), dtype=torch.int64)
        want = bf16_bits_by_hand(weights32[name].reshape(-1))
        assert torch.equal(words, want), f"BF16 bytes of {name}"


def write_config(folder, config, dtype):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config, "torch_dtype": dtype}, f, indent=2)
        f.write("\n")


def write_model(folder, config, tensors, dtype):
    write_config(folder, config, dtype)
    path = os.path.join(folder, "model.safetensors")
    write_safetensors(path, tensors, MODEL_FILE_METADATA)
    back = read_safetensors(path)
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors), path
    return back


def write_sharded(folder, config, tensors, split_layer):
    """Shard 1: embeddings + layers < split_layer; shard 2: the rest. HF's index.json layout."""
    write_config(folder, config, "float32")
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name in tensors:
        first = name.startswith("model.embed_tokens.") or (
            name.startswith("model.layers.") and int(name.split(".")[2]) < split_layer)
        weight_map[name] = files[0] if first else files[1]
    for fname in files:
        part = {n: t for n, t in tensors.items() if weight_map[n] == fname}
        write_safetensors(os.path.join(folder, fname), part, MODEL_FILE_METADATA)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    back = {}
    for fname in files:
        back.update(read_safetensors(os.path.join(folder, fname)))
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


def finite_difference_check(model, lora, ids, targets, mask, gen, h=1e-6, per_tensor=2, n_modules=4):
    """Max relative error of autograd vs central differences over a few entries: in n_modules modules
    spread over the model, for A and B, the entry with the largest |grad| plus a random one."""
    paths = list(lora)
    picks = [paths[round(k * (len(paths) - 1) / (n_modules - 1))] for k in range(n_modules)]
    worst, checked = 0.0, 0
    for path in picks:
        for k in range(2):
            t = lora[path][k]
            flat_grad = t.grad.flatten()
            idxs = [int(flat_grad.abs().argmax())] + [int(torch.randint(0, t.numel(), (1,), generator=gen))
                                                      for _ in range(per_tensor - 1)]
            for idx in idxs:
                g = flat_grad[idx].item()
                with torch.no_grad():
                    orig = t.view(-1)[idx].item()
                    t.view(-1)[idx] = orig + h
                    up = token_loss_sum(model.forward(ids), targets, mask).item()
                    t.view(-1)[idx] = orig - h
                    down = token_loss_sum(model.forward(ids), targets, mask).item()
                    t.view(-1)[idx] = orig
                fd = (up - down) / (2 * h)
                worst = max(worst, abs(fd - g) / max(abs(g), 1e-8))
                checked += 1
    return worst, checked


def peft_entries(c, modules, targets):
    keys = []
    for path, (in_f, out_f) in sorted(modules.items()):
        keys.append({"key": f"base_model.model.{path}.lora_A.weight", "shape": [R, in_f]})
        keys.append({"key": f"base_model.model.{path}.lora_B.weight", "shape": [out_f, R]})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "target_modules": targets, "bias": "none", "fan_in_fan_out": c["model_type"] == "gpt2",
        "use_rslora": False, "init_lora_weights": True,
    }
    return keys, config


def build(name, config, seed):
    kind = "gpt2" if config["model_type"] == "gpt2" else "llama"
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    shapes, modules = gpt2_shapes(config) if kind == "gpt2" else llama_shapes(config)
    targets_list = GPT2_TARGETS if kind == "gpt2" else LLAMA_TARGETS
    v = config["vocab_size"]
    folder = os.path.join(OUT, name)

    weights = {n: init_weight(n, s) for n, s in shapes.items()}  # float64 holding float32 values
    w32 = {n: w.to(torch.float32) for n, w in weights.items()}
    w16 = {n: w.to(torch.bfloat16) for n, w in w32.items()}

    # Checkpoint folders.
    write_model(os.path.join(folder, "f32"), config, w32, "float32")
    strip = (lambda n: n[len("transformer."):]) if kind == "gpt2" else (lambda n: n)
    back16 = write_model(os.path.join(folder, "bf16"), config, {strip(n): t for n, t in w16.items()}, "bfloat16")
    check_bf16_file(os.path.join(folder, "bf16", "model.safetensors"), {strip(n): t for n, t in w32.items()})
    if name == "llama-tied-gqa":
        write_sharded(os.path.join(folder, "sharded"), config, w32, split_layer=1)

    # Inputs.
    ids = torch.randint(0, v, (B, T), dtype=torch.int32)
    targets = torch.randint(0, v, (B, T), dtype=torch.int32)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, :2] = 0
    mask[1, 5] = 0
    mask[1, -1] = 0

    Model = GPT2Lora if kind == "gpt2" else LlamaLora
    with torch.no_grad():
        logits_f32 = Model(config, weights).forward(ids.long())
        weights_bf16 = {n: t.to(torch.float64) for n, t in back16.items()}  # as read from the file
        logits_bf16 = Model(config, weights_bf16).forward(ids.long())

    lora = {}
    for path, (in_f, out_f) in modules.items():
        a = f32(0.3 * torch.randn(R, in_f, dtype=torch.float64)).requires_grad_(True)
        b = f32(0.3 * torch.randn(out_f, R, dtype=torch.float64)).requires_grad_(True)
        lora[path] = (a, b)
    model = Model(config, weights, lora, SCALING)
    logits_lora = model.forward(ids.long())
    loss = token_loss_sum(logits_lora, targets, mask)
    loss.backward()

    fd_err, fd_n = finite_difference_check(model, lora, ids.long(), targets, mask, gen)
    merged = dict(weights)
    for path, (a, b) in lora.items():
        w = weights[path + ".weight"]
        if kind == "gpt2":
            merged[path + ".weight"] = merge_conv1d(w, a.detach(), b.detach(), SCALING)
        else:
            merged[path + ".weight"] = w + SCALING * (b.detach() @ a.detach())
    with torch.no_grad():
        logits_merged = Model(config, merged).forward(ids.long())
    merge_diff = (logits_merged - logits_lora.detach()).abs().max().item()
    lora_effect = (logits_lora.detach() - logits_f32).abs().max().item()
    bf16_effect = (logits_bf16 - logits_f32).abs().max().item()
    extra = ""
    if config.get("rope_scaling"):
        with torch.no_grad():
            unscaled = Model({**config, "rope_scaling": None}, weights).forward(ids.long())
        rope_effect = (unscaled - logits_f32).abs().max().item()
        assert rope_effect > 1e-3, "rope_scaling had no effect"
        extra = f", rope_scaling effect {rope_effect:.2e}"
    if config.get("sliding_window") and config.get("use_sliding_window") is not False:
        assert config["sliding_window"] < T, "the window must be shorter than the sequence to matter"
        with torch.no_grad():
            full = Model({**config, "sliding_window": None}, weights).forward(ids.long())
        window_effect = (full - logits_f32).abs().max().item()
        assert window_effect > 1e-3, "sliding_window had no effect"
        extra += f", sliding_window effect {window_effect:.2e}"
    print(f"[{name}] finite differences vs autograd ({fd_n} entries, float64): max relative error {fd_err:.2e}; "
          f"merged vs LoRA logits: max abs diff {merge_diff:.2e}; LoRA effect {lora_effect:.2e}; "
          f"BF16 effect {bf16_effect:.2e}{extra}")
    assert fd_err < 1e-6 and merge_diff < 1e-10 and lora_effect > 1e-2 and bf16_effect > 0

    tensors = {"input_ids": ids, "targets": targets, "loss_mask": mask.to(torch.float32),
               "logits_f32": logits_f32.to(torch.float32), "logits_bf16": logits_bf16.to(torch.float32),
               "logits_lora": logits_lora.detach().to(torch.float32),
               "logits_merged": logits_merged.to(torch.float32)}
    for path, (a, b) in lora.items():
        tensors[f"lora.{path}.A"] = a.detach().to(torch.float32)
        tensors[f"lora.{path}.B"] = b.detach().to(torch.float32)
        tensors[f"grad.{path}.A"] = a.grad.to(torch.float32)
        tensors[f"grad.{path}.B"] = b.grad.to(torch.float32)
    write_safetensors(os.path.join(folder, "golden.safetensors"), tensors, {"generator": GENERATOR})
    peft_keys, peft_config = peft_entries(config, modules, targets_list)
    meta = {
        "model_config": {**config, "torch_dtype": "float32"},
        "lora": {"r": R, "alpha": ALPHA, "target_modules": targets_list},
        "lora_modules": sorted(modules),
        "batch": B, "seq_len": T,
        "loss_sum": loss.item(), "token_count": int(mask.sum().item()),
        "peft_keys": peft_keys, "peft_config": peft_config,
        "self_check": {"finite_difference_max_rel_error": fd_err, "finite_difference_entries": fd_n,
                       "merged_vs_lora_max_abs_diff": merge_diff},
        "computed_in": "float64 from float32-rounded (logits_bf16: bfloat16-rounded) stored values",
        "generator": GENERATOR, "torch_version": torch.__version__,
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    # Appended models take the next seed, so the earlier fixtures stay byte-identical.
    for seed, (name, config) in enumerate([("llama-tied-gqa", LLAMA_CONFIG), ("qwen2", QWEN2_CONFIG),
                                           ("gpt2", GPT2_CONFIG), ("mistral", MISTRAL_CONFIG)]):
        build(name, config, 4321 + 100 * seed)
    for d, _, fs in sorted(os.walk(OUT)):
        for f in sorted(fs):
            print(f"  {os.path.relpath(os.path.join(d, f), OUT):55s} {os.path.getsize(os.path.join(d, f)):8d} bytes")
    total = folder_size(OUT)
    print(f"test/fixtures/hf total: {total} bytes ({total / 2**20:.2f} MiB)")
    assert total < 2 * 2**20


if __name__ == "__main__":
    main()
