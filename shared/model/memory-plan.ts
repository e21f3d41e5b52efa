/**
 * Peak memory of a worker computing one LoRA training micro-batch (B sequences of T tokens,
 * N = B·T rows), by part. Pure arithmetic on the configs: nothing is allocated, so a coordinator or
 * a join page can size micro-batches before a worker loads anything. The peak is at the end of the
 * backward pass: tfjs keeps every tensor an op saved for its gradient until the backward ends, and
 * every tensor a gradient function makes too (engine.gradients runs them all in one tidy scope and
 * disposes nothing before it returns), so what the forward saved and the whole backward pile up.
 *
 * Parts (bytes):
 *  - frozenWeights: every base parameter as held. A run's compact base (`baseFormat`, the run's
 *    --base-format: shared/model/compact-base.ts) holds each linear weight and the embedding packed
 *    with float32 block scales (CompactWeight.heldBytes) and the rest as float32; without one the
 *    loader widens every tensor to float32, and on wasm the worker then holds its matrices once as
 *    compact f32 (baseForKernels), which is how wasm is planned unless `format` asks for an estimate. `format` (a WeightFormat: bits per weight plus group
 *    scales) estimates other storage formats, for comparison.
 *  - weightCopies: the extra float32 layouts the frozen-linear kernels keep (shared/model/linear-ops.ts,
 *    makeFrozenLinear and FrozenLinear): with W on the right (models with ≤ 64 MiB of linear
 *    weights) both W and Wᵀ, and on wasm XNNPACK's packed copy of each (3 extra copies); with W on the
 *    left Wᵀ beside every layer's W (1 extra), while a vocabulary-sized LM head keeps one layout,
 *    packed on wasm (1 extra there, 0 elsewhere). Counted in float32 whatever `format` says. A
 *    compact base keeps none: its kernels (wasm, cpu, webgpu) read W as packed; tensorflow widens
 *    one matrix at a time (the largest counted once). Its products count as W on the right.
 *  - activations: the float32 tensors alive at the peak that scale with N, except the logits:
 *    per layer a fixed set of multiples of N·d, N·d_kv, N·I and B·H·T² (counted from the ops of
 *    llama.ts / gpt2.ts, attention.ts, norm-ops.ts and linear-ops.ts, see LLAMA_LAYER), per adapted
 *    module its LoRA branch's tensors, and the final norm, the LM head's input gradient, the input
 *    ids and RoPE tables.
 *  - packedActivations (wasm only): XNNPACK packs the right operand of every plain 2-D product and
 *    keeps the packed copy while the tensor lives, so products whose right operand is an activation
 *    kept until the backward ends hold a packed copy as long (the operator cache of tfjs-backend-wasm's
 *    BatchMatMul is keyed by the right operand and freed with it): with W on the left each layer's dyᵀ
 *    (N·d_out per linear, and dlogitsᵀ for a head below VOCABULARY_SIZED rows), and per adapted module
 *    the LoRA branch's x and scaled dy (N·(d_in + d_out)).
 *  - logits: N·V float32 values, kept five times at the peak (shared/train/gradients.ts,
 *    tokenLossSum): exp(z − max) saved by the loss, and from its gradient softmax·w, the one-hot
 *    targets, onehot·w and dlogits; a sixth (dlogitsᵀ) when the LM head multiplies on the left in the
 *    backward pass (W on the left and V < VOCABULARY_SIZED). The logits themselves are freed when the
 *    forward ends; they do not reach the peak.
 *  - lora: the adapter A/B (a JS copy and a tensor), their gradients (tensor and the JS copy read
 *    back), dBᵀ before its transpose, and with the optimizer on the worker (local steps,
 *    shared/train/local-steps.ts) the AdamW moments m, v and the job's start copy.
 *  - runtime: what the caller says the process needs besides (JS engine, tfjs, the wasm module).
 *
 * The counts follow tfjs 4.22 autodiff and the kernels as written; they were checked against a
 * census of live tensor buffers at the peak of real steps (tfjs's own numBytes counts a buffer
 * once per tensor sharing it, so it overstates). One thing is left out on purpose: layer 0 runs
 * its backward only from its first adapted module up, so the estimate is high by up to one layer's
 * backward share (at most about 1/L of the activations). The wasm heap holds at most
 * WASM_HEAP_MAX_BYTES; `overWasmHeap` says when a plan does not fit it.
 */
