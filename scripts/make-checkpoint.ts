/**
 * Writes a random-weight checkpoint in Hugging Face layout at the exact shape of a real model, so
 * memory and speed figures for real model sizes can be reproduced without downloading weights:
 *
 *   npx tsx scripts/make-checkpoint.ts --shape qwen2.5-0.5b|smollm2-360m|llama-3.2-1b|tiny --out DIR
 *     [--seed N] [--dtype bf16|f32] [--max-shard-bytes N] [--force]
 *
 * DIR gets config.json (the real model's published config, torch_dtype set to --dtype), the
 * weights under their Hugging Face names (model.safetensors, or model-0000i-of-0000n.safetensors
 * shards and model.safetensors.index.json when the total is over --max-shard-bytes, default 5 GB as
 * transformers' save_pretrained) and a tokenizer: the byte-BPE test fixture
 * (test/fixtures/tokenizers/byte-bpe/, 267 tokens). config.vocab_size stays the real model's, larger
 * than the tokenizer, which openModelDir accepts (the embedding rows past the tokenizer are unused).
 *
 * Initialisation follows transformers' _init_weights: matrices N(0, initializer_range²), biases 0,
 * RMSNorm weights 1. Each tensor draws from its own stream, mixSeed(seed, hash of its name), so the
 * bytes depend only on the shape, seed and dtype (not on the shard split). Tensors are generated
 * and written in chunks of 2²⁰ values, so its buffers stay at a few MB whatever the model size.
 */
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { packagePath } from '../node/package-root.ts';
import { checkModelConfig } from '../shared/config.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { f32ToBf16 } from '../shared/formats/half.ts';
import { parameterShapes } from '../shared/model/causal-lm.ts';
import { mixSeed, Rng } from '../shared/rng.ts';

/**
 * The shapes, as config.json fields. The three real ones are the published config.json of each
 * model's Hugging Face repository (keys as transformers writes them, sorted), copied field for field
 * except torch_dtype, which follows --dtype:
 *  - qwen2.5-0.5b: Qwen/Qwen2.5-0.5B (the base model; -Instruct differs only in eos_token_id 151645).
 *    Qwen2 has q/k/v biases and no attention_bias field: the architecture implies them
 *    (shared/model/llama.ts hasBias). sliding_window is off (use_sliding_window: false).
 *  - smollm2-360m: HuggingFaceTB/SmolLM2-360M (the base model). Its initializer_range (SmolLM2-135M
 *    publishes 1/√576) and transformers_version are not verified against the hub file; neither
 *    changes a shape (initializer_range only sets the init std here).
 *  - llama-3.2-1b: meta-llama/Llama-3.2-1B, with its llama3 rope_scaling and head_dim 64.
 * tiny is ours: a Qwen2-family model (q/k/v biases, GQA, tied embeddings) of 1.26M parameters
 * (2.5 MB in bf16) for tests; its vocab_size covers the byte-BPE fixture's 267 tokens.
 */
export const SHAPES = {
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151643,
    hidden_act: 'silu',
    hidden_size: 896,
    initializer_range: 0.02,
    intermediate_size: 4864,
    max_position_embeddings: 32768,
    max_window_layers: 24,
    model_type: 'qwen2',
    num_attention_heads: 14,
    num_hidden_layers: 24,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.40.1',
    use_cache: true,
    use_mrope: false,
    use_sliding_window: false,
    vocab_size: 151936,
  },
  'smollm2-360m': {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 0,
    eos_token_id: 0,
    hidden_act: 'silu',
    hidden_size: 960,
    initializer_range: 0.02,
    intermediate_size: 2560,
    is_llama_config: true,
    max_position_embeddings: 8192,
    model_type: 'llama',
    num_attention_heads: 15,
    num_hidden_layers: 32,
    num_key_value_heads: 5,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_interleaved: false,
    rope_scaling: null,
    rope_theta: 100000,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.42.3',
    use_cache: true,
    vocab_size: 49152,
  },
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: 128001,
    head_dim: 64,
    hidden_act: 'silu',
    hidden_size: 2048,
    initializer_range: 0.02,
    intermediate_size: 8192,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: 32,
    num_hidden_layers: 16,
    num_key_value_heads: 8,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: {
      factor: 32.0,
      high_freq_factor: 4.0,
      low_freq_factor: 1.0,
      original_max_position_embeddings: 8192,
      rope_type: 'llama3',
    },
    rope_theta: 500000.0,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    transformers_version: '4.45.0.dev0',
    use_cache: true,
    vocab_size: 128256,
  },
  tiny: {
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    hidden_act: 'silu',
    hidden_size: 128,
    initializer_range: 0.02,
    intermediate_size: 352,
    max_position_embeddings: 2048,
    model_type: 'qwen2',
    num_attention_heads: 4,
    num_hidden_layers: 4,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 2048,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 4096,
  },
} as const satisfies Record<string, Record<string, unknown>>;

export type ShapeName = keyof typeof SHAPES;
export const SHAPE_NAMES = Object.keys(SHAPES) as ShapeName[];
export type CheckpointDType = 'bf16' | 'f32';

