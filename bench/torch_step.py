"""The PyTorch side of `npm run bench`: the same LoRA training step (forward + backward for A and
B only, base weights frozen) on the same model, adapter and batch, timed the same way.
Usage: /usr/bin/python3 bench/torch_step.py MODEL_DIR TMP_DIR (TMP_DIR written by bench/step.ts).
Prints one JSON line: {"ms": median ms/step, "threads": n, "version": torch version, "blas": ...}.
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts", "reference"))
from llama_torch import LlamaLora, read_safetensors, token_loss_sum  # noqa: E402

model_dir, tmp = sys.argv[1], sys.argv[2]
opts = json.load(open(os.path.join(tmp, "lora.json")))
torch.set_num_threads(opts["threads"])
config = json.load(open(os.path.join(model_dir, "config.json")))
weights = read_safetensors(os.path.join(model_dir, "model.safetensors"))
adapter = read_safetensors(os.path.join(tmp, "adapter.safetensors"))
batch = read_safetensors(os.path.join(tmp, "batch.safetensors"))
lora = {}
for name, t in adapter.items():
    path, which = name.rsplit(".lora_", 1)
    lora.setdefault(path, [None, None])["AB".index(which)] = t.requires_grad_(True)
model = LlamaLora(config, weights, {k: tuple(v) for k, v in lora.items()}, opts["alpha"] / opts["r"])
params = [t for pair in lora.values() for t in pair]
ids, targets, mask = batch["input_ids"].long(), batch["targets"], batch["loss_mask"]


def step():
    for p in params:
        p.grad = None
    loss = token_loss_sum(model.forward(ids), targets, mask)
    loss.backward()


for _ in range(opts["warmup"]):
    step()
times = []
for _ in range(opts["repeats"]):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1000)
# Debian's torch links libblas.so.3, which update-alternatives points at OpenBLAS or reference BLAS.
with open("/proc/self/maps") as maps:
    blas = "OpenBLAS" if "openblas" in maps.read() else "reference BLAS"
print(json.dumps({"ms": statistics.median(times), "threads": torch.get_num_threads(), "version": torch.__version__, "blas": blas}))
