// The memory estimator: exact bytes per part on a tiny Llama config worked out by hand, the wasm and
// storage-format variants, monotonic in batch and sequence, parts summing to the total, and its refusals.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type SHAPES, shapeConfig } from '../../../scripts/make-checkpoint.ts';
import { checkModelConfig, type Gpt2Config, type LinearModule, type LlamaConfig } from '../../../shared/config.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import {
  formatBytes,
  MEMORY_PARTS,
  type MemoryPlanInput,
  planMemory,
  WEIGHT_FORMATS,
  wasmHeapRefusal,
} from '../../../shared/model/memory-plan.ts';
import { resolveBaseSpec } from '../../../shared/quant/formats.ts';
import { throwsCode } from '../../helpers/assert.ts';
import { tinyConfig } from '../../helpers/tiny-model.ts';

// d = 8, H = 2 heads of hs = 4, Hkv = 1 (d_kv = 4, G = 2), I = 16, V = 32, 2 layers, untied head.
const CONFIG: LlamaConfig = tinyConfig({
  vocab_size: 32,
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 1,
});
const LORA = { r: 2, targetModules: ['q_proj', 'v_proj'] as LinearModule[] };
// B = 2 sequences of T = 3 tokens: N = 6 rows
const INPUT: MemoryPlanInput = { config: CONFIG, lora: LORA, microBatch: 2, sequenceLength: 3, backend: 'cpu' };

const N = 6;
const GPT2_SMALL: Gpt2Config = {
  model_type: 'gpt2',
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
  layer_norm_epsilon: 1e-5,
  activation_function: 'gelu_new',
  tie_word_embeddings: true,
};
// Parameters: embedding 32·8 = 256; per layer 2 norms 2·8 = 16, q 8·8 = 64, k 4·8 = 32, v 32, o 64,
// gate/up/down 16·8 = 128 each: 576 in linears, 592 in all; final norm 8; untied lm_head 32·8 = 256.
const LINEAR_VALUES = 2 * 576 + 256; // 1408
const PARAMETERS = 256 + 2 * 592 + 8 + 256; // 1704

test('every part of a tiny Llama plan, counted by hand (cpu, f32, W on the right)', () => {
  const plan = planMemory(INPUT);
  assert.equal(plan.weightOnTheLeft, false); // 1408 · 4 bytes of linear weights, far below 64 MiB

  assert.equal(plan.parts.frozenWeights, 4 * PARAMETERS); // 6816
  // W on the right keeps Wᵀ beside every stored W (head included): one float32 copy per linear value
  assert.equal(plan.parts.weightCopies, 4 * LINEAR_VALUES); // 5632

  // One layer, W on the right: 39 N·d + 16 N·d_kv + 12 N·I + 6 B·H·T² + 4 N + B·H·T
  const layer = 39 * N * 8 + 16 * N * 4 + 12 * N * 16 + 6 * (2 * 2 * 3 * 3) + 4 * N + 2 * 2 * 3;
  assert.equal(layer, 1872 + 384 + 1152 + 216 + 24 + 12); // 3660
  // LoRA q (d_out 8, d_in 8): 3 N·d_out + N·d_in + 4 N·r, plus x kept once for q/k/v (N·8);
  // LoRA v (d_out 4, d_in 8): 3 N·d_out + N·d_in + 4 N·r (x already kept)
  const loraQ = 3 * N * 8 + N * 8 + 4 * N * 2 + N * 8; // 288
  const loraV = 3 * N * 4 + N * 8 + 4 * N * 2; // 168
  // Head: 7 N·d + 2 N. Inputs 3 N, RoPE cos and sin 2 N·hs, causal mask G·T·T.
  const head = 7 * N * 8 + 2 * N; // 348
  const fixed = 3 * N + 2 * N * 4 + 2 * 3 * 3; // 18 + 48 + 18 = 84
  assert.equal(plan.parts.activations, 4 * (2 * (layer + loraQ + loraV) + head + fixed)); // 4 · 8664 = 34656
  assert.equal(plan.parts.packedActivations, 0); // only wasm packs

  assert.equal(plan.parts.logits, 4 * 6 * N * 32); // six N·V copies in the fused head + loss: 4608

  // Adapter per layer: q A 2·8 + B 8·2 = 32, v A 2·8 + B 4·2 = 24; two layers: 112 values, each held as
  // values ×2, gradients ×2, AdamW m and v, the job's start copy (7 copies), plus dB before its
  // transpose (r·d_out: 16 + 8 per layer)
  assert.equal(plan.parts.lora, 4 * (112 * 7 + 2 * (16 + 8))); // 3328
  assert.equal(plan.parts.runtime, 0);

  assert.equal(plan.total, 6816 + 5632 + 34656 + 4608 + 3328); // 55040
  assert.match(plan.summary, /^0\.00 GB peak for 2×3 tokens, LoRA r=2 on q_proj,v_proj, f32 weights on cpu: /);
});

