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

export interface StoredTensor {
  /** the checkpoint's own name (e.g. without GPT-2's "transformer." prefix) */
  fileName: string;
  file: string;
  dtype: SafetensorsDType;
}

export class WeightCollector {
  readonly weights = new Map<string, tf.Tensor>();
  /** canonical name → where and how it was stored, for writing a merged model back the same way */
  readonly stored = new Map<string, StoredTensor>();
  private readonly shapes: Map<string, number[]>;

  constructor(readonly config: ModelConfig) {
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
    if (this.weights.has(name)) fail(ErrorCodes.MODEL, `tensor ${name} appears twice (second time in ${file})`);
    const t = read();
    // `read` may return a view of a buffer the loader reuses for the next tensor (node/load-weights.ts).
    // Only wasm copies the values into its own heap inside tf.tensor; cpu, tfjs-node, webgl and webgpu
    // keep this very array (the GPU backends upload it on first use), so without a copy every weight
    // would end up holding the last tensor read. wasm keeps the single copy (bench:load's peak RSS).
    const data = tf.getBackend() === 'wasm' ? t.data : t.data.slice();
    this.weights.set(name, tf.tensor(data, t.shape, 'float32'));
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

  finish(): Map<string, tf.Tensor> {
    checkWeights(this.config, this.weights);
    return this.weights;
  }
}