/** transformers' save_pretrained default max_shard_size ("5GB"). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;
export const TOKENIZER_FIXTURE = packagePath('test', 'fixtures', 'tokenizers', 'byte-bpe');
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'];
/** the weight files this script writes (and removes from an --out it writes into again) */
const WEIGHT_FILE = /^model(-\d{5}-of-\d{5})?\.safetensors(\.partial)?$/;
/** values generated and written at a time */
const CHUNK = 1 << 20;

export interface WriteCheckpointOptions {
  shape: ShapeName;
  out: string;
  seed?: number;
  dtype?: CheckpointDType;
  maxShardBytes?: number;
  /** write into a non-empty directory, replacing the files this script writes */
  force?: boolean;
  log?: (line: string) => void;
}

export interface WrittenCheckpoint {
  dir: string;
  /** the weight files, in order */
  weightFiles: string[];
  parameters: number;
  /** bytes of the weight files (headers included) */
  weightBytes: number;
  /** bytes of every file written */
  totalBytes: number;
  seconds: number;
}

interface TensorPlan {
  name: string;
  shape: number[];
  bytes: number;
}

const ITEM_BYTES: Record<CheckpointDType, number> = { bf16: 2, f32: 4 };
const SAFETENSORS_DTYPE: Record<CheckpointDType, string> = { bf16: 'BF16', f32: 'F32' };
const TORCH_DTYPE: Record<CheckpointDType, string> = { bf16: 'bfloat16', f32: 'float32' };

/** config.json of a shape as written: the preset with torch_dtype following the weights' dtype. */
export function shapeConfig(shape: ShapeName, dtype: CheckpointDType = 'bf16'): Record<string, unknown> {
  return { ...structuredClone(SHAPES[shape]), torch_dtype: TORCH_DTYPE[dtype] };
}

