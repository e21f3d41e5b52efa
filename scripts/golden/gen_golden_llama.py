#!/usr/bin/env python3
"""
Golden numerical fixture for a tiny Llama-style decoder with LoRA, from an independent
plain-PyTorch implementation of Hugging Face LlamaForCausalLM semantics (no `transformers`,
no `safetensors` package: both the model and the file writer are written out here).

What it computes (float64 throughout, from float32-rounded weights and inputs, so a float32
implementation can match within ~1e-4):

  * model: vocab 50, hidden 32, intermediate 64, 2 layers, 4 query heads, 2 KV heads
    (grouped-query attention: query head h reads KV head h // 2, as HF repeat_kv), head_dim 8,
    RMSNorm eps 1e-5, RoPE theta 10000 (HF rotate_half layout), untied lm_head, no biases;
    weights ~ N(0, 0.2^2), norm weights 1 + N(0, 0.1^2);
  * LoRA on all seven linears (q,k,v,o,gate,up,down) of every layer:
    y = x W^T + (alpha/r) (x A^T) B^T with r = 4, alpha = 8 (scaling 2), no dropout;
    A [r, in] and B [out, r] both ~ N(0, 0.3^2) so every gradient is non-zero;
  * a batch of 2 sequences of 8 tokens with a 0/1 loss mask (row 0: first 3 masked, row 1: last 2);
  * logits [2, 8, 50]; loss_sum = sum_{b,t} mask[b,t] * CE(logits[b,t], targets[b,t]);
    token_count = sum(mask); d loss_sum / d A and d loss_sum / d B for every LoRA module;
  * logits_merged: the same forward with each LoRA merged into its weight (W + scaling * B @ A)
    and no LoRA branch (equals `logits` to float64 precision: a check of the merge identity).

Self-checks printed on every run: autograd vs central finite differences (float64) on a sample of
A/B entries, merged vs unmerged logits, and a re-read of the written file (header, offsets,
alignment, every tensor bit-for-bit).

Output (safetensors, tensors sorted by name, header padded with spaces to 8-byte alignment):
  test/fixtures/golden/llama-lora.safetensors
      model.embed_tokens.weight, model.layers.{i}.*.weight, model.norm.weight, lm_head.weight  F32
      lora.<module path>.A / lora.<module path>.B                                              F32
      grad.<module path>.A / grad.<module path>.B                                              F32
      input_ids, targets [2, 8] I32;  loss_mask [2, 8] F32
      logits, logits_merged [2, 8, 50] F32;  loss_sum [1] F32;  token_count [1] F32
    where <module path> is e.g. model.layers.0.self_attn.q_proj or model.layers.1.mlp.down_proj
  test/fixtures/golden/llama-lora.json  (model_config with HF field names, lora, batch, seq_len,
      loss_sum, token_count, generator, torch_version)

Rerun from the repo root (Debian's python has torch; the pyenv one does not):
    /usr/bin/python3 scripts/golden/gen_golden_llama.py
Options: --out-dir DIR writes elsewhere; --check FILE.safetensors recomputes an existing fixture's
logits / loss / gradients from its own weights, LoRA and inputs with this implementation and
prints the differences (writes nothing).
Deterministic: seeded with torch.manual_seed(SEED); reruns produce byte-identical files.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

SEED = 20261128
REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "test", "fixtures", "golden")
GENERATOR = "scripts/golden/gen_golden_llama.py"

MODEL_CONFIG = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}
LORA_R = 4
LORA_ALPHA = 8
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ = 2, 8

F64 = torch.float64


def f32_round(t):
    """What the file stores (float32), back in float64 for the reference computation."""
    return t.to(torch.float32).to(F64)


# ----------------------------------------------------------------------------- parameters

def linear_shapes(cfg):
    """Module path -> (out_features, in_features) for the seven linears of every layer."""
    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg["head_dim"]
    q_out = cfg["num_attention_heads"] * hd
    kv_out = cfg["num_key_value_heads"] * hd
    out = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out[f"{p}.self_attn.q_proj"] = (q_out, d)
        out[f"{p}.self_attn.k_proj"] = (kv_out, d)
        out[f"{p}.self_attn.v_proj"] = (kv_out, d)
        out[f"{p}.self_attn.o_proj"] = (d, q_out)
        out[f"{p}.mlp.gate_proj"] = (inter, d)
        out[f"{p}.mlp.up_proj"] = (inter, d)
        out[f"{p}.mlp.down_proj"] = (d, inter)
    return out


def make_weights(cfg):
    """HF-named base weights, float32-rounded, float64 dtype. Drawn in a fixed order."""
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    lin = linear_shapes(cfg)
    w = {}

    def mat(shape):
        return f32_round(torch.randn(*shape, dtype=F64) * 0.2)

    def norm(n):
        return f32_round(1.0 + torch.randn(n, dtype=F64) * 0.1)

    w["model.embed_tokens.weight"] = mat((v, d))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w[f"{p}.input_layernorm.weight"] = norm(d)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
            w[f"{p}.{m}.weight"] = mat(lin[f"{p}.{m}"])
        w[f"{p}.post_attention_layernorm.weight"] = norm(d)
        for m in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            w[f"{p}.{m}.weight"] = mat(lin[f"{p}.{m}"])
    w["model.norm.weight"] = norm(d)
    w["lm_head.weight"] = mat((v, d))
    return w


def make_lora(cfg):
    """Module path -> [A (r, in), B (out, r)], both random N(0, 0.3^2), float32-rounded."""
    lora = {}
    for path, (out_f, in_f) in linear_shapes(cfg).items():
        a = f32_round(torch.randn(LORA_R, in_f, dtype=F64) * 0.3)
        b = f32_round(torch.randn(out_f, LORA_R, dtype=F64) * 0.3)
        lora[path] = [a, b]
    return lora


# ----------------------------------------------------------------------------- the model

def rms_norm(x, weight, eps):
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_cos_sin(seq, hd, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=F64) / hd))
    freqs = torch.arange(seq, dtype=F64)[:, None] * inv_freq[None, :]  # outer product [T, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def forward(cfg, w, ids, lora=None, scaling=LORA_ALPHA / LORA_R):
    """Logits [B, T, V] in float64. lora: module path -> (A, B) or None for no LoRA branch."""
    bsz, seq = ids.shape
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    group = nh // nkv
    eps = cfg["rms_norm_eps"]
    cos, sin = rope_cos_sin(seq, hd, cfg["rope_theta"])
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()  # key j visible to query i iff j <= i
    neg_inf = torch.tensor(float("-inf"), dtype=F64)

    def lin(path, x):
        y = torch.matmul(x, w[path + ".weight"].t())
        if lora is not None and path in lora:
            a, b = lora[path]
            y = y + scaling * torch.matmul(torch.matmul(x, a.t()), b.t())
        return y

    h = w["model.embed_tokens.weight"][ids.long()]  # [B, T, d]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rms_norm(h, w[f"{p}.input_layernorm.weight"], eps)
        q = lin(f"{p}.self_attn.q_proj", x).reshape(bsz, seq, nh, hd)
        k = lin(f"{p}.self_attn.k_proj", x).reshape(bsz, seq, nkv, hd)
        v = lin(f"{p}.self_attn.v_proj", x).reshape(bsz, seq, nkv, hd)
        c, s = cos[None, :, None, :], sin[None, :, None, :]
        q = q * c + rotate_half(q) * s
        k = k * c + rotate_half(k) * s
        heads = []
        for hq in range(nh):
            kv = hq // group  # HF repeat_kv: KV head kv serves query heads kv*group .. kv*group+group-1
            qh, kh, vh = q[:, :, hq, :], k[:, :, kv, :], v[:, :, kv, :]  # [B, T, hd]
            scores = torch.matmul(qh, kh.transpose(1, 2)) / math.sqrt(hd)  # [B, Tq, Tk]
            scores = torch.where(causal, scores, neg_inf)
            heads.append(torch.matmul(torch.softmax(scores, dim=-1), vh))
        attn = torch.cat(heads, dim=-1)  # [B, T, nh*hd], heads in order
        h = h + lin(f"{p}.self_attn.o_proj", attn)
        x = rms_norm(h, w[f"{p}.post_attention_layernorm.weight"], eps)
        gated = torch.nn.functional.silu(lin(f"{p}.mlp.gate_proj", x)) * lin(f"{p}.mlp.up_proj", x)
        h = h + lin(f"{p}.mlp.down_proj", gated)
    h = rms_norm(h, w["model.norm.weight"], eps)
    return torch.matmul(h, w["lm_head.weight"].t())


def masked_loss_sum(logits, targets, mask):
    """sum_{b,t} mask * (logsumexp(logits) - logits[target])."""
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return ((lse - picked) * mask).sum()


# ----------------------------------------------------------------------------- safetensors I/O

ST_DTYPES = {torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4")}


def tensor_bytes(t):
    t = t.detach().contiguous()
    code, np_dtype = ST_DTYPES[t.dtype]
    return code, t.numpy().astype(np_dtype, copy=False).tobytes()


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        code, raw = tensor_bytes(tensors[name])
        header[name] = {"dtype": code, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)  # data starts at an 8-byte aligned offset
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    """Strict reader: returns (metadata, {name: tensor}); asserts the layout is well-formed."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0, "data section not 8-byte aligned"
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    metadata = header.pop("__metadata__", {})
    assert all(isinstance(v, str) for v in metadata.values()), "metadata values must be strings"
    by_type = {"F32": torch.float32, "I32": torch.int32}
    out, spans = {}, []
    for name, info in header.items():
        dtype = by_type[info["dtype"]]
        begin, end = info["data_offsets"]
        count = 1
        for dim in info["shape"]:
            count *= dim
        assert end - begin == 4 * count, f"{name}: byte length does not match shape"
        spans.append((begin, end))
        raw = bytearray(data[base + begin : base + end])
        out[name] = torch.frombuffer(raw, dtype=dtype).reshape(info["shape"]).clone()
    spans.sort()
    pos = 0
    for begin, end in spans:
        assert begin == pos, "gap or overlap in data_offsets"
        pos = end
    assert base + pos == len(data), "trailing bytes after the last tensor"
    return metadata, out


