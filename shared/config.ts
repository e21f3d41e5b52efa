/**
 * Typed configs with defaults, checked when built. Every check names the field, the value and
 * what was expected (habit 4 in STYLE.md), so a bad CLI flag or config file fails at the edge.
 */
import { describe, fail, ErrorCodes } from './errors.ts';

/** rope_scaling as Hugging Face writes it; "linear" and "llama3" are implemented. */
export interface RopeScaling {
  rope_type: 'linear' | 'llama3';
  factor: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

/** Llama family (Llama 2/3, SmolLM, TinyLlama, Qwen2, Mistral): the HF config.json fields the model reads. */
export interface LlamaConfig {
  model_type: 'llama' | 'qwen2' | 'mistral';
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  tie_word_embeddings: boolean;
  /** q/k/v/o biases (Llama's attention_bias); Qwen2 always has q/k/v biases */
  attention_bias?: boolean;
  rope_scaling?: RopeScaling | null;
  /** Mistral: each position attends to at most this many previous positions */
  sliding_window?: number | null;
  bos_token_id?: number;
  eos_token_id?: number;
  pad_token_id?: number;
}

/** GPT-2: learned positions, LayerNorm, GELU, fused c_attn, Conv1D weights stored (in, out). */
export interface Gpt2Config {
  model_type: 'gpt2';
  vocab_size: number;
  n_positions: number;
  n_embd: number;
  n_layer: number;
  n_head: number;
  layer_norm_epsilon: number;
  activation_function: 'gelu_new' | 'gelu_pytorch_tanh';
  tie_word_embeddings: true;
  bos_token_id?: number;
  eos_token_id?: number;
  pad_token_id?: number;
}

export type ModelConfig = LlamaConfig | Gpt2Config;

/** The modules a LoRA can wrap, by their Hugging Face names (Llama family, then GPT-2). */
export const LINEAR_MODULES = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
  'c_attn',
  'c_proj',
  'c_fc',
] as const;
export type LinearModule = (typeof LINEAR_MODULES)[number];

export interface LoraConfig {
  /** rank of A (r × d_in) and B (d_out × r) */
  r: number;
  /** scaling numerator: ΔW = (alpha / r)·B·A, or alpha/√r with useRslora */
  alpha: number;
  /** dropout on the LoRA branch's input, in [0, 1) */
  dropout: number;
  targetModules: LinearModule[];
  /** 'kaiming': A ~ Kaiming-uniform(a=√5) as PEFT does; 'gaussian': A ~ N(0, 1/r) */
  init: 'kaiming' | 'gaussian';
  useRslora: boolean;
}

export const DEFAULT_LORA: LoraConfig = {
  r: 8,
  alpha: 16,
  dropout: 0,
  targetModules: ['q_proj', 'v_proj'],
  init: 'kaiming',
  useRslora: false,
};

export interface TrainConfig {
  steps: number;
  /** sequences per optimizer step, summed over all workers */
  globalBatch: number;
  /** sequences per assignment; the unit of work and of reassignment */
  microBatch: number;
  lr: number;
  warmupSteps: number;
  /** the cosine schedule decays to lr * minLrRatio at the last step */
  minLrRatio: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** global gradient-norm clip; 0 turns clipping off */
  clipNorm: number;
  seed: number;
  /**
   * micro-batches per reduction block (issue 19): a step's results are summed in order within fixed blocks of
   * this many micro-batch indices, then the block sums in order, whoever adds them (one coordinator, ingestion
   * threads, relays). Absent: one block of the whole step, the order runs have always had.
   */
  reductionBlock?: number;
}

export const DEFAULT_TRAIN: TrainConfig = {
  steps: 100,
  globalBatch: 32,
  microBatch: 8,
  lr: 2e-3,
  warmupSteps: 10,
  minLrRatio: 0.1,
  weightDecay: 0,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  clipNorm: 1,
  seed: 0,
};

export function loraScaling(lora: LoraConfig): number {
  return lora.useRslora ? lora.alpha / Math.sqrt(lora.r) : lora.alpha / lora.r;
}

function expectInt(where: string, field: string, value: unknown, min: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    fail(ErrorCodes.CONFIG, `${where}.${field} should be an integer ≥ ${min}, got ${describe(value)}`);
  }
}

function expectNumber(where: string, field: string, value: unknown, min: number, max: number, maxOpen = false): void {
  const ok =
    typeof value === 'number' && Number.isFinite(value) && value >= min && (maxOpen ? value < max : value <= max);
  if (!ok)
    fail(
      ErrorCodes.CONFIG,
      `${where}.${field} should be a number in [${min}, ${max}${maxOpen ? ')' : ']'}, got ${describe(value)}`,
    );
}

const LLAMA_FAMILY = ['llama', 'qwen2', 'mistral'];

