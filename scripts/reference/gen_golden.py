"""Golden fixture for loramesh's model + LoRA, from the independent PyTorch reference
(scripts/reference/llama_torch.py), computed in float64 from float32-rounded inputs.

Rerun: /usr/bin/python3 scripts/reference/gen_golden.py
Writes test/fixtures/golden/llama-lora.safetensors (+ .json); test/shared/golden.test.ts compares
loramesh's logits, loss and A/B gradients against it. Python is not needed to run the tests.
"""
import json
import os

import torch

from llama_torch import LlamaLora, token_loss_sum, write_safetensors

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "golden")
CONFIG = {
    "model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": False,
}
R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 2, 8


def f32(t):
    """Round to float32 (what the file stores), compute in float64."""
    return t.to(torch.float32).to(torch.float64)


def main():
    torch.manual_seed(1234)
    c = CONFIG
    d, i_size, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hs = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hs
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    modules = {}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        shapes[p + ".input_layernorm.weight"] = (d,)
        shapes[p + ".post_attention_layernorm.weight"] = (d,)
        for name, shape in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)), ("self_attn.v_proj", (kv, d)),
                            ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (i_size, d)), ("mlp.up_proj", (i_size, d)),
                            ("mlp.down_proj", (d, i_size))]:
            shapes[f"{p}.{name}.weight"] = shape
            modules[f"{p}.{name}"] = shape
    weights = {n: f32(1 + 0.1 * torch.randn(s, dtype=torch.float64) if len(s) == 1 else 0.2 * torch.randn(s, dtype=torch.float64))
               for n, s in shapes.items()}
    lora = {}
    for path, (out_f, in_f) in modules.items():
        a = f32(0.3 * torch.randn(R, in_f, dtype=torch.float64)).requires_grad_(True)
        b = f32(0.3 * torch.randn(out_f, R, dtype=torch.float64)).requires_grad_(True)
        lora[path] = (a, b)
    ids = torch.randint(0, v, (B, T), dtype=torch.int32)
    targets = torch.randint(0, v, (B, T), dtype=torch.int32)
    mask = torch.ones(B, T, dtype=torch.float64)
    mask[0, :3] = 0
    mask[1, -2:] = 0

    model = LlamaLora(c, weights, lora, ALPHA / R)
    logits = model.forward(ids.long())
    loss = token_loss_sum(logits, targets, mask)
    loss.backward()

    # Self-checks: autograd vs central differences in float64, and the merge identity.
    worst = 0.0
    for path in list(lora)[:3]:
        for k in range(2):
            t = lora[path][k]
            g = t.grad.flatten()[0].item()
            with torch.no_grad():
                t.view(-1)[0] += 1e-6
                up = token_loss_sum(model.forward(ids.long()), targets, mask).item()
                t.view(-1)[0] -= 2e-6
                down = token_loss_sum(model.forward(ids.long()), targets, mask).item()
                t.view(-1)[0] += 1e-6
            worst = max(worst, abs((up - down) / 2e-6 - g) / max(1e-12, abs(g)))
    merged = dict(weights)
    for path, (a, b) in lora.items():
        merged[path + ".weight"] = weights[path + ".weight"] + (ALPHA / R) * (b.detach() @ a.detach())
    with torch.no_grad():
        logits_merged = LlamaLora(c, merged).forward(ids.long())
    merge_diff = (logits_merged - logits.detach()).abs().max().item()
    print(f"finite differences vs autograd (float64): max relative error {worst:.2e}")
    print(f"merged vs unmerged logits: max abs diff {merge_diff:.2e}")
    assert worst < 1e-6 and merge_diff < 1e-10

    tensors = {n: w.to(torch.float32) for n, w in weights.items()}
    for path, (a, b) in lora.items():
        tensors[f"lora.{path}.A"] = a.detach().to(torch.float32)
        tensors[f"lora.{path}.B"] = b.detach().to(torch.float32)
        tensors[f"grad.{path}.A"] = a.grad.to(torch.float32)
        tensors[f"grad.{path}.B"] = b.grad.to(torch.float32)
    tensors.update({"input_ids": ids, "targets": targets, "loss_mask": mask.to(torch.float32),
                    "logits": logits.detach().to(torch.float32), "loss_sum": loss.detach().reshape(1).to(torch.float32)})
    os.makedirs(OUT, exist_ok=True)
    write_safetensors(os.path.join(OUT, "llama-lora.safetensors"), tensors, {"generator": "scripts/reference/gen_golden.py"})
    meta = {"model_config": c, "lora": {"r": R, "alpha": ALPHA, "target_modules": TARGETS}, "batch": B, "seq_len": T,
            "loss_sum": loss.item(), "token_count": int(mask.sum().item()), "torch_version": torch.__version__,
            "generator": "scripts/reference/gen_golden.py", "computed_in": "float64 from float32-rounded inputs"}
    with open(os.path.join(OUT, "llama-lora.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"wrote {OUT}/llama-lora.safetensors ({os.path.getsize(os.path.join(OUT, 'llama-lora.safetensors'))} bytes)")


if __name__ == "__main__":
    main()