# ----------------------------------------------------------------------------- self-checks

def finite_difference_check(cfg, w, lora, ids, targets, mask, picks, step=1e-5):
    """Max relative error between autograd and central differences on the given entries."""
    worst = 0.0
    with torch.no_grad():
        for path, which, flat_index in picks:
            t = lora[path][which]
            g = t.grad.reshape(-1)[flat_index].item()
            flat = t.view(-1)
            orig = flat[flat_index].item()
            flat[flat_index] = orig + step
            up = masked_loss_sum(forward(cfg, w, ids, lora), targets, mask).item()
            flat[flat_index] = orig - step
            down = masked_loss_sum(forward(cfg, w, ids, lora), targets, mask).item()
            flat[flat_index] = orig
            fd = (up - down) / (2 * step)
            rel = abs(fd - g) / max(abs(g), abs(fd), 1e-8)
            worst = max(worst, rel)
    return worst


def check_existing(path):
    """Recompute an existing fixture with this implementation and print the differences."""
    _, t = read_safetensors(path)
    cfg = MODEL_CONFIG
    w = {n: v.to(F64) for n, v in t.items() if n.startswith("model.") or n == "lm_head.weight"}
    lora = {}
    for n in t:
        if n.startswith("lora.") and n.endswith(".A"):
            p = n[len("lora.") : -len(".A")]
            lora[p] = [t[n].to(F64).requires_grad_(True), t[f"lora.{p}.B"].to(F64).requires_grad_(True)]
    ids, targets, mask = t["input_ids"], t["targets"], t["loss_mask"].to(F64)
    logits = forward(cfg, w, ids, lora)
    loss = masked_loss_sum(logits, targets, mask)
    loss.backward()
    print(f"checking {path} ({len(lora)} LoRA modules)")
    print(f"  logits max abs diff: {(logits.detach() - t['logits'].to(F64)).abs().max().item():.3e}")
    print(f"  loss_sum: fixture {t['loss_sum'].item():.9g}  here {loss.item():.9g}")
    gd = max(max((lora[p][0].grad - t[f"grad.{p}.A"].to(F64)).abs().max().item(),
                 (lora[p][1].grad - t[f"grad.{p}.B"].to(F64)).abs().max().item()) for p in lora)
    print(f"  gradients max abs diff: {gd:.3e}")


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    ap.add_argument("--check", metavar="FILE", help="recompute an existing fixture and print differences")
    args = ap.parse_args()
    torch.set_num_threads(1)  # summation order fixed: byte-identical reruns
    if args.check:
        check_existing(args.check)
        return

    torch.manual_seed(SEED)
    cfg = MODEL_CONFIG
    assert cfg["hidden_size"] == cfg["num_attention_heads"] * cfg["head_dim"]
    scaling = LORA_ALPHA / LORA_R
    w = make_weights(cfg)
    lora = make_lora(cfg)
    ids = torch.randint(0, cfg["vocab_size"], (BATCH, SEQ), dtype=torch.int32)
    targets = torch.randint(0, cfg["vocab_size"], (BATCH, SEQ), dtype=torch.int32)
    mask = torch.ones(BATCH, SEQ, dtype=F64)
    mask[0, :3] = 0.0
    mask[1, -2:] = 0.0

    for a, b in lora.values():
        a.requires_grad_(True)
        b.requires_grad_(True)
    logits = forward(cfg, w, ids, lora, scaling)
    loss = masked_loss_sum(logits, targets, mask)
    loss.backward()
    token_count = int(mask.sum().item())

    # Merge identity: W' = W + scaling * B @ A, no branch.
    with torch.no_grad():
        merged = dict(w)
        for p, (a, b) in lora.items():
            merged[p + ".weight"] = w[p + ".weight"] + scaling * (b @ a)
        logits_merged = forward(cfg, merged, ids, None)
    merge_diff = (logits_merged - logits.detach()).abs().max().item()

    # Autograd vs central differences on a sample of entries (A and B, attention and MLP, both layers).
    gen = torch.Generator().manual_seed(SEED + 1)
    picks = []
    for p in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.up_proj",
              "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"):
        for which in (0, 1):
            n = lora[p][which].numel()
            for idx in torch.randint(0, n, (2,), generator=gen).tolist():
                picks.append((p, which, idx))
    fd_err = finite_difference_check(cfg, w, lora, ids, targets, mask, picks)

    min_grad = min(min(a.grad.abs().max().item(), b.grad.abs().max().item()) for a, b in lora.values())
    zero_grads = sum(int((a.grad == 0).sum() + (b.grad == 0).sum()) for a, b in lora.values())

    tensors = {n: v.to(torch.float32) for n, v in w.items()}
    for p, (a, b) in lora.items():
        tensors[f"lora.{p}.A"] = a.detach().to(torch.float32)
        tensors[f"lora.{p}.B"] = b.detach().to(torch.float32)
        tensors[f"grad.{p}.A"] = a.grad.to(torch.float32)
        tensors[f"grad.{p}.B"] = b.grad.to(torch.float32)
    tensors["input_ids"] = ids
    tensors["targets"] = targets
    tensors["loss_mask"] = mask.to(torch.float32)
    tensors["logits"] = logits.detach().to(torch.float32)
    tensors["logits_merged"] = logits_merged.to(torch.float32)
    tensors["loss_sum"] = loss.detach().reshape(1).to(torch.float32)
    tensors["token_count"] = torch.tensor([float(token_count)], dtype=torch.float32)

    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "llama-lora.safetensors")
    json_path = os.path.join(args.out_dir, "llama-lora.json")
    write_safetensors(st_path, tensors, {
        "format": "pt", "generator": GENERATOR, "seed": SEED,
        "computed_in": "float64 from float32-rounded weights and inputs; stored as float32",
    })
    meta = {
        "model_config": cfg,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "scaling": scaling, "dropout": 0.0,
                 "target_modules": TARGET_MODULES},
        "batch": BATCH,
        "seq_len": SEQ,
        "loss_sum": loss.item(),
        "token_count": token_count,
        "seed": SEED,
        "computed_in": "float64 from float32-rounded weights and inputs; tensors stored as float32",
        "generator": GENERATOR,
        "torch_version": torch.__version__,
    }
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    # Re-read what was written: layout, names, and every tensor bit for bit.
    md, back = read_safetensors(st_path)
    assert md["generator"] == GENERATOR
    assert set(back) == set(tensors), "tensor names differ after re-read"
    for n, v in tensors.items():
        assert back[n].dtype == v.dtype and list(back[n].shape) == list(v.shape), n
        assert torch.equal(back[n], v), f"{n}: values differ after re-read"
    with open(json_path) as f:
        assert json.load(f)["token_count"] == token_count

    n_lora = len(lora)
    print(f"seed {SEED}, torch {torch.__version__}")
    print(f"loss_sum {loss.item():.12g} over {token_count} tokens (mean {loss.item() / token_count:.6g})")
    print(f"finite differences vs autograd (float64, {len(picks)} entries, step 1e-5): max relative error {fd_err:.2e}")
    print(f"logits_merged vs logits: max abs diff {merge_diff:.2e}")
    print(f"gradients: {2 * n_lora} tensors ({n_lora} modules x A/B), exact zeros {zero_grads}, "
          f"smallest per-tensor max |g| {min_grad:.3e}")
    print(f"wrote {os.path.relpath(st_path, REPO)} ({os.path.getsize(st_path)} bytes, {len(tensors)} tensors) "
          f"and {os.path.relpath(json_path, REPO)}; re-read OK")
    ok = fd_err < 1e-6 and merge_diff < 1e-10 and zero_grads == 0
    if not ok:
        print("SELF-CHECK FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
