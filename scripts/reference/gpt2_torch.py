"""An independent, functional PyTorch reference of a Hugging Face GPT-2 (GPT2LMHeadModel) with LoRA,
written from the GPT-2 / HF definitions, not from loramesh's TypeScript.

Semantics (HF GPT-2): token + learned position embeddings (wte [V, d], wpe [P, d]); per block
  h = h + attn.c_proj(attn(ln_1(h)));  h = h + mlp.c_proj(gelu_new(mlp.c_fc(ln_2(h))))
then ln_f and an LM head tied to wte. LayerNorm eps = layer_norm_epsilon; gelu_new is the tanh
approximation; causal attention scaled by 1/sqrt(head dim); q, k, v are the three d-wide slices of the
c_attn output, in that order. Projections are HF Conv1D: the weight is stored (in, out) and y = x W + b.

LoRA on a Conv1D module is what PEFT does with fan_in_fan_out=True: lora_A (r, in), lora_B (out, r),
y = x W + b + scaling * (x A^T) B^T; the merged (in, out) weight is W + scaling * (B A)^T.

Weights may be named with the "transformer." prefix (GPT2LMHeadModel.save_pretrained) or without it
(the original hub gpt2 checkpoint); LoRA module paths always carry it ("transformer.h.0.attn.c_attn"),
as PEFT names them inside GPT2LMHeadModel.
Run with Debian's /usr/bin/python3 (python3-torch).
"""
import math

import torch

PREFIX = "transformer."


def normalize_names(weights):
    """Return the weights keyed with the "transformer." prefix (lm_head.* left alone)."""
    out = {}
    for name, t in weights.items():
        if name.startswith(PREFIX) or name.startswith("lm_head."):
            out[name] = t
        else:
            out[PREFIX + name] = t
    return out


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased variance, as torch.nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def merge_conv1d(weight, a, b, scaling):
    """Merged Conv1D weight (in, out): W + scaling * (B A)^T (PEFT's transpose(B @ A, fan_in_fan_out=True))."""
    return weight + scaling * (b @ a).T


class GPT2Lora:
    """Functional GPT-2 forward over a dict of HF-named weights, with LoRA on chosen Conv1D modules."""

    def __init__(self, config, weights, lora=None, scaling=1.0):
        self.c = config
        self.w = normalize_names(weights)
        self.lora = lora or {}  # module path ("transformer.h.0.attn.c_attn") -> (A (r, in), B (out, r))
        self.scaling = scaling

    def conv1d(self, path, x):
        y = x @ self.w[path + ".weight"] + self.w[path + ".bias"]
        if path in self.lora:
            a, b = self.lora[path]
            y = y + self.scaling * ((x @ a.T) @ b.T)
        return y

    def forward(self, ids):
        c = self.c
        bsz, t = ids.shape
        d, nh = c["n_embd"], c["n_head"]
        hs = d // nh
        eps = c["layer_norm_epsilon"]
        if c.get("activation_function", "gelu_new") != "gelu_new":
            raise NotImplementedError(c["activation_function"])
        wte = self.w[PREFIX + "wte.weight"]
        mask = torch.full((t, t), float("-inf"), dtype=wte.dtype).triu(1)
        h = wte[ids] + self.w[PREFIX + "wpe.weight"][torch.arange(t)]
        for i in range(c["n_layer"]):
            p = f"{PREFIX}h.{i}"
            x = layer_norm(h, self.w[p + ".ln_1.weight"], self.w[p + ".ln_1.bias"], eps)
            q, k, v = self.conv1d(p + ".attn.c_attn", x).split(d, dim=-1)
            q, k, v = (z.view(bsz, t, nh, hs).transpose(1, 2) for z in (q, k, v))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hs) + mask, dim=-1)
            o = (att @ v).transpose(1, 2).reshape(bsz, t, d)
            h = h + self.conv1d(p + ".attn.c_proj", o)
            x = layer_norm(h, self.w[p + ".ln_2.weight"], self.w[p + ".ln_2.bias"], eps)
            h = h + self.conv1d(p + ".mlp.c_proj", gelu_new(self.conv1d(p + ".mlp.c_fc", x)))
        h = layer_norm(h, self.w[PREFIX + "ln_f.weight"], self.w[PREFIX + "ln_f.bias"], eps)
        head = wte if c.get("tie_word_embeddings", True) or "lm_head.weight" not in self.w else self.w["lm_head.weight"]
        return h @ head.T