import { DEFAULT_LORA, type LoraConfig, type ModelConfig } from '../config.ts';
import { ErrorCodes, fail } from '../errors.ts';
import { adaptedModules } from '../lora/adapter.ts';
import {
  DEFAULT_BASE_BLOCK,
  describeBaseSpec,
  type MatrixLayout,
  matrixLayout,
  type ResolvedBaseSpec,
  resolveBaseSpec,
} from '../quant/formats.ts';
import { linearModulePaths, linearShape, linearStorage, parameterShapes } from './causal-lm.ts';
import { headChunkRows } from '../train/gradients.ts';
import { compactTensorNames } from './compact-base.ts';
import { VOCABULARY_SIZED } from './linear-ops.ts';

/** How frozen weights are stored: bits per weight of a matrix, plus one scale per group of weights. */
export interface WeightFormat {
  name: string;
  bitsPerWeight: number;
  /** weights sharing one scale (quantized formats) */
  groupSize?: number;
  /** bytes of one group's scale (and offset, if any) */
  scaleBytes?: number;
}

/**
 * Estimates by bits per weight: f32 is what the loader keeps without a compact base; bf16/f16 keep
 * the checkpoint's 16 bits; int8 and nf4 are the compact formats of shared/quant/formats.ts at their
 * default block (a float32 scale per DEFAULT_BASE_BLOCK weights: ≈ 1.06 and ≈ 0.56 bytes per weight;
 * nf4 without double quantization). A run's own compact base is planned exactly (`baseFormat`).
 */
export const WEIGHT_FORMATS = {
  f32: { name: 'f32', bitsPerWeight: 32 },
  bf16: { name: 'bf16', bitsPerWeight: 16 },
  f16: { name: 'f16', bitsPerWeight: 16 },
  int8: { name: 'int8', bitsPerWeight: 8, groupSize: DEFAULT_BASE_BLOCK, scaleBytes: 4 },
  nf4: { name: 'nf4', bitsPerWeight: 4, groupSize: DEFAULT_BASE_BLOCK, scaleBytes: 4 },
} as const satisfies Record<string, WeightFormat>;

/** Bytes of `count` weights of one matrix in a format. */
export function formatBytes(format: WeightFormat, count: number): number {
  const scales = format.groupSize ? Math.ceil(count / format.groupSize) * (format.scaleBytes ?? 0) : 0;
  return Math.ceil((count * format.bitsPerWeight) / 8) + scales;
}

/** The backends as the kernels see them: only wasm (XNNPACK) keeps packed copies of right operands. */
export type KernelBackend = 'wasm' | 'cpu' | 'webgpu' | 'tensorflow';

/**
 * Above this many float32 bytes of linear weights FrozenBase multiplies with W on the left
 * (WEIGHT_ON_THE_LEFT_MIN_BYTES in shared/lora/params.ts, which does not export it).
 */
export const WEIGHT_ON_THE_LEFT_MIN_BYTES = 64 * 2 ** 20;

/** The largest wasm32 heap tfjs-backend-wasm can grow to (emscripten's getHeapMax: 4 GiB − 64 KiB). */
export const WASM_HEAP_MAX_BYTES = 4294901760;

export interface MemoryPlanInput {
  config: ModelConfig;
  /** rank and targets; dropout is taken as 0 (with dropout each adapted module keeps its own masked input) */
  lora: Pick<LoraConfig, 'r' | 'targetModules'>;
  /** sequences per micro-batch (B) */
  microBatch: number;
  /** tokens per sequence (T) */
  sequenceLength: number;
  /** the run's compact base format (planned exactly, with no float32 kernel copies); absent: float32 */
  baseFormat?: ResolvedBaseSpec;
  /** without baseFormat: an estimate of another storage format; default WEIGHT_FORMATS.f32 */
  format?: WeightFormat;
  /** default wasm */
  backend?: KernelBackend;
  /** default: as FrozenBase decides (linear weights over WEIGHT_ON_THE_LEFT_MIN_BYTES) */
  weightOnTheLeft?: boolean;
  /** AdamW moments and a start copy on the worker (local steps); default true (an upper bound) */
  optimizerOnWorker?: boolean;
  /** the process's own memory besides tensors (JS engine, tfjs, wasm module); default 0 */
  runtimeBytes?: number;
  /** each block's forward is recomputed in the backward pass (shared/model/recompute.ts) */
  recompute?: boolean;
}