/** FNV-1a over the name's UTF-16 code units: a tensor's own random stream. */
function nameHash(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Fills out with the next values of a tensor: RMSNorm weights 1, biases 0, the rest N(0, std²). */
function fillValues(name: string, rng: Rng, std: number, out: Float32Array): void {
  if (name.endsWith('norm.weight')) out.fill(1);
  else if (name.endsWith('.bias')) out.fill(0);
  else for (let i = 0; i < out.length; i++) out[i] = std * rng.normal();
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
}

/** The safetensors header for tensors in this order: JSON padded with spaces to a multiple of 8 bytes. */
function headerBytes(tensors: TensorPlan[], dtype: CheckpointDType, metadata: Record<string, string>): Uint8Array {
  const entries: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    entries[t.name] = { dtype: SAFETENSORS_DTYPE[dtype], shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(entries));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/** Splits tensors (in order) into shards of at most maxBytes of data each; a larger tensor gets its own. */
function splitShards(tensors: TensorPlan[], maxBytes: number): TensorPlan[][] {
  const shards: TensorPlan[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (size > 0 && size + t.bytes > maxBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(t);
    size += t.bytes;
  }
  return shards;
}

/** transformers' shard names: model-00001-of-00003.safetensors */
const shardName = (i: number, n: number) =>
  `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;

const formatBytes = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);

export function writeCheckpoint(options: WriteCheckpointOptions): WrittenCheckpoint {
  const { shape, seed = 0, dtype = 'bf16', maxShardBytes = DEFAULT_MAX_SHARD_BYTES, log = () => {} } = options;
  if (!Object.hasOwn(SHAPES, shape))
    fail(ErrorCodes.CONFIG, `--shape ${JSON.stringify(shape)} is not one of ${SHAPE_NAMES.join(', ')}`);
  if (!Number.isSafeInteger(seed) || seed < 0)
    fail(ErrorCodes.CONFIG, `--seed should be an integer ≥ 0, got ${JSON.stringify(seed)}`);
  if (!Object.hasOwn(ITEM_BYTES, dtype))
    fail(ErrorCodes.CONFIG, `--dtype should be bf16 or f32, got ${JSON.stringify(dtype)}`);
  if (!Number.isSafeInteger(maxShardBytes) || maxShardBytes < 1)
    fail(ErrorCodes.CONFIG, `--max-shard-bytes should be a positive integer, got ${JSON.stringify(maxShardBytes)}`);
  const dir = resolve(options.out);
  if (existsSync(dir) && readdirSync(dir).length > 0 && !options.force)
    fail(ErrorCodes.CONFIG, `--out ${options.out} is not empty; pass --force to write into it`);
  mkdirSync(dir, { recursive: true });
  // weight files of an earlier write would be read with these (an index left over names other shards)
  for (const name of readdirSync(dir))
    if (WEIGHT_FILE.test(name) || name === 'model.safetensors.index.json') rmSync(join(dir, name));

  const started = performance.now();
  const rawConfig = shapeConfig(shape, dtype);
  const config = checkModelConfig(rawConfig);
  const std = rawConfig.initializer_range as number;
  const tensors: TensorPlan[] = [...parameterShapes(config)]
    .map(([name, dims]) => ({ name, shape: dims, bytes: dims.reduce((a, b) => a * b, 1) * ITEM_BYTES[dtype] }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const parameters = tensors.reduce((n, t) => n + t.bytes / ITEM_BYTES[dtype], 0);
  const dataBytes = tensors.reduce((n, t) => n + t.bytes, 0);
  const shards = splitShards(tensors, maxShardBytes);
  const names = shards.length === 1 ? ['model.safetensors'] : shards.map((_, i) => shardName(i, shards.length));
  log(
    `${shape}: ${parameters.toLocaleString('en')} parameters, ${formatBytes(dataBytes)} of ${dtype} weights ` +
      `in ${names.length} file${names.length > 1 ? 's' : ''}, seed ${seed} → ${dir}`,
  );

  const metadata = { format: 'pt', 'loramesh.shape': shape, 'loramesh.seed': String(seed), 'loramesh.init': 'random' };
  const values = new Float32Array(CHUNK);
  let written = 0;
  let nextReport = 0.1;
  let weightBytes = 0;
  shards.forEach((shard, s) => {
    const path = join(dir, names[s]);
    const partial = `${path}.partial`;
    const fd = openSync(partial, 'w');
    try {
      const header = headerBytes(shard, dtype, metadata);
      writeAll(fd, header);
      weightBytes += header.length;
      for (const t of shard) {
        const rng = new Rng(mixSeed(seed, nameHash(t.name)));
        const count = t.bytes / ITEM_BYTES[dtype];
        for (let at = 0; at < count; at += CHUNK) {
          const chunk = values.subarray(0, Math.min(CHUNK, count - at));
          fillValues(t.name, rng, std, chunk);
          const bytes =
            dtype === 'f32'
              ? new Uint8Array(chunk.buffer, 0, chunk.byteLength)
              : new Uint8Array(f32ToBf16(chunk).buffer);
          writeAll(fd, bytes);
          written += bytes.length;
          if (written >= nextReport * dataBytes) {
            const seconds = ((performance.now() - started) / 1000).toFixed(1);
            const percent = Math.floor((100 * written) / dataBytes);
            log(`  ${formatBytes(written)} / ${formatBytes(dataBytes)} (${percent}%), ${seconds} s`);
            nextReport = Math.floor((10 * written) / dataBytes) / 10 + 0.1;
          }
        }
        weightBytes += t.bytes;
      }
    } finally {
      closeSync(fd);
    }
    renameSync(partial, path);
  });

  let totalBytes = weightBytes;
  const writeJson = (name: string, value: unknown) => {
    const text = `${JSON.stringify(value, null, 2)}\n`;
    writeFileSync(join(dir, name), text);
    totalBytes += Buffer.byteLength(text);
  };
  if (names.length > 1) {
    const weightMap = Object.fromEntries(shards.flatMap((shard, s) => shard.map((t) => [t.name, names[s]])));
    writeJson('model.safetensors.index.json', { metadata: { total_size: dataBytes }, weight_map: weightMap });
  }
  writeJson('config.json', rawConfig);
  for (const file of TOKENIZER_FILES) {
    copyFileSync(join(TOKENIZER_FIXTURE, file), join(dir, file));
    totalBytes += statSync(join(dir, file)).size;
  }
  const seconds = (performance.now() - started) / 1000;
  log(
    `wrote ${dir}: ${weightBytes.toLocaleString('en')} bytes of weights (${formatBytes(weightBytes)}), ` +
      `${totalBytes.toLocaleString('en')} bytes in all with config and tokenizer, ${seconds.toFixed(1)} s`,
  );
  return { dir, weightFiles: names.map((n) => join(dir, n)), parameters, weightBytes, totalBytes, seconds };
}

function main(): void {
  const { values } = parseArgs({
    options: {
      shape: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string', default: '0' },
      dtype: { type: 'string', default: 'bf16' },
      'max-shard-bytes': { type: 'string', default: String(DEFAULT_MAX_SHARD_BYTES) },
      force: { type: 'boolean', default: false },
    },
  });
  if (!values.shape || !values.out) {
    console.error(
      `usage: npx tsx scripts/make-checkpoint.ts --shape ${SHAPE_NAMES.join('|')} --out DIR ` +
        '[--seed N] [--dtype bf16|f32] [--max-shard-bytes N] [--force]',
    );
    process.exit(2);
  }
  try {
    writeCheckpoint({
      shape: values.shape as ShapeName,
      out: values.out,
      seed: Number(values.seed),
      dtype: values.dtype as CheckpointDType,
      maxShardBytes: Number(values['max-shard-bytes']),
      force: values.force,
      log: (line) => console.log(line),
    });
  } catch (err) {
    console.error((err as Error).message);
    process.exit((err as { code?: string }).code === ErrorCodes.CONFIG ? 2 : 1);
  }
}

// Run as a script from source only: bundled into another entry (the offline bundle), import.meta.url is
// that entry's, which would otherwise match.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href && import.meta.url.endsWith('.ts'))
  main();