test('wasm holds a float32 base once (compact f32, no kernel copies); W on the left changes copies and activations', () => {
  const cpu = planMemory(INPUT);
  const wasm = planMemory({ ...INPUT, backend: 'wasm' });
  // baseForKernels: every matrix held once as compact f32 (4 bytes a weight, no scales), no float32 layouts
  assert.equal(wasm.parts.weightCopies, 0);
  assert.equal(wasm.parts.frozenWeights, cpu.parts.frozenWeights);
  assert.match(wasm.summary, / f32 weights on wasm: .* kernel copies 0\.00 /);
  // LoRA backward products with an activation on the right: x once per input (q and v share it, N·8)
  // and each module's scaled dy (q N·8, v N·4), in both layers
  assert.equal(wasm.parts.packedActivations, 4 * 2 * (N * 8 + N * 8 + N * 4)); // 960
  for (const part of ['activations', 'logits', 'lora'] as const) assert.equal(wasm.parts[part], cpu.parts[part]);

  const left = planMemory({ ...INPUT, weightOnTheLeft: true });
  // one copy per linear as on the right (the head is not vocabulary-sized)
  assert.equal(left.parts.weightCopies, cpu.parts.weightCopies);
  // dyᵀ and dxᵀ of every layer linear (Σ d_out = 8+4+4+8+16+16+8 = 64, Σ d_in = 6·8 + 16 = 64), the head's
  // dlogitsᵀ (in logits) and its dxᵀ (N·d)
  assert.equal(left.parts.activations - cpu.parts.activations, 4 * (2 * N * (64 + 64) + N * 8));
  assert.equal(left.parts.logits, 4 * 7 * N * 32);

  // GPT-2 small: 124M weights put W on the left on cpu (one layout beside W, the head none); wasm holds it once
  const gpt2 = { config: GPT2_SMALL, lora: { r: 8, targetModules: ['c_attn'] as LinearModule[] } };
  const gpt2Cpu = planMemory({ ...gpt2, microBatch: 1, sequenceLength: 8, backend: 'cpu' });
  const gpt2Wasm = planMemory({ ...gpt2, microBatch: 1, sequenceLength: 8, backend: 'wasm' });
  const layerLinears = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072);
  assert.equal(gpt2Cpu.weightOnTheLeft, true);
  assert.equal(gpt2Cpu.parts.weightCopies, 4 * layerLinears);
  assert.equal(gpt2Wasm.weightOnTheLeft, false);
  assert.equal(gpt2Wasm.parts.weightCopies, 0);
  assert.ok(gpt2Wasm.total < gpt2Cpu.total - 4 * layerLinears + 1, 'wasm needs less than cpu by the copies');
});

test('the storage format sets the frozen weights: matrices in the format, vectors in float32', () => {
  const vectors = 2 * 16 + 8; // norm weights
  const bf16 = planMemory({ ...INPUT, format: WEIGHT_FORMATS.bf16 });
  assert.equal(bf16.parts.frozenWeights, 2 * (PARAMETERS - vectors) + 4 * vectors); // 3488
  // nf4: half a byte per weight plus a 4-byte scale per 64 weights, per matrix:
  // embedding and head 256 → 128 + 4·4 = 144 each; q, o 64 → 32 + 4 = 36; k, v 32 → 16 + 4 = 20;
  // gate, up, down 128 → 64 + 8 = 72
  const nf4 = planMemory({ ...INPUT, format: WEIGHT_FORMATS.nf4 });
  assert.equal(nf4.parts.frozenWeights, 2 * 144 + 2 * (2 * 36 + 2 * 20 + 3 * 72) + 4 * vectors); // 1104
  assert.equal(formatBytes(WEIGHT_FORMATS.int8, 1000), 1000 + 16 * 4);
  assert.equal(formatBytes({ name: 'x', bitsPerWeight: 3 }, 3), 2); // rounded up to whole bytes
  for (const part of ['weightCopies', 'activations', 'logits', 'lora'] as const)
    assert.equal(nf4.parts[part], planMemory(INPUT).parts[part]);
});

