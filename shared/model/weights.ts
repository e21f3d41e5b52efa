/** Base-model weights from safetensors bytes, checked against the config (platform-neutral). */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import { decodeSafetensors } from '../formats/safetensors.ts';
import { checkWeights } from '../lora/params.ts';

export function weightsFromSafetensors(config: ModelConfig, files: Uint8Array[]): Map<string, tf.Tensor> {
  const weights = new Map<string, tf.Tensor>();
  for (const bytes of files) {
    for (const [name, entry] of decodeSafetensors(bytes).tensors) {
      weights.set(name, tf.tensor(entry.data, entry.shape, entry.data instanceof Int32Array ? 'int32' : 'float32'));
    }
  }
  checkWeights(config, weights);
  return weights;
}
