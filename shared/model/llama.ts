/**
 * A decoder-only transformer of the Llama family (Llama, SmolLM, Qwen2-style without biases,
 * Mistral-style GQA): RMSNorm, rotary position embeddings, SwiGLU MLP, separate q/k/v/o
 * projections, grouped-query attention, tied or untied embeddings. Parameter names are Hugging
 * Face's, so HF checkpoints load and PEFT adapters export without renaming.
 *
 * The model owns no weights: every parameter comes from a ParamSource, which decides whether a
 * linear layer is frozen (with or without a LoRA branch) or trainable. That keeps one forward pass
 * for LoRA training, full pretraining and inference.
 *
 * Shapes: B batch, T new positions, S all key positions (past + new), d hidden, H query heads,
 * Hkv key/value heads, G = H / Hkv queries per key head, hs head size, V vocabulary.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../config.ts';
import { constMatMul } from './linear-ops.ts';

export interface ParamSource {
  /** y = x·Wᵀ for the linear layer at modulePath, plus its LoRA branch when it has one */
  linear(modulePath: string, x: tf.Tensor2D): tf.Tensor2D;
  /** rows of model.embed_tokens.weight for token ids (N) → (N, d) */
  embed(ids: tf.Tensor1D): tf.Tensor2D;
  /** a parameter that is not a linear weight or the embedding (norm weights) */
  param(name: string): tf.Tensor;
}

/** Keys and values of the positions seen so far, one entry per layer: (B·Hkv, S, hs). */
export interface KvCache {
  keys: tf.Tensor3D[];
  values: tf.Tensor3D[];
  length: number;
}

export const layerPrefix = (i: number) => `model.layers.${i}`;

/** The module paths of every linear layer, in forward order (lm_head last). */
export function linearModulePaths(config: ModelConfig): string[] {
  const paths: string[] = [];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = layerPrefix(i);
    paths.push(`${p}.self_attn.q_proj`, `${p}.self_attn.k_proj`, `${p}.self_attn.v_proj`, `${p}.self_attn.o_proj`);
    paths.push(`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`, `${p}.mlp.down_proj`);
  }
  paths.push('lm_head');
  return paths;
}

/** Shape (d_out, d_in) of the weight at a module path. */
export function linearShape(config: ModelConfig, modulePath: string): [number, number] {
  const d = config.hidden_size;
  const hs = d / config.num_attention_heads;
  const kv = config.num_key_value_heads * hs;
  const module = modulePath.slice(modulePath.lastIndexOf('.') + 1);
  switch (module) {
    case 'q_proj': return [config.num_attention_heads * hs, d];
    case 'k_proj': case 'v_proj': return [kv, d];
    case 'o_proj': return [d, config.num_attention_heads * hs];
    case 'gate_proj': case 'up_proj': return [config.intermediate_size, d];
    case 'down_proj': return [d, config.intermediate_size];
    case 'lm_head': return [config.vocab_size, d];
    default: throw new Error(`not a linear module: ${modulePath}`);
  }
}

/** Every parameter tensor of the model with its shape, by Hugging Face name. */
export function parameterShapes(config: ModelConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const d = config.hidden_size;
  shapes.set('model.embed_tokens.weight', [config.vocab_size, d]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    shapes.set(`${layerPrefix(i)}.input_layernorm.weight`, [d]);
    shapes.set(`${layerPrefix(i)}.post_attention_layernorm.weight`, [d]);
  }
  for (const path of linearModulePaths(config)) {
    if (path === 'lm_head' && config.tie_word_embeddings) continue;
    shapes.set(`${path}.weight`, linearShape(config, path));
  }
  shapes.set('model.norm.weight', [d]);
  return shapes;
}

export class LlamaModel {
  readonly headSize: number;
  readonly groups: number;
  /** rotate_half as a (hs, hs) signed permutation and its transpose, so RoPE needs no slices */
  private readonly rotate: tf.Tensor2D;
  private readonly rotateT: tf.Tensor2D;

  constructor(readonly config: ModelConfig) {
    this.headSize = config.hidden_size / config.num_attention_heads;
    this.groups = config.num_attention_heads / config.num_key_value_heads;
    const hs = this.headSize;
    const half = hs / 2;
    const r = new Float32Array(hs * hs);
    for (let j = 0; j < half; j++) {
      r[(j + half) * hs + j] = -1; // out[j] = -x[j + half]
      r[j * hs + j + half] = 1; // out[j + half] = x[j]
    }
    this.rotate = tf.keep(tf.tensor2d(r, [hs, hs]));
    this.rotateT = tf.keep(tf.transpose(this.rotate));
  }

