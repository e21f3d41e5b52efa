/**
 * Base-model weights from safetensors bytes (platform-neutral): names mapped to the canonical
 * Hugging Face ones, F16/BF16 widened to float32, checked against the config. Each file's tensors
 * are made one at a time, so peak memory is about one file plus the weights already made.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import { ErrorCodes, fail } from '../errors.ts';
import { decodeTensorData, readSafetensorsHeader } from '../formats/safetensors.ts';
import { checkWeights } from '../lora/params.ts';
import { canonicalName, parameterShapes } from './causal-lm.ts';

/** Adds one safetensors file's tensors to `weights`. */
export function addSafetensorsWeights(config: ModelConfig, bytes: Uint8Array, weights: Map<string, tf.Tensor>): void {
  const shapes = parameterShapes(config);
  const { entries, dataStart } = readSafetensorsHeader(bytes);
  for (const [fileName, entry] of entries) {
    const name = canonicalName(config, fileName);
    if (name === null) continue;
    if (!shapes.has(name)) fail(ErrorCodes.MODEL, `checkpoint tensor ${fileName} is not part of a ${config.model_type} model with this config.json`);
    if (weights.has(name)) fail(ErrorCodes.MODEL, `checkpoint tensor ${name} appears twice`);
    const [begin, end] = entry.data_offsets;
    const t = decodeTensorData(fileName, entry, bytes.subarray(dataStart + begin, dataStart + end));
    weights.set(name, tf.tensor(t.data, t.shape, 'float32'));
  }
}

export function weightsFromSafetensors(config: ModelConfig, files: Uint8Array[]): Map<string, tf.Tensor> {
  const weights = new Map<string, tf.Tensor>();
  for (const bytes of files) addSafetensorsWeights(config, bytes, weights);
  checkWeights(config, weights);
  return weights;
}