export const MEMORY_PARTS = [
  'frozenWeights',
  'weightCopies',
  'activations',
  'packedActivations',
  'logits',
  'lora',
  'runtime',
] as const;
export type MemoryPart = (typeof MEMORY_PARTS)[number];

export interface MemoryPlan {
  parts: Record<MemoryPart, number>;
  total: number;
  weightOnTheLeft: boolean;
  /** wasm only: the tensors and copies (all but runtime) exceed WASM_HEAP_MAX_BYTES */
  overWasmHeap: boolean;
  /** one line: total and parts in GB (10⁹ bytes), 2 decimals */
  summary: string;
}

/** Multiples of one layer's activation sizes kept at the peak (float32 values). */
interface LayerCoefficients {
  /** of N·d (d = hidden size = heads · head size) */
  hidden: number;
  /** Llama: of N·d_kv (key/value width); GPT-2: of N·3d (the fused q/k/v) */
  kv: number;
  /** Llama: of N·I (MLP width); GPT-2: of N·4d */
  mlp: number;
  /** of B·H·T² (attention probabilities and their gradients) */
  attention: number;
  /** of N (norm statistics) */
  rows: number;
  /** of B·H·T (the softmax gradient's row sums) */
  attentionRows: number;
}

/**
 * A Llama-family layer with W on the right and no LoRA (the W-on-the-left extra and each adapted
 * module's tensors are added separately). Forward tensors saved for the backward:
 *   RMSNorm ×2: x̂ (N·d) and rstd (N) each; outputs of q, o, down (3 N·d), k and v (2 N·d_kv), gate and
 *   up (2 N·I); the two residual sums (2 N·d); RoPE of q: rotate_half(q), q·cos, rotate_half(q)·sin,
 *   their sum (4 N·d), of k the same (4 N·d_kv); attention: q, k, v moved head-first (N·d, 2 N·d_kv),
 *   the probabilities (B·H·T²), its output and that moved back (2 N·d); SwiGLU: σ(gate), silu(gate)
 *   (2 N·I).  Forward: 14 N·d, 8 N·d_kv, 4 N·I, 1 B·H·T², 2 N.
 * Backward tensors (none freed before the backward ends):
 *   each linear's dx (q, k, v, o, gate, up: N·d; down: N·I), RMSNorm ×2 (5 N·d + N each), SwiGLU
 *   (7 N·I), attention (dP, dP⊙P, its row sums, dScores ×2 and ·scale: 5 B·H·T² + B·H·T; dq N·d,
 *   dk and dv N·d_kv), RoPE (dy·cos, dy·sin, dy·rotate_halfᵀ: 3 N·d and 3 N·d_kv), the head moves
 *   undone, and a sum wherever a tensor feeds several ops (each adds one tensor, the previous sum
 *   is freed). Backward: 25 N·d, 8 N·d_kv, 8 N·I, 5 B·H·T², 2 N, 1 B·H·T.
 */
const LLAMA_LAYER: LayerCoefficients = { hidden: 39, kv: 16, mlp: 12, attention: 6, rows: 4, attentionRows: 1 };

/**
 * A GPT-2 layer with W on the right and no LoRA, counted the same way: LayerNorm instead of RMSNorm,
 * no RoPE, the fused c_attn output (N·3d) split three ways, GELU instead of SwiGLU on N·4d, and a
 * bias added to every linear. `kv` and `mlp` are multiples of N·3d and N·4d here.
 */
const GPT2_LAYER: LayerCoefficients = { hidden: 40, kv: 2, mlp: 13, attention: 6, rows: 6, attentionRows: 1 };

/** Per adapted module (d_out, d_in): the branch's output and the sum y + branch (forward), dy·scale (backward). */
const LORA_PER_D_OUT = 3;
/** Per adapted module: the branch's dx. Its input x is kept too, once per input (see loraInput). */
const LORA_PER_D_IN = 1;
/** Per adapted module: x·Aᵀ (forward), its gradient, that transposed, and x·Aᵀ transposed for dB. */
const LORA_PER_RANK = 4;
/** The final norm's x̂ and backward (6 N·d, 2 N), the LM head's dx (N·d). */
const HEAD_HIDDEN = 7;
const HEAD_ROWS = 2;
/**
 * The fused head + loss (shared/train/gradients.ts fusedHeadLoss) holds one chunk of rows' logits at a
 * time, briefly: z, z − max, exp, softmax·w, one-hot·w and dlogits (a transient; counted as if at the peak).
 */