export function checkModelConfig(raw: unknown): ModelConfig {
  if (typeof raw !== 'object' || raw === null)
    fail(ErrorCodes.CONFIG, `model config should be an object, got ${describe(raw)}`);
  const c = raw as Record<string, unknown>;
  if (c.model_type === 'gpt2') return checkGpt2Config(c);
  if (!LLAMA_FAMILY.includes(c.model_type as string)) {
    fail(
      ErrorCodes.MODEL,
      `config.model_type ${describe(c.model_type)} is not supported; ` +
        `expected one of ${[...LLAMA_FAMILY, 'gpt2'].join(', ')}`,
    );
  }
  for (const f of [
    'vocab_size',
    'hidden_size',
    'intermediate_size',
    'num_hidden_layers',
    'num_attention_heads',
    'max_position_embeddings',
  ]) {
    expectInt('config', f, c[f], 1);
  }
  const config: LlamaConfig = {
    model_type: c.model_type as LlamaConfig['model_type'],
    vocab_size: c.vocab_size as number,
    hidden_size: c.hidden_size as number,
    intermediate_size: c.intermediate_size as number,
    num_hidden_layers: c.num_hidden_layers as number,
    num_attention_heads: c.num_attention_heads as number,
    num_key_value_heads: (c.num_key_value_heads ?? c.num_attention_heads) as number,
    max_position_embeddings: c.max_position_embeddings as number,
    rms_norm_eps: (c.rms_norm_eps ?? 1e-6) as number,
    rope_theta: (c.rope_theta ?? 10000) as number,
    tie_word_embeddings: (c.tie_word_embeddings ?? false) as boolean,
    attention_bias: (c.attention_bias ?? false) as boolean,
    rope_scaling: checkRopeScaling(c.rope_scaling),
    sliding_window: (c.use_sliding_window === false ? null : (c.sliding_window ?? null)) as number | null,
    bos_token_id: c.bos_token_id as number | undefined,
    eos_token_id: firstId(c.eos_token_id),
    pad_token_id: c.pad_token_id as number | undefined,
  };
  expectInt('config', 'num_key_value_heads', config.num_key_value_heads, 1);
  if (config.sliding_window !== null) expectInt('config', 'sliding_window', config.sliding_window, 1);
  if (typeof c.head_dim === 'number' && c.head_dim !== config.hidden_size / config.num_attention_heads) {
    fail(ErrorCodes.MODEL, `config.head_dim ${c.head_dim} ≠ hidden_size / num_attention_heads is not supported`);
  }
  if (config.hidden_size % config.num_attention_heads !== 0) {
    fail(
      ErrorCodes.CONFIG,
      `config.hidden_size ${config.hidden_size} ` +
        `should be divisible by num_attention_heads ${config.num_attention_heads}`,
    );
  }
  if (config.num_attention_heads % config.num_key_value_heads !== 0) {
    fail(
      ErrorCodes.CONFIG,
      `config.num_attention_heads ${config.num_attention_heads} ` +
        `should be divisible by num_key_value_heads ${config.num_key_value_heads}`,
    );
  }
  if ((config.hidden_size / config.num_attention_heads) % 2 !== 0) {
    fail(ErrorCodes.CONFIG, `head dim ${config.hidden_size / config.num_attention_heads} should be even for RoPE`);
  }
  expectNumber('config', 'rms_norm_eps', config.rms_norm_eps, 0, 1);
  expectNumber('config', 'rope_theta', config.rope_theta, 1, 1e12);
  if (typeof config.tie_word_embeddings !== 'boolean')
    fail(
      ErrorCodes.CONFIG,
      `config.tie_word_embeddings should be a boolean, got ${describe(config.tie_word_embeddings)}`,
    );
  return config;
}

/** eos_token_id may be a list (Llama 3): the first one ends generation. */
function firstId(v: unknown): number | undefined {
  return Array.isArray(v) ? (v[0] as number) : (v as number | undefined);
}

function checkRopeScaling(raw: unknown): RopeScaling | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object') fail(ErrorCodes.CONFIG, `config.rope_scaling should be an object, got ${describe(raw)}`);
  const r = raw as Record<string, unknown>;
  const type = (r.rope_type ?? r.type) as string;
  if (type === 'default') return null;
  if (type !== 'linear' && type !== 'llama3')
    fail(
      ErrorCodes.MODEL,
      `config.rope_scaling type ${describe(type)} is not supported; expected "linear" or "llama3"`,
    );
  expectNumber('config', 'rope_scaling.factor', r.factor, 1e-6, 1e6);
  if (type === 'llama3') {
    expectNumber('config', 'rope_scaling.low_freq_factor', r.low_freq_factor, 1e-6, 1e6);
    expectNumber('config', 'rope_scaling.high_freq_factor', r.high_freq_factor, 1e-6, 1e6);
    expectInt('config', 'rope_scaling.original_max_position_embeddings', r.original_max_position_embeddings, 1);
  }
  return { ...(r as object), rope_type: type, factor: r.factor as number } as RopeScaling;
}