  /** Logits (B·T, V) for inputIds (B, T); with a cache, positions continue after cache.length and the cache grows. */
  forward(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D {
    const [batch, time] = inputIds.shape;
    const offset = cache?.length ?? 0;
    const { cos, sin } = this.ropeTables(batch, offset, time);
    const mask = this.causalMask(time, offset);
    let h = params.embed(tf.reshape(inputIds, [-1])); // (B·T, d)
    for (let i = 0; i < this.config.num_hidden_layers; i++) {
      const p = layerPrefix(i);
      const attnIn = this.rmsNorm(h, params.param(`${p}.input_layernorm.weight`));
      const attn = this.attention(params, i, attnIn, batch, time, cos, sin, mask, cache);
      h = tf.add(h, attn);
      const mlpIn = this.rmsNorm(h, params.param(`${p}.post_attention_layernorm.weight`));
      const gate = params.linear(`${p}.mlp.gate_proj`, mlpIn); // (B·T, I)
      const up = params.linear(`${p}.mlp.up_proj`, mlpIn); // (B·T, I)
      const act = tf.mul(tf.mul(gate, tf.sigmoid(gate)), up); // SwiGLU: silu(gate) ⊙ up
      h = tf.add(h, params.linear(`${p}.mlp.down_proj`, act as tf.Tensor2D));
    }
    if (cache) cache.length += time;
    h = this.rmsNorm(h, params.param('model.norm.weight'));
    return params.linear('lm_head', h); // (B·T, V)
  }

  /** RMSNorm: x / sqrt(mean(x²) + eps) · w, over the hidden dimension. */
  private rmsNorm(x: tf.Tensor2D, weight: tf.Tensor): tf.Tensor2D {
    const meanSquare = tf.mean(tf.mul(x, x), -1, true); // (N, 1)
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, this.config.rms_norm_eps))), weight) as tf.Tensor2D;
  }

  private attention(
    params: ParamSource, layer: number, x: tf.Tensor2D, batch: number, time: number,
    cos: tf.Tensor2D, sin: tf.Tensor2D, mask: tf.Tensor2D, cache?: KvCache,
  ): tf.Tensor2D {
    const { num_attention_heads: nHead, num_key_value_heads: nKv } = this.config;
    const hs = this.headSize;
    const p = `${layerPrefix(layer)}.self_attn`;
    const q = this.applyRope(params.linear(`${p}.q_proj`, x), nHead, cos, sin); // (B·T·H, hs)
    const k = this.applyRope(params.linear(`${p}.k_proj`, x), nKv, cos, sin); // (B·T·Hkv, hs)
    const v = params.linear(`${p}.v_proj`, x); // (B·T, Hkv·hs)
    // Heads to the front. Query head h = kv·G + g uses key head kv (HF repeat_kv), so the G query
    // heads of one key head sit next to each other and fold into the row axis: no repeat of K, V.
    const qh = tf.reshape(tf.transpose(tf.reshape(q, [batch, time, nHead, hs]), [0, 2, 1, 3]), [batch * nKv, this.groups * time, hs]);
    let kh = tf.reshape(tf.transpose(tf.reshape(k, [batch, time, nKv, hs]), [0, 2, 1, 3]), [batch * nKv, time, hs]) as tf.Tensor3D;
    let vh = tf.reshape(tf.transpose(tf.reshape(v, [batch, time, nKv, hs]), [0, 2, 1, 3]), [batch * nKv, time, hs]) as tf.Tensor3D;
    if (cache) {
      if (cache.keys[layer]) {
        kh = tf.concat([cache.keys[layer], kh], 1);
        vh = tf.concat([cache.values[layer], vh], 1);
        tf.dispose([cache.keys[layer], cache.values[layer]]);
      }
      cache.keys[layer] = tf.keep(kh);
      cache.values[layer] = tf.keep(vh);
    }
    const scores = tf.add(tf.mul(tf.matMul(qh, kh, false, true), 1 / Math.sqrt(hs)), mask); // (B·Hkv, G·T, S)
    const out = tf.matMul(tf.softmax(scores), vh); // (B·Hkv, G·T, hs)
    const merged = tf.reshape(tf.transpose(tf.reshape(out, [batch, nHead, time, hs]), [0, 2, 1, 3]), [batch * time, nHead * hs]);
    return params.linear(`${p}.o_proj`, merged as tf.Tensor2D); // (B·T, d)
  }

  /** HF rotary embedding: x·cos + rotate_half(x)·sin, per head; returns (B·T·heads, hs). */
  private applyRope(x: tf.Tensor2D, heads: number, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor2D {
    const hs = this.headSize;
    const rows = x.shape[0]; // B·T
    const perHead = tf.reshape(x, [rows, heads, hs]);
    const rotated = tf.reshape(constMatMul(tf.reshape(x, [rows * heads, hs]), this.rotate, this.rotateT), [rows, heads, hs]);
    const cos3 = tf.reshape(cos, [rows, 1, hs]);
    const sin3 = tf.reshape(sin, [rows, 1, hs]);
    return tf.reshape(tf.add(tf.mul(perHead, cos3), tf.mul(rotated, sin3)), [rows * heads, hs]);
  }

  /** cos and sin of position·inv_freq as (B·T, hs): rows are batch-major, so the (T, hs) table repeats B times. */
  private ropeTables(batch: number, offset: number, time: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    const hs = this.headSize;
    const half = hs / 2;
    const cos = new Float32Array(batch * time * hs);
    const sin = new Float32Array(batch * time * hs);
    for (let t = 0; t < time; t++) {
      for (let j = 0; j < half; j++) {
        const angle = (offset + t) / Math.pow(this.config.rope_theta, (2 * j) / hs);
        for (let b = 0; b < batch; b++) {
          const row = (b * time + t) * hs;
          cos[row + j] = cos[row + j + half] = Math.cos(angle);
          sin[row + j] = sin[row + j + half] = Math.sin(angle);
        }
      }
    }
    return { cos: tf.tensor2d(cos, [batch * time, hs]), sin: tf.tensor2d(sin, [batch * time, hs]) };
  }

  /** Additive mask (G·T, S): query row g·T + t sits at position offset + t and sees keys 0 … offset + t. */
  private causalMask(time: number, offset: number): tf.Tensor2D {
    const keys = offset + time;
    const m = new Float32Array(this.groups * time * keys);
    for (let g = 0; g < this.groups; g++) {
      for (let t = 0; t < time; t++) {
        const row = (g * time + t) * keys;
        for (let s = offset + t + 1; s < keys; s++) m[row + s] = -1e9;
      }
    }
    return tf.tensor2d(m, [this.groups * time, keys]);
  }
}