const LOGIT_COPIES = 6;

const F32 = 4;
const GB = 1e9;

function positiveInt(field: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1)
    fail(ErrorCodes.CONFIG, `memory plan: ${field} should be an integer ≥ 1, got ${JSON.stringify(value)}`);
}

/** Model dimensions the activation formulas use, named as in the file comment. */
function dims(config: ModelConfig) {
  if (config.model_type === 'gpt2') {
    const d = config.n_embd;
    return {
      d,
      kv: 3 * d,
      mlp: 4 * d,
      heads: config.n_head,
      groups: 1,
      headSize: d / config.n_head,
      layers: config.n_layer,
    };
  }
  const headSize = config.hidden_size / config.num_attention_heads;
  return {
    d: config.hidden_size,
    kv: config.num_key_value_heads * headSize,
    mlp: config.intermediate_size,
    heads: config.num_attention_heads,
    groups: config.num_attention_heads / config.num_key_value_heads,
    headSize,
    layers: config.num_hidden_layers,
  };
}

/**
 * The tensor a LoRA branch keeps as its input x, as a key: modules reading the same x share it (q/k/v read the
 * input norm's output, gate/up the post-attention norm's). null for the attention output projection, whose x
 * the attention already keeps (the reshape of its moved-back output saves it).
 */
function loraInput(config: ModelConfig, path: string): string | null {
  const layer = path.slice(0, path.lastIndexOf('.', path.lastIndexOf('.') - 1));
  const kind = path.slice(path.lastIndexOf('.') + 1);
  if (config.model_type === 'gpt2') return path.endsWith('attn.c_proj') ? null : path;
  if (kind === 'o_proj') return null;
  if (kind === 'q_proj' || kind === 'k_proj' || kind === 'v_proj') return `${layer}.attention input`;
  if (kind === 'gate_proj' || kind === 'up_proj') return `${layer}.mlp input`;
  return path;
}

