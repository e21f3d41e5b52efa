/**
 * What every architecture provides: a forward pass over a ParamSource, and a description of its
 * parameters and linear layers (names, shapes, storage layout) that loading, LoRA and merging use.
 */
import type { ModelConfig } from '../config.ts';
import * as gpt2 from './gpt2.ts';
import * as llama from './llama.ts';
import type { CausalLM, LinearStorage } from './types.ts';

export type { KvCache } from './attention.ts';
export type { CausalLM, FrozenProducts, LinearStorage, ParamSource } from './types.ts';

export function createModel(config: ModelConfig): CausalLM {
  return config.model_type === 'gpt2' ? new gpt2.Gpt2Model(config) : new llama.LlamaModel(config);
}

/** Every linear layer's module path in forward order, lm_head last. */
export function linearModulePaths(config: ModelConfig): string[] {
  return config.model_type === 'gpt2' ? gpt2.linearModulePaths(config) : llama.linearModulePaths(config);
}

/** (d_out, d_in) of the linear at modulePath, whatever its storage layout. */
export function linearShape(config: ModelConfig, modulePath: string): [number, number] {
  return config.model_type === 'gpt2' ? gpt2.linearShape(config, modulePath) : llama.linearShape(config, modulePath);
}

export function linearStorage(config: ModelConfig, modulePath: string): LinearStorage {
  return config.model_type === 'gpt2' ? gpt2.linearStorage(modulePath) : llama.linearStorage(config, modulePath);
}

/** Every parameter tensor with its stored shape, by canonical Hugging Face name. */
export function parameterShapes(config: ModelConfig): Map<string, number[]> {
  return config.model_type === 'gpt2' ? gpt2.parameterShapes(config) : llama.parameterShapes(config);
}

/**
 * Maps checkpoint tensor names to the canonical ones (GPT-2 hub checkpoints omit the
 * "transformer." prefix) and drops tensors the model does not use (attention-mask buffers,
 * rotary caches). Unknown tensors are an error: they usually mean a different architecture.
 */
export function canonicalName(config: ModelConfig, name: string): string | null {
  if (config.model_type === 'gpt2') {
    if (/\.attn\.(masked_)?bias$/.test(name)) return null;
    if (name === 'lm_head.weight') return null; // tied to wte
    return name.startsWith('transformer.') ? name : `transformer.${name}`;
  }
  if (name.endsWith('.rotary_emb.inv_freq')) return null;
  if (name === 'lm_head.weight' && config.tie_word_embeddings) return null;
  return name;
}

/** The token-embedding table's name. */
export const embeddingName = (config: ModelConfig) =>
  config.model_type === 'gpt2' ? 'transformer.wte.weight' : 'model.embed_tokens.weight';

export function moduleKind(modulePath: string): string {
  return modulePath.slice(modulePath.lastIndexOf('.') + 1);
}
