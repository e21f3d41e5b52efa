"""The PyTorch side of `npm run bench:compute`: one LoRA training step (forward, then backward to
the LoRA A and B only, base weights frozen) on the same model, weights, adapter and batch as
loramesh, written the way one would write it for speed in PyTorch (torch.nn.functional's fused
layer_norm, gelu(approximate="tanh"), silu, cross_entropy), not the plainer golden-test reference.

Usage: /usr/bin/python3 bench/torch_compute.py DIR THREADS [DEVICE]
  DIR holds config.json, model.safetensors, adapter.safetensors, batch.safetensors, lora.json
  (written by bench/compute-workloads.ts); DEVICE is cpu (default) or cuda.
Protocol (so the bench can alternate loramesh and PyTorch steps under the same machine load):
  prints one JSON line {"ready": true, "threads", "version", "blas", "device"}, then for each line
  "step" on stdin runs one step and prints {"ms": wall ms, "cpuMs": process CPU ms, "loss", "gradNorm"}
  (the loss sum and the L2 norm of all LoRA gradients, to check both sides compute the same step);
  "gemm M K N" prints {"gflops"}: the best rate of a plain (M, K)·(K, N) product (the BLAS roofline);
  "quit" or end of input exits.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts", "reference"))
from llama_torch import read_safetensors  # noqa: E402

directory, threads = sys.argv[1], int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
torch.set_num_threads(threads)
config = json.load(open(os.path.join(directory, "config.json")))
opts = json.load(open(os.path.join(directory, "lora.json")))
weights = {k: v.to(device) for k, v in read_safetensors(os.path.join(directory, "model.safetensors")).items()}
adapter = read_safetensors(os.path.join(directory, "adapter.safetensors"))
batch = read_safetensors(os.path.join(directory, "batch.safetensors"))
scaling = opts["alpha"] / opts["r"]
lora = {}
for name, t in adapter.items():
    path, which = name.rsplit(".lora_", 1)
    lora.setdefault(path, [None, None])["AB".index(which)] = t.to(device).requires_grad_(True)
params = [t for pair in lora.values() for t in pair]
ids = batch["input_ids"].long().to(device)
targets = batch["targets"].long().to(device)
mask = batch["loss_mask"].to(device)


def linear(path, x, weight, bias=None):
    """x Wᵀ (+ b) (+ LoRA): weight given as (out, in), as F.linear wants."""
    y = F.linear(x, weight, bias)
    if path in lora:
        a, b = lora[path]
        y = y + scaling * F.linear(F.linear(x, a), b)
    return y


def attention(q, k, v, bsz, t, heads, kv_heads, hs):
    q = q.view(bsz, t, heads, hs).transpose(1, 2)
    k = k.view(bsz, t, kv_heads, hs).transpose(1, 2)
    v = v.view(bsz, t, kv_heads, hs).transpose(1, 2)
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    causal = torch.full((t, t), float("-inf"), device=q.device).triu(1)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hs) + causal, dim=-1)
    return (att @ v).transpose(1, 2).reshape(bsz, t, heads * hs)


def gpt2_logits():
    c = config
    bsz, t = ids.shape
    d, heads = c["n_embd"], c["n_head"]
    w = weights
    # Conv1D weights are stored (in, out): transposed once here, outside the timed step.
    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:t]
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}"
        x = F.layer_norm(h, (d,), w[p + ".ln_1.weight"], w[p + ".ln_1.bias"], c["layer_norm_epsilon"])
        q, k, v = linear(p + ".attn.c_attn", x, conv_t[p + ".attn.c_attn"], w[p + ".attn.c_attn.bias"]).split(d, dim=-1)
        h = h + linear(p + ".attn.c_proj", attention(q, k, v, bsz, t, heads, heads, d // heads), conv_t[p + ".attn.c_proj"], w[p + ".attn.c_proj.bias"])
        x = F.layer_norm(h, (d,), w[p + ".ln_2.weight"], w[p + ".ln_2.bias"], c["layer_norm_epsilon"])
        fc = F.gelu(linear(p + ".mlp.c_fc", x, conv_t[p + ".mlp.c_fc"], w[p + ".mlp.c_fc.bias"]), approximate="tanh")
        h = h + linear(p + ".mlp.c_proj", fc, conv_t[p + ".mlp.c_proj"], w[p + ".mlp.c_proj.bias"])
    h = F.layer_norm(h, (d,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], c["layer_norm_epsilon"])
    return F.linear(h, w["transformer.wte.weight"])


def rms_norm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config["rms_norm_eps"]) * weight


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def llama_logits():
    c = config
    bsz, t = ids.shape
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    hs = c["hidden_size"] // heads
    w = weights
    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hs, 2, dtype=torch.float32, device=ids.device) / hs))
    freqs = torch.outer(torch.arange(t, dtype=torch.float32, device=ids.device), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    h = w["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rms_norm(h, w[p + ".input_layernorm.weight"])
        q = linear(p + ".self_attn.q_proj", x, w[p + ".self_attn.q_proj.weight"], w.get(p + ".self_attn.q_proj.bias"))
        k = linear(p + ".self_attn.k_proj", x, w[p + ".self_attn.k_proj.weight"], w.get(p + ".self_attn.k_proj.bias"))
        v = linear(p + ".self_attn.v_proj", x, w[p + ".self_attn.v_proj.weight"], w.get(p + ".self_attn.v_proj.bias"))
        q = rope(q.view(bsz, t, heads, hs), cos[:, None], sin[:, None]).view(bsz, t, heads * hs)
        k = rope(k.view(bsz, t, kv_heads, hs), cos[:, None], sin[:, None]).view(bsz, t, kv_heads * hs)
        h = h + linear(p + ".self_attn.o_proj", attention(q, k, v, bsz, t, heads, kv_heads, hs), w[p + ".self_attn.o_proj.weight"])
        x = rms_norm(h, w[p + ".post_attention_layernorm.weight"])
        gate = linear(p + ".mlp.gate_proj", x, w[p + ".mlp.gate_proj.weight"])
        up = linear(p + ".mlp.up_proj", x, w[p + ".mlp.up_proj.weight"])
        h = h + linear(p + ".mlp.down_proj", F.silu(gate) * up, w[p + ".mlp.down_proj.weight"])
    h = rms_norm(h, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else w["lm_head.weight"]
    return F.linear(h, head)


if config["model_type"] == "gpt2":
    conv_t = {name[: -len(".weight")]: t.t().contiguous() for name, t in weights.items() if name.endswith(".weight") and t.dim() == 2 and ".h." in name}
    logits_fn = gpt2_logits
else:
    logits_fn = llama_logits


def step():
    for p in params:
        p.grad = None
    logits = logits_fn()
    loss = (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none") * mask.reshape(-1)).sum()
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    return loss.item(), grad_norm


# Debian's torch links libblas.so.3, which update-alternatives points at OpenBLAS or reference BLAS.
with open("/proc/self/maps") as maps:
    blas = "OpenBLAS" if "openblas" in maps.read() else "reference BLAS"
if device == "cuda":
    blas = torch.cuda.get_device_name(0)
print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "version": torch.__version__, "blas": blas, "device": device}), flush=True)


def gemm_gflops(m, k, n, repeats=10):
    """The best rate of a plain (m, k)·(k, n) product over repeats: this BLAS's roofline on the shape."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


for line in sys.stdin:
    words = line.split()
    if words[:1] == ["gemm"]:
        print(json.dumps({"gflops": gemm_gflops(*map(int, words[1:4]))}), flush=True)
        continue
    if words != ["step"]:
        break
    t0, c0 = time.perf_counter(), time.process_time()
    value, grad_norm = step()  # .item() waits for the GPU
    print(json.dumps({"ms": (time.perf_counter() - t0) * 1000, "cpuMs": (time.process_time() - c0) * 1000, "loss": value, "gradNorm": grad_norm}), flush=True)