export function planMemory(input: MemoryPlanInput): MemoryPlan {
  const { config, lora, microBatch: batch, sequenceLength: time } = input;
  const format = input.format ?? WEIGHT_FORMATS.f32;
  const backend = input.backend ?? 'wasm';
  // On wasm a float32 base is held once as compact f32 (baseForKernels, shared/model/compact-base.ts).
  if (backend === 'wasm' && !input.baseFormat && !input.format)
    return planMemory({ ...input, baseFormat: resolveBaseSpec({ format: 'f32' }) });
  positiveInt('microBatch', batch);
  positiveInt('sequenceLength', time);
  positiveInt('lora.r', lora.r);
  if (!(format.bitsPerWeight > 0))
    fail(ErrorCodes.CONFIG, `memory plan: format.bitsPerWeight should be > 0, got ${format.bitsPerWeight}`);
  const rows = batch * time; // N
  const { d, kv, mlp, heads, groups, headSize, layers } = dims(config);
  const gpt2 = config.model_type === 'gpt2';
  const vocab = config.vocab_size;

  if (input.baseFormat && input.format)
    fail(ErrorCodes.CONFIG, 'memory plan: give baseFormat (a compact base) or format (an estimate), not both');
  const compactNames = input.baseFormat ? compactTensorNames(config) : new Map<string, { transposed: boolean }>();
  let frozenWeights = 0;
  let largestCompact = 0; // float32 values of the largest compact matrix
  for (const [name, shape] of parameterShapes(config)) {
    const count = shape.reduce((a, b) => a * b, 1);
    const how = compactNames.get(name);
    if (input.baseFormat && how) {
      const [rows, cols] = how.transposed ? [shape[1], shape[0]] : shape; // blocks run along d_in
      frozenWeights += heldBytes(matrixLayout(input.baseFormat, rows, cols));
      largestCompact = Math.max(largestCompact, count);
    } else frozenWeights += shape.length === 2 ? formatBytes(format, count) : F32 * count;
  }

  const paths = linearModulePaths(config);
  const linearValues = paths.reduce((n, path) => n + linearShape(config, path).reduce((a, b) => a * b), 0);
  const compact = input.baseFormat !== undefined;
  const onTheLeft = !compact && (input.weightOnTheLeft ?? F32 * linearValues > WEIGHT_ON_THE_LEFT_MIN_BYTES);
  const headBackwardLeft = onTheLeft && vocab < VOCABULARY_SIZED;
  const wasm = backend === 'wasm';

  // makeFrozenLinear: W on the right keeps both layouts, each packed on wasm; on the left every layer keeps
  // both layouts unpacked, a vocabulary-sized head one layout, packed on wasm (its backward multiplies on the right).
  let weightCopies = 0;
  let layerLeftRows = 0; // Σ over the layers' linears of (d_out + d_in): dyᵀ and dxᵀ made when W is on the left
  let layerLeftOut = 0; // Σ d_out of the same: the dyᵀ XNNPACK packs
  let biasedOut = 0; // Σ d_out of Llama linears with a bias (GPT-2's are in GPT2_LAYER)
  // a compact base: the compact kernels run on wasm, cpu and webgpu; tensorflow widens one matrix at a time
  if (input.baseFormat && backend === 'tensorflow') weightCopies += F32 * largestCompact;
  for (const path of paths) {
    const [dOut, dIn] = linearShape(config, path);
    const size = dOut * dIn;
    const head = path === 'lm_head';
    if (compact) {
      // compact weights keep no float32 layouts
    } else if (!onTheLeft) weightCopies += F32 * size * (wasm ? 3 : 1);
    else if (!head || dOut < VOCABULARY_SIZED) weightCopies += F32 * size;
    else if (wasm) weightCopies += F32 * size;
    if (!head) {
      layerLeftRows += dOut + dIn;
      layerLeftOut += dOut;
      if (!gpt2 && linearStorage(config, path).bias) biasedOut += dOut;
    }
  }

  const c = gpt2 ? GPT2_LAYER : LLAMA_LAYER;
  const attentionScores = batch * heads * time * time;
  // With recomputation only each block's input stays from the forward pass, and one block's
  // activations (and its LoRA branches' share) live at a time.
  const recompute = input.recompute ?? false;
  const liveLayers = recompute ? 1 : layers;
  let activationValues =
    (recompute ? layers * rows * d : 0) +
    liveLayers *
      (c.hidden * rows * d +
        c.kv * rows * kv +
        c.mlp * rows * mlp +
        c.attention * attentionScores +
        c.rows * rows +
        c.attentionRows * batch * heads * time) +
    rows * biasedOut +
    (onTheLeft ? rows * layerLeftRows : 0) +
    HEAD_HIDDEN * rows * d +
    HEAD_ROWS * rows +
    (headBackwardLeft ? rows * d : 0);
  // inputs (ids, targets, loss mask); Llama: RoPE cos and sin, the causal mask (G·T, T); GPT-2: position ids, the
  // position embeddings gathered and added, the mask (T, T)
  activationValues += 3 * rows;
  activationValues += gpt2 ? rows + 2 * rows * d + time * time : 2 * rows * headSize + groups * time * time;

  const loraStart = activationValues;
  let packedValues = wasm && onTheLeft ? rows * layerLeftOut + (headBackwardLeft ? rows * vocab : 0) : 0;
  let adapterValues = 0;
  let dBPending = 0;
  const kept = new Set<string>();
  const packed = new Set<string>();
  for (const path of adaptedModules(config, { ...DEFAULT_LORA, ...lora })) {
    const [dOut, dIn] = linearShape(config, path);
    activationValues += rows * (LORA_PER_D_OUT * dOut + LORA_PER_D_IN * dIn) + LORA_PER_RANK * rows * lora.r;
    const input = loraInput(config, path);
    if (input !== null && !kept.has(input)) activationValues += rows * dIn;
    if (input !== null) kept.add(input);
    // dA = (dy·B)ᵀ·x and dBᵀ = (x·Aᵀ)ᵀ·(dy·scale) put x and dy·scale on the right: packed once per tensor
    if (wasm && !packed.has(input ?? path)) packedValues += rows * dIn;
    if (wasm) packedValues += rows * dOut;
    packed.add(input ?? path);
    adapterValues += lora.r * (dIn + dOut);
    dBPending += lora.r * dOut;
  }
  // recomputing: one block's LoRA branches live at a time too
  if (recompute) activationValues -= Math.round(((layers - 1) / layers) * (activationValues - loraStart));
  const optimizer = input.optimizerOnWorker ?? true;
  const loraBytes = F32 * (adapterValues * (2 + 2 + (optimizer ? 3 : 0)) + dBPending);

  const parts: Record<MemoryPart, number> = {
    frozenWeights,
    weightCopies,
    activations: F32 * activationValues,
    packedActivations: F32 * packedValues,
    logits: F32 * (LOGIT_COPIES + (headBackwardLeft ? 1 : 0)) * headChunkRows(rows, vocab) * vocab,
    lora: loraBytes,
    runtime: input.runtimeBytes ?? 0,
  };
  const total = MEMORY_PARTS.reduce((n, p) => n + parts[p], 0);
  const overWasmHeap = wasm && total - parts.runtime > WASM_HEAP_MAX_BYTES;
  const gb = (n: number) => (n / GB).toFixed(2);
  const summary =
    `${gb(total)} GB peak for ${batch}×${time} tokens, LoRA r=${lora.r} on ${lora.targetModules.join(',')}, ` +
    `${input.baseFormat ? describeBaseSpec(input.baseFormat) : format.name} weights on ${backend}${recompute ? ', recomputing' : ''}: ` +
    `weights ${gb(frozenWeights)} + kernel copies ${gb(weightCopies)} + ` +
    `activations ${gb(parts.activations + parts.packedActivations)} + logits ${gb(parts.logits)} + ` +
    `LoRA ${gb(loraBytes)}${parts.runtime ? ` + runtime ${gb(parts.runtime)}` : ''} GB` +
    (overWasmHeap ? ` (over the ${gb(WASM_HEAP_MAX_BYTES)} GB wasm heap)` : '');
  return { parts, total, weightOnTheLeft: onTheLeft, overWasmHeap, summary };
}