function checkGpt2Config(c: Record<string, unknown>): Gpt2Config {
  for (const f of ['vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head']) expectInt('config', f, c[f], 1);
  const activation = (c.activation_function ?? 'gelu_new') as string;
  if (activation !== 'gelu_new' && activation !== 'gelu_pytorch_tanh')
    fail(ErrorCodes.MODEL, `config.activation_function ${describe(activation)} is not supported; expected "gelu_new"`);
  if (c.tie_word_embeddings === false) fail(ErrorCodes.MODEL, 'GPT-2 with untied embeddings is not supported');
  if ((c.n_embd as number) % (c.n_head as number) !== 0)
    fail(ErrorCodes.CONFIG, `config.n_embd ${c.n_embd} should be divisible by n_head ${c.n_head}`);
  const config: Gpt2Config = {
    model_type: 'gpt2',
    vocab_size: c.vocab_size as number,
    n_positions: c.n_positions as number,
    n_embd: c.n_embd as number,
    n_layer: c.n_layer as number,
    n_head: c.n_head as number,
    layer_norm_epsilon: (c.layer_norm_epsilon ?? 1e-5) as number,
    activation_function: activation as Gpt2Config['activation_function'],
    tie_word_embeddings: true,
    bos_token_id: c.bos_token_id as number | undefined,
    eos_token_id: firstId(c.eos_token_id),
    pad_token_id: c.pad_token_id as number | undefined,
  };
  expectNumber('config', 'layer_norm_epsilon', config.layer_norm_epsilon, 0, 1);
  return config;
}

/** How many positions the model can attend over. */
export const contextLength = (c: ModelConfig) => (c.model_type === 'gpt2' ? c.n_positions : c.max_position_embeddings);

export function checkLoraConfig(partial: Partial<LoraConfig>): LoraConfig {
  const lora: LoraConfig = { ...DEFAULT_LORA, ...partial };
  expectInt('lora', 'r', lora.r, 1);
  expectNumber('lora', 'alpha', lora.alpha, Number.MIN_VALUE, 1e6);
  expectNumber('lora', 'dropout', lora.dropout, 0, 1, true);
  if (!Array.isArray(lora.targetModules) || lora.targetModules.length === 0) {
    fail(
      ErrorCodes.CONFIG,
      `lora.targetModules should be a non-empty list of ${LINEAR_MODULES.join(', ')}, ` +
        `got ${describe(lora.targetModules)}`,
    );
  }
  for (const m of lora.targetModules) {
    if (!(LINEAR_MODULES as readonly string[]).includes(m)) {
      fail(ErrorCodes.CONFIG, `lora.targetModules has ${describe(m)}; expected one of ${LINEAR_MODULES.join(', ')}`);
    }
  }
  if (new Set(lora.targetModules).size !== lora.targetModules.length)
    fail(ErrorCodes.CONFIG, `lora.targetModules lists a module twice: ${lora.targetModules.join(',')}`);
  if (lora.init !== 'kaiming' && lora.init !== 'gaussian')
    fail(ErrorCodes.CONFIG, `lora.init should be "kaiming" or "gaussian", got ${describe(lora.init)}`);
  if (typeof lora.useRslora !== 'boolean')
    fail(ErrorCodes.CONFIG, `lora.useRslora should be a boolean, got ${describe(lora.useRslora)}`);
  return lora;
}

export function checkTrainConfig(partial: Partial<TrainConfig>): TrainConfig {
  const t: TrainConfig = { ...DEFAULT_TRAIN, ...partial };
  expectInt('train', 'steps', t.steps, 1);
  expectInt('train', 'globalBatch', t.globalBatch, 1);
  expectInt('train', 'microBatch', t.microBatch, 1);
  if (t.globalBatch % t.microBatch !== 0) {
    fail(
      ErrorCodes.CONFIG,
      `train.globalBatch ${t.globalBatch} should be a multiple of train.microBatch ${t.microBatch}`,
    );
  }
  expectNumber('train', 'lr', t.lr, 0, 10);
  expectInt('train', 'warmupSteps', t.warmupSteps, 0);
  expectNumber('train', 'minLrRatio', t.minLrRatio, 0, 1);
  expectNumber('train', 'weightDecay', t.weightDecay, 0, 10);
  expectNumber('train', 'beta1', t.beta1, 0, 1, true);
  expectNumber('train', 'beta2', t.beta2, 0, 1, true);
  expectNumber('train', 'eps', t.eps, 0, 1);
  expectNumber('train', 'clipNorm', t.clipNorm, 0, 1e9);
  expectInt('train', 'seed', t.seed, 0);
  if (t.reductionBlock === undefined) delete t.reductionBlock;
  else expectInt('train', 'reductionBlock', t.reductionBlock, 1);
  return t;
}
