"""An independent PyTorch reference of loramesh's model: a Hugging Face-style Llama decoder
(RMSNorm, rotary embeddings with rotate_half, SwiGLU, grouped-query attention, tied or untied
embeddings) with LoRA branches y = x W^T + (alpha/r) (x A^T) B^T. Written from the HF/LoRA
papers' definitions, not from loramesh's TypeScript, so agreement between the two means something.
Optional linear biases (`<path>.bias`, e.g. Qwen2's q/k/v) are added when present,
`rope_scaling` of type "linear" divides positions by its factor (HF's linear RoPE scaling), and a
`sliding_window` w (Mistral) lets the query at position i attend only to keys j with i - w < j <= i.

Also a minimal safetensors reader/writer (the `safetensors` package is not in Debian).
Run with Debian's /usr/bin/python3 (python3-torch).
"""
import json
import math
import struct

import torch

DTYPES = {"F32": (torch.float32, 4), "I32": (torch.int32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
          "F64": (torch.float64, 8), "I64": (torch.int64, 8), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
          "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1)}
CODES = {dtype: code for code, (dtype, _) in DTYPES.items()}


def tensor_bytes(t):
    """Little-endian raw bytes of a tensor, as safetensors stores them. BF16 has no numpy dtype, so its
    16-bit patterns (the top half of the float32 bits, rounded to nearest even by torch) go via int16."""
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, size = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin : base + end])
        t = torch.frombuffer(raw, dtype=dtype) if end > begin else torch.zeros(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def write_safetensors(path, tensors, metadata=None):
    names = sorted(tensors)
    header = {"__metadata__": metadata or {}}
    blobs = []
    offset = 0
    for name in names:
        t = tensors[name].contiguous()
        code = CODES[t.dtype]
        raw = tensor_bytes(t)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def sliding_window(config):
    """Mistral's sliding_window (None: full causal attention). Qwen2 writes a sliding_window too but
    uses it only with use_sliding_window: true."""
    if config.get("use_sliding_window") is False:
        return None
    return config.get("sliding_window")


def attention_mask(t, window, dtype):
    """(t, t) additive mask: 0 where query i may see key j (j <= i and i - j < window), -inf elsewhere."""
    mask = torch.full((t, t), float("-inf"), dtype=dtype).triu(1)
    if window is not None:
        mask = mask + torch.full((t, t), float("-inf"), dtype=dtype).tril(-window)
    return mask


def rope_position_divisor(config):
    """HF's linear RoPE scaling (LlamaLinearScalingRotaryEmbedding / rope_type "linear") divides positions by
    `factor` (equivalently inv_freq / factor). No rope_scaling or rope_type "default" leaves them as is."""
    rs = config.get("rope_scaling")
    if not rs:
        return 1.0
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return 1.0
    if kind == "linear":
        return float(rs["factor"])
    raise NotImplementedError(f"rope_scaling type {kind!r}")


class LlamaLora:
    """Functional Llama forward over a dict of HF-named weights, with LoRA on chosen modules."""

    def __init__(self, config, weights, lora=None, scaling=1.0):
        self.c = config
        self.w = weights  # name -> tensor
        self.lora = lora or {}  # module path -> (A (r, in), B (out, r))
        self.scaling = scaling

    def linear(self, path, x):
        if path == "lm_head" and self.c.get("tie_word_embeddings"):
            w = self.w["model.embed_tokens.weight"]
        else:
            w = self.w[path + ".weight"]
        y = x @ w.T
        if path + ".bias" in self.w:
            y = y + self.w[path + ".bias"]
        if path in self.lora:
            a, b = self.lora[path]
            y = y + self.scaling * ((x @ a.T) @ b.T)
        return y

    def forward(self, ids):
        c = self.c
        bsz, t = ids.shape
        nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        hs = c["hidden_size"] // nh
        eps = c["rms_norm_eps"]
        dtype = self.w["model.embed_tokens.weight"].dtype
        inv_freq = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
        freqs = torch.outer(torch.arange(t, dtype=torch.float64) / rope_position_divisor(c), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        mask = attention_mask(t, sliding_window(c), dtype)
        h = self.w["model.embed_tokens.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}"
            x = rms_norm(h, self.w[p + ".input_layernorm.weight"], eps)
            q = self.linear(p + ".self_attn.q_proj", x).view(bsz, t, nh, hs).transpose(1, 2)
            k = self.linear(p + ".self_attn.k_proj", x).view(bsz, t, nkv, hs).transpose(1, 2)
            v = self.linear(p + ".self_attn.v_proj", x).view(bsz, t, nkv, hs).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hs) + mask, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(bsz, t, nh * hs)
            h = h + self.linear(p + ".self_attn.o_proj", o)
            x = rms_norm(h, self.w[p + ".post_attention_layernorm.weight"], eps)
            gate = self.linear(p + ".mlp.gate_proj", x)
            h = h + self.linear(p + ".mlp.down_proj", torch.nn.functional.silu(gate) * self.linear(p + ".mlp.up_proj", x))
        h = rms_norm(h, self.w["model.norm.weight"], eps)
        return self.linear("lm_head", h)


def token_loss_sum(logits, targets, mask):
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum()
