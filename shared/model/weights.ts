/**
 * Collects a model's weights from checkpoint tensors, whatever the source (a file read tensor by
 * tensor in Node, bytes fetched in a browser): maps names to the canonical ones, refuses tensors
 * that are not part of the model or appear twice, widens to float32, and checks completeness.
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
import type { BaseWeights } from './compact-base.ts';
import type { CompactWeight } from './compact-linear.ts';

export interface StoredTensor {
  /** the checkpoint's own name (e.g. without GPT-2's "transformer." prefix) */
  fileName: string;
  file: string;
  dtype: SafetensorsDType;
}

/** Turns a checkpoint tensor (canonical name, float32 values, stored shape) into a compact matrix, or null to keep it float32. */
export type WeightConverter = (name: string, values: Float32Array, shape: number[]) => CompactWeight | null;

export class WeightCollector {
  readonly weights = new Map<string, tf.Tensor>();
  /** the tensors `convert` made compact */
  readonly compact = new Map<string, CompactWeight>();
  /** canonical name → where and how it was stored, for writing a merged model back the same way */
  readonly stored = new Map<string, StoredTensor>();
  private readonly shapes: Map<string, number[]>;

  /** convert: quantize tensors as they are read (a compact base), so the float32 model never sits in memory whole */
  constructor(
    readonly config: ModelConfig,
    private readonly convert?: WeightConverter,
  ) {
    this.shapes = parameterShapes(config);
  }

  /** Adds one checkpoint tensor; `read` is called only for tensors the model uses. */
  add(file: string, fileName: string, entry: HeaderEntry, read: () => TensorEntry): void {
    const name = canonicalName(this.config, fileName);
    if (name === null) return;
    if (!this.shapes.has(name))
      fail(
        ErrorCodes.MODEL,
        `${file}: tensor ${fileName} is not part of a ${this.config.model_type} model with this config.json`,
      );
    if (this.weights.has(name) || this.compact.has(name))
      fail(ErrorCodes.MODEL, `tensor ${name} appears twice (second time in ${file})`);
    const t = read();
    // `read` may return a view of a buffer the loader reuses for the next tensor (node/load-weights.ts).
    // Only wasm copies the values into its own heap inside tf.tensor; cpu, tfjs-node, webgl and webgpu
    // keep this very array (the GPU backends upload it on first use), so without a copy every weight
    // would end up holding the last tensor read. wasm keeps the single copy (bench:load's peak RSS).
    const compact = t.data instanceof Float32Array ? this.convert?.(name, t.data, t.shape) : null;
    if (compact) this.compact.set(name, compact);
    else this.weights.set(name, tf.tensor(tf.getBackend() === 'wasm' ? t.data : t.data.slice(), t.shape, 'float32'));
    this.stored.set(name, { fileName, file, dtype: entry.dtype });
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

  /** Every tensor as float32 (no converter). */
  finish(): Map<string, tf.Tensor> {
    if (this.compact.size > 0) fail(ErrorCodes.MODEL, 'this checkpoint was read into a compact base: use finishBase');
    checkWeights(this.config, this.weights);
    return this.weights;
  }

  /** The base as FrozenBase takes it: the compact matrices and the float32 tensors. */
  finishBase(): BaseWeights {
    const base: BaseWeights = new Map<string, tf.Tensor | CompactWeight>([...this.weights, ...this.compact]);
    checkWeights(this.config, base);
    return base;
  }
}
