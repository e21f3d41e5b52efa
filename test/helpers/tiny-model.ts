/** A tiny random Llama-style model for fast tests: config, weights and (optionally) a model directory on disk. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { Gpt2Config, LlamaConfig, ModelConfig } from '../../shared/config.ts';
import { CharTokenizer } from '../../shared/data/char-tokenizer.ts';
import { DEMO_ALPHABET } from '../../shared/data/demo-tasks.ts';
import { encodeSafetensors } from '../../shared/formats/safetensors.ts';
import { parameterShapes } from '../../shared/model/causal-lm.ts';
import { Rng } from '../../shared/rng.ts';

export function tinyConfig(overrides: Partial<LlamaConfig> = {}): LlamaConfig {
  return {
    model_type: 'llama',
    vocab_size: 20,
    hidden_size: 16,
    intermediate_size: 32,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 32,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    ...overrides,
  };
}

/** A tiny GPT-2 (Conv1D weights stored (d_in, d_out), tied embedding). */
export function tinyGpt2Config(overrides: Partial<Gpt2Config> = {}): Gpt2Config {
  return {
    model_type: 'gpt2',
    vocab_size: 27,
    n_positions: 16,
    n_embd: 16,
    n_layer: 2,
    n_head: 2,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    tie_word_embeddings: true,
    ...overrides,
  };
}

export function randomArrays(
  config: ModelConfig,
  seed: number,
  std = 0.3,
): Map<string, { data: Float32Array; shape: number[] }> {
  const rng = new Rng(seed);
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [name, shape] of parameterShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = shape.length === 1 ? 1 + 0.1 * rng.normal() : std * rng.normal();
    out.set(name, { data, shape });
  }
  return out;
}

export function randomWeights(config: ModelConfig, seed: number, std = 0.3): Map<string, tf.Tensor> {
  return new Map([...randomArrays(config, seed, std)].map(([n, a]) => [n, tf.tensor(a.data, a.shape)]));
}

/** Writes a model directory for the demo alphabet (config.json, model.safetensors, vocab.json). */
export function writeTinyModelDir(dir: string, seed = 1, overrides: Partial<LlamaConfig> = {}): ModelConfig {
  const tok = CharTokenizer.fromAlphabet(DEMO_ALPHABET);
  const config = tinyConfig({ vocab_size: tok.size, tie_word_embeddings: true, ...overrides });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'vocab.json'), JSON.stringify(tok.vocab));
  writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(Object.fromEntries(randomArrays(config, seed, 0.2))));
  return config;
}