test('the total grows with the micro-batch and the sequence length, and is the sum of its parts', () => {
  const shapes: MemoryPlanInput[] = [
    INPUT,
    { ...INPUT, backend: 'wasm', weightOnTheLeft: true },
    { config: GPT2_SMALL, lora: { r: 8, targetModules: ['c_attn', 'c_proj'] }, microBatch: 1, sequenceLength: 1 },
    ...(['qwen2.5-0.5b', 'smollm2-360m', 'llama-3.2-1b'] as (keyof typeof SHAPES)[]).map((shape) => ({
      config: checkModelConfig(shapeConfig(shape)),
      lora: { r: 16, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'down_proj'] as LinearModule[] },
      microBatch: 1,
      sequenceLength: 1,
      format: WEIGHT_FORMATS.nf4,
      runtimeBytes: 100e6,
    })),
  ];
  for (const shape of shapes) {
    let previous = -1;
    for (const [microBatch, sequenceLength] of [
      [1, 1],
      [1, 2],
      [2, 2],
      [2, 17],
      [3, 17],
      [3, 256],
      [8, 256],
    ]) {
      const plan = planMemory({ ...shape, microBatch, sequenceLength });
      assert.equal(
        plan.total,
        MEMORY_PARTS.reduce((n, p) => n + plan.parts[p], 0),
      );
      for (const p of MEMORY_PARTS) assert.ok(Number.isSafeInteger(plan.parts[p]) && plan.parts[p] >= 0, p);
      assert.ok(plan.total > previous, `${shape.config.model_type} ${microBatch}×${sequenceLength}`);
      previous = plan.total;
    }
  }
});

test('a float32 Qwen2.5-0.5B fits the wasm heap held once; a float32 Llama-3.2-1B does not, and the summary says so', () => {
  const lora = { r: 8, targetModules: ['q_proj', 'v_proj'] as LinearModule[] };
  const plan = (shape: 'qwen2.5-0.5b' | 'llama-3.2-1b', backend?: 'cpu') =>
    planMemory({ config: checkModelConfig(shapeConfig(shape)), lora, microBatch: 1, sequenceLength: 32, backend });
  assert.equal(plan('qwen2.5-0.5b').overWasmHeap, false);
  const llama = plan('llama-3.2-1b');
  assert.equal(llama.overWasmHeap, true);
  assert.match(llama.summary, /\(over the 4\.29 GB wasm heap\)$/);
  assert.equal(plan('llama-3.2-1b', 'cpu').overWasmHeap, false);
  assert.match(llama.summary, /^\d+\.\d\d GB peak .* weights \d+\.\d\d \+ kernel copies 0\.00 \+/);
});

test('a compact base has no kernel copies; recomputation keeps one block of activations', () => {
  const NF4 = resolveBaseSpec({ format: 'nf4', blockSize: 8 }); // the tiny model's rows are 16 wide
  const f32 = planMemory({ ...INPUT, backend: 'wasm' });
  const compact = planMemory({ ...INPUT, backend: 'wasm', baseFormat: NF4 });
  assert.equal(compact.parts.weightCopies, 0);
  assert.ok(compact.parts.frozenWeights < f32.parts.frozenWeights);
  assert.match(compact.summary, /nf4\/8 weights on wasm/);
  const recomputed = planMemory({ ...INPUT, backend: 'wasm', baseFormat: NF4, recompute: true });
  assert.ok(recomputed.parts.activations < compact.parts.activations, 'fewer activations');
  assert.match(recomputed.summary, /on wasm, recomputing/);
});

test('refuses sizes that are not positive integers and targets the model lacks', () => {
  throwsCode(() => planMemory({ ...INPUT, microBatch: 0 }), ErrorCodes.CONFIG, /microBatch/);
  throwsCode(() => planMemory({ ...INPUT, sequenceLength: 1.5 }), ErrorCodes.CONFIG, /sequenceLength/);
  throwsCode(() => planMemory({ ...INPUT, lora: { r: 0, targetModules: ['q_proj'] } }), ErrorCodes.CONFIG, /lora\.r/);
  throwsCode(() => planMemory({ ...INPUT, lora: { r: 2, targetModules: ['c_attn'] } }), ErrorCodes.CONFIG, /c_attn/);
});