/** What a CompactWeight holds: the packed words and a float32 scale per block (CompactWeight.heldBytes). */
function heldBytes(layout: MatrixLayout): number {
  return layout.dataBytes + 4 * layout.rows * layout.blocksPerRow;
}

/** A base format the run could use instead of its own, with the run's plan in it. */
export interface BaseFormatOption {
  spec: ResolvedBaseSpec;
  plan: MemoryPlan;
}

/** The compact formats a refusal may suggest, widest first (f32 held once, without kernel copies; defaults). */
const SUGGESTED_FORMATS: ResolvedBaseSpec[] = [
  { format: 'f32' },
  { format: 'bf16' },
  { format: 'int8', blockSize: DEFAULT_BASE_BLOCK },
  { format: 'nf4', blockSize: DEFAULT_BASE_BLOCK, doubleQuant: false },
];

/** The run planned in each suggested base format that needs less memory than its own, widest first. */
export function smallerBaseFormats(input: MemoryPlanInput): BaseFormatOption[] {
  const own = planMemory(input).total;
  return SUGGESTED_FORMATS.map((spec) => ({
    spec,
    plan: planMemory({ ...input, format: undefined, baseFormat: spec }),
  })).filter((o) => o.plan.total < own);
}

/** "--base-format int8 needs 1.20 GB": the widest option whose tensors fit `limitBytes`, or null. */
export function baseFormatHint(options: BaseFormatOption[], limitBytes: number): string | null {
  const fits = options.find((o) => o.plan.total - o.plan.parts.runtime <= limitBytes);
  if (!fits) return null;
  return `--base-format ${fits.spec.format} needs ${((fits.plan.total - fits.plan.parts.runtime) / GB).toFixed(2)} GB`;
}

/**
 * Why the run cannot train on the wasm backend, in one line with the numbers and what would fit (a
 * compact base format first), or null when it fits. Checked before weights load: tfjs-backend-wasm
 * does not check a failed allocation (a full heap shows up later as a raw `Aborted()`, or as
 * corrupted weights).
 */
export function wasmHeapRefusal(input: MemoryPlanInput, who: string): string | null {
  const wasm = { ...input, backend: 'wasm' as const };
  const plan = planMemory(wasm);
  if (!plan.overWasmHeap) return null;
  const hint = baseFormatHint(smallerBaseFormats(wasm), WASM_HEAP_MAX_BYTES);
  return (
    `${who} cannot train this model on wasm: ${plan.summary}. ${hint ? `${hint}; or use` : 'Use'} a smaller ` +
    '--micro-batch or --max-tokens, or a backend without this limit (--backend cpu, tensorflow or webgpu)'
  );
}
