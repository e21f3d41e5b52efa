/**
 * Collects a model's weights from checkpoint tensors, whatever the source (a file read tensor by
 * tensor in Node, bytes fetched in a browser): maps names to the canonical ones, refuses tensors
 * that are not part of the model or appear twice, widens to float32, and checks completeness.
 * CheckpointIndex does the naming from the headers alone, for loaders that read tensors themselves
 * (node/compact-file.ts quantizes a checkpoint tensor by tensor).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import { ErrorCodes, fail } from '../errors.ts';
import {
  decodeTensorData,
  readSafetensorsHeader,
  type HeaderEntry,
  type SafetensorsDType,
  type TensorEntry,
} from '../formats/safetensors.ts';
import { checkWeights } from '../lora/params.ts';
import { canonicalName, parameterShapes } from './causal-lm.ts';

export interface StoredTensor {
  /** the checkpoint's own name (e.g. without GPT-2's "transformer." prefix) */
  fileName: string;
  file: string;
  dtype: SafetensorsDType;
  /** the header entry: shape and byte span within its file's data section */
  entry: HeaderEntry;
}

/**
 * Which checkpoint tensor is which model tensor, from the files' headers alone: maps names to the
 * canonical ones, refuses tensors that are not part of the model, appear twice or are not float or
 * integer values, and checks completeness and shapes. A loader reads each tensor after it was named.
 */
export class CheckpointIndex {
  /** canonical name → where and how it was stored, in the order the files list them */
  readonly stored = new Map<string, StoredTensor>();
  private readonly shapes: Map<string, number[]>;

  constructor(readonly config: ModelConfig) {
    this.shapes = parameterShapes(config);
  }

  /** The canonical name of a checkpoint tensor, or null for one the model does not use. */
  add(file: string, fileName: string, entry: HeaderEntry): string | null {
    const name = canonicalName(this.config, fileName);
    if (name === null) return null;
    if (!this.shapes.has(name))
      fail(
        ErrorCodes.MODEL,
        `${file}: tensor ${fileName} is not part of a ${this.config.model_type} model with this config.json`,
      );
    if (this.stored.has(name)) fail(ErrorCodes.MODEL, `tensor ${name} appears twice (second time in ${file})`);
    if (entry.dtype === 'U8')
      fail(
        ErrorCodes.MODEL,
        `${file}: tensor ${fileName} is U8 (a quantized checkpoint?); base models are read from F32, F16 or BF16`,
      );
    this.stored.set(name, { fileName, file, dtype: entry.dtype, entry });
    return name;
  }

  /** Every tensor of the config is there with its shape (else LM_ERR_MODEL naming it). */
  finish(): void {
    checkWeights(this.config, new Map([...this.stored].map(([name, s]) => [name, { shape: s.entry.shape }])));
  }
}

/** A tensor's values as float32 (integer checkpoints are widened). */
export function floatValues(t: TensorEntry): Float32Array {
  return t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
}

export class WeightCollector {
  readonly weights = new Map<string, tf.Tensor>();
  private readonly index: CheckpointIndex;

  constructor(readonly config: ModelConfig) {
    this.index = new CheckpointIndex(config);
  }

  /** canonical name → where and how it was stored, for writing a merged model back the same way */
  get stored(): Map<string, StoredTensor> {
    return this.index.stored;
  }

  /** Adds one checkpoint tensor; `read` is called only for tensors the model uses. */
  add(file: string, fileName: string, entry: HeaderEntry, read: () => TensorEntry): void {
    const name = this.index.add(file, fileName, entry);
    if (name === null) return;
    const t = read();
    // `read` may return a view of a buffer the loader reuses for the next tensor (node/load-weights.ts).
    // Only wasm copies the values into its own heap inside tf.tensor; cpu, tfjs-node, webgl and webgpu
    // keep this very array (the GPU backends upload it on first use), so without a copy every weight
    // would end up holding the last tensor read. wasm keeps the single copy (bench:load's peak RSS).
    const data = tf.getBackend() === 'wasm' ? t.data : t.data.slice();
    this.weights.set(name, tf.tensor(data, t.shape, 'float32'));
  }

  /** Adds every tensor of a safetensors file held in memory. */
  addFile(file: string, bytes: Uint8Array): void {
    const { entries, dataStart } = readSafetensorsHeader(bytes);
    for (const [fileName, entry] of entries) {
      const [begin, end] = entry.data_offsets;
      this.add(file, fileName, entry, () =>
        decodeTensorData(fileName, entry, bytes.subarray(dataStart + begin, dataStart + end)),
      );
    }
  }

  finish(): Map<string, tf.Tensor> {
    this.index.finish();
    return this.weights;
  }
}