test('a model whose weights overflow the wasm heap is refused in one line with its numbers; one that fits is not', () => {
  // Qwen2.5-0.5B's shapes (scripts/make-checkpoint.ts): 494M parameters, 1.98 GB as float32 weights,
  // held once on wasm: 3.81 GB with 1×128 tokens, within the heap
  const qwen = checkModelConfig(shapeConfig('qwen2.5-0.5b', 'f32'));
  const lora = { r: 8, targetModules: ['q_proj', 'v_proj'] as LinearModule[] };
  const fits = planMemory({ config: qwen, lora, microBatch: 1, sequenceLength: 128 });
  assert.equal(fits.overWasmHeap, false);
  assert.equal(wasmHeapRefusal({ config: qwen, lora, microBatch: 1, sequenceLength: 128 }, 'x'), null);
  assert.match(fits.summary, /^3\.81 GB peak for 1×128 tokens/);
  assert.ok(fits.parts.frozenWeights > 1.9e9 && fits.parts.frozenWeights < 2.1e9, `${fits.parts.frozenWeights}`);
  // at 2×128 tokens it does not: the refusal names the widest base that fits
  const refusal = wasmHeapRefusal({ config: qwen, lora, microBatch: 2, sequenceLength: 128 }, 'this worker');
  assert.match(refusal ?? '', /^this worker cannot train this model on wasm: \d+\.\d\d GB peak for 2×128 tokens/);
  assert.match(
    refusal ?? '',
    /\(over the 4\.29 GB wasm heap\)\. --base-format (bf16|int8|nf4) needs \d\.\d\d GB; or use a smaller/,
  );
  assert.equal(wasmHeapRefusal({ ...INPUT, backend: 'wasm' }, 'x'), null);
  // a worker checks the weights alone (1×1) before loading: Qwen-0.5B's fit, Llama-3.2-1B's (4.9 GB) do not
  const weightsOnly = (shape: 'qwen2.5-0.5b' | 'llama-3.2-1b') =>
    planMemory({ config: checkModelConfig(shapeConfig(shape, 'f32')), lora, microBatch: 1, sequenceLength: 1 });
  assert.equal(weightsOnly('qwen2.5-0.5b').overWasmHeap, false);
  assert.equal(weightsOnly('llama-3.2-1b').overWasmHeap, true);
  // Llama-3.2-1B: neither float32 nor bf16 fits with 1×128 tokens; int8 does
  const llama = checkModelConfig(shapeConfig('llama-3.2-1b', 'f32'));
  assert.match(
    wasmHeapRefusal({ config: llama, lora, microBatch: 1, sequenceLength: 128 }, 'x') ?? '',
    /--base-format int8 needs 3\.62 GB; or use/,
  );
  // the run's own compact base is what is planned: nf4 fits
  const nf4 = { format: 'nf4', blockSize: 64, doubleQuant: false } as const;
  assert.equal(
    wasmHeapRefusal({ config: llama, lora, microBatch: 1, sequenceLength: 128, baseFormat: nf4 }, 'x'),
    null,
  );
});

test('a compact base is planned exactly: packed words and float32 block scales, no float32 kernel copies', () => {
  const nf4 = { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 4 } as const;
  const plan = planMemory({ ...INPUT, baseFormat: nf4 });
  // per matrix (rows, cols): rows·cols/2 code bytes + 4 bytes per block of 8 (the double quantization is
  // decoded at load): embedding and head (32, 8) 128 + 128; q, o (8, 8) 32 + 32; k, v (4, 8) 16 + 16;
  // gate, up (16, 8) 64 + 64; down (8, 16) 64 + 64
  const perLayer = 2 * 64 + 2 * 32 + 3 * 128;
  const vectors = 2 * 16 + 8;
  assert.equal(plan.parts.frozenWeights, 2 * 256 + 2 * perLayer + 4 * vectors);
  assert.equal(plan.weightOnTheLeft, false);
  for (const backend of ['cpu', 'wasm', 'webgpu'] as const)
    assert.equal(planMemory({ ...INPUT, backend, baseFormat: nf4 }).parts.weightCopies, 0, backend);
  // a backend without the compact kernels widens one matrix at a time: the largest, (32, 8)
  assert.equal(planMemory({ ...INPUT, backend: 'tensorflow', baseFormat: nf4 }).parts.weightCopies, 4 * 256);
  assert.match(plan.summary, /nf4\/8\+dq4 weights on cpu/);
  // GPT-2's Conv1D weights are stored (d_in, d_out): blocks run along d_in all the same
  const gpt2 = planMemory({
    config: GPT2_SMALL,
    lora: { r: 8, targetModules: ['c_attn'] },
    microBatch: 1,
    sequenceLength: 1,
    baseFormat: { format: 'int8', blockSize: 64 },
  });
  const matrix = (rows: number, cols: number) => rows * cols + (4 * rows * cols) / 64;
  const layer = matrix(2304, 768) + matrix(768, 768) + matrix(3072, 768) + matrix(768, 3072);
  const floats = 1024 * 768 + 12 * (4 * 768 + 2304 + 768 + 3072 + 768) + 2 * 768;
  assert.equal(gpt2.parts.frozenWeights, matrix(50257, 768) + 12 * layer + 4 * floats);
  throwsCode(
    () => planMemory({ ...INPUT, baseFormat: nf4, format: WEIGHT_FORMATS.nf4 }),
    ErrorCodes.CONFIG,
    /baseFormat .* or format .*, not both/,
  );
});
