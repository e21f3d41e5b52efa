/**
 * The Llama family (Llama 2/3, SmolLM, TinyLlama, Qwen2 with q/k/v biases, Mistral with GQA and
 * a sliding window): RMSNorm, rotary position embeddings (with linear or llama3 scaling), SwiGLU
 * MLP, separate q/k/v/o projections, grouped-query attention, tied or untied embeddings.
 * Parameter names are Hugging Face's. Shapes: B batch, T new positions, d hidden, N = B·T rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LlamaConfig } from '../config.ts';
import { attend, attendSegments, causalMask, type KvCache, type RowSegment } from './attention.ts';
import type { CausalLM, LinearStorage, ParamSource } from './types.ts';
import { constMatMul } from './linear-ops.ts';
import { fusedRope, rmsNorm, swiglu } from './norm-ops.ts';
import { recomputeInBackward } from './recompute.ts';

const layerPrefix = (i: number) => `model.layers.${i}`;

export function linearModulePaths(config: LlamaConfig): string[] {
  const paths: string[] = [];
  for (let i = 0; i < config.num_hidden_layers; i++) {
    const p = layerPrefix(i);
    paths.push(`${p}.self_attn.q_proj`, `${p}.self_attn.k_proj`, `${p}.self_attn.v_proj`, `${p}.self_attn.o_proj`);
    paths.push(`${p}.mlp.gate_proj`, `${p}.mlp.up_proj`, `${p}.mlp.down_proj`);
  }
  paths.push('lm_head');
  return paths;
}

export function linearShape(config: LlamaConfig, modulePath: string): [number, number] {
  const d = config.hidden_size;
  const hs = d / config.num_attention_heads;
  const kv = config.num_key_value_heads * hs;
  switch (modulePath.slice(modulePath.lastIndexOf('.') + 1)) {
    case 'q_proj':
      return [config.num_attention_heads * hs, d];
    case 'k_proj':
    case 'v_proj':
      return [kv, d];
    case 'o_proj':
      return [d, config.num_attention_heads * hs];
    case 'gate_proj':
    case 'up_proj':
      return [config.intermediate_size, d];
    case 'down_proj':
      return [d, config.intermediate_size];
    case 'lm_head':
      return [config.vocab_size, d];
    default:
      throw new Error(`not a linear module: ${modulePath}`);
  }
}

function hasBias(config: LlamaConfig, modulePath: string): boolean {
  const kind = modulePath.slice(modulePath.lastIndexOf('.') + 1);
  if (config.model_type === 'qwen2') return kind === 'q_proj' || kind === 'k_proj' || kind === 'v_proj';
  return !!config.attention_bias && ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(kind);
}

export function linearStorage(config: LlamaConfig, modulePath: string): LinearStorage {
  if (modulePath === 'lm_head' && config.tie_word_embeddings)
    return { weight: 'model.embed_tokens.weight', transposed: false };
  return {
    weight: `${modulePath}.weight`,
    transposed: false,
    bias: hasBias(config, modulePath) ? `${modulePath}.bias` : undefined,
  };
}

export function parameterShapes(config: LlamaConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const d = config.hidden_size;
  shapes.set('model.embed_tokens.weight', [config.vocab_size, d]);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    shapes.set(`${layerPrefix(i)}.input_layernorm.weight`, [d]);
    shapes.set(`${layerPrefix(i)}.post_attention_layernorm.weight`, [d]);
  }
  for (const path of linearModulePaths(config)) {
    const storage = linearStorage(config, path);
    if (path === 'lm_head' && config.tie_word_embeddings) continue;
    const shape = linearShape(config, path);
    shapes.set(storage.weight, shape);
    if (storage.bias) shapes.set(storage.bias, [shape[0]]);
  }
  shapes.set('model.norm.weight', [d]);
  return shapes;
}

/** Inverse frequencies of RoPE, with HF's "linear" (positions / factor) or "llama3" scaling. */
function ropeInverseFrequencies(config: LlamaConfig, headSize: number): Float64Array {
  const inv = new Float64Array(headSize / 2);
  for (let j = 0; j < inv.length; j++) inv[j] = 1 / Math.pow(config.rope_theta, (2 * j) / headSize);
  const s = config.rope_scaling;
  if (s?.rope_type === 'linear') for (let j = 0; j < inv.length; j++) inv[j] /= s.factor;
  if (s?.rope_type === 'llama3') {
    const old = s.original_max_position_embeddings!;
    const lowWavelen = old / s.low_freq_factor!;
    const highWavelen = old / s.high_freq_factor!;
    for (let j = 0; j < inv.length; j++) {
      const wavelen = (2 * Math.PI) / inv[j];
      if (wavelen > lowWavelen) inv[j] /= s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (old / wavelen - s.low_freq_factor!) / (s.high_freq_factor! - s.low_freq_factor!);
        inv[j] = (1 - smooth) * (inv[j] / s.factor) + smooth * inv[j];
      }
    }
  }
  return inv;
}

export class LlamaModel implements CausalLM {
  readonly headSize: number;
  readonly groups: number;
  private readonly invFreq: Float64Array;
  /** rotate_half as a (hs, hs) signed permutation and its transpose, so RoPE needs no slices */
  private readonly rotate: tf.Tensor2D;
  private readonly rotateT: tf.Tensor2D;

  constructor(readonly config: LlamaConfig) {
    this.headSize = config.hidden_size / config.num_attention_heads;
    this.groups = config.num_attention_heads / config.num_key_value_heads;
    this.invFreq = ropeInverseFrequencies(config, this.headSize);
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

  forward(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D {
    return params.linear('lm_head', this.hidden(params, inputIds, cache)); // (N, V)
  }

  hidden(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D {
    const [batch, time] = inputIds.shape;
    const c = this.config;
    const offset = cache?.length ?? 0;
    const { cos, sin } = this.ropeTables(batch, offset, time);
    const mask = causalMask(this.groups, time, offset, c.sliding_window ?? Infinity);
    const shape = {
      batch,
      time,
      heads: c.num_attention_heads,
      kvHeads: c.num_key_value_heads,
      headSize: this.headSize,
    };
    const h = this.layers(
      params,
      params.embed(tf.reshape(inputIds, [-1])), // (N, d)
      [cos, sin, mask],
      (q, k, v, [m], i) => attend(q, k, v, shape, m, cache, i),
      !cache,
    );
    if (cache) cache.length += time;
    return this.rmsNorm(h, params.param('model.norm.weight'), params); // (N, d)
  }

  hiddenSegments(params: ParamSource, ids: tf.Tensor1D, segments: RowSegment[]): tf.Tensor2D {
    const c = this.config;
    const tables = segments.map((s) => this.ropeTables(s.batch, 0, s.time));
    const join = (ts: tf.Tensor2D[]) => (ts.length === 1 ? ts[0] : (tf.concat(ts, 0) as tf.Tensor2D));
    const masks = segments.map((s) => causalMask(this.groups, s.time, 0, c.sliding_window ?? Infinity));
    const heads = { heads: c.num_attention_heads, kvHeads: c.num_key_value_heads, headSize: this.headSize };
    const h = this.layers(
      params,
      params.embed(ids),
      [join(tables.map((t) => t.cos)), join(tables.map((t) => t.sin)), ...masks],
      (q, k, v, m, i) => attendSegments(q, k, v, segments, heads, m, i),
      true,
    );
    return this.rmsNorm(h, params.param('model.norm.weight'), params);
  }

  /**
   * The decoder layers over rows h (N, d). `constants`: RoPE's cos and sin (N, hs), then the attention masks
   * that `attention` receives; `mayRecompute`: the pass may recompute blocks in the backward pass.
   */
  private layers(
    params: ParamSource,
    h: tf.Tensor2D,
    constants: tf.Tensor2D[],
    attention: (q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, masks: tf.Tensor2D[], layer: number) => tf.Tensor2D,
    mayRecompute: boolean,
  ): tf.Tensor2D {
    const c = this.config;
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const p = layerPrefix(i);
      const block = (hIn: tf.Tensor2D, [cos, sin, ...masks]: tf.Tensor2D[]) => {
        const x = this.rmsNorm(hIn, params.param(`${p}.input_layernorm.weight`), params);
        // q: (N, H·hs), k: (N, Hkv·hs)
        const q = this.applyRope(params.linear(`${p}.self_attn.q_proj`, x), c.num_attention_heads, cos, sin);
        const k = this.applyRope(params.linear(`${p}.self_attn.k_proj`, x), c.num_key_value_heads, cos, sin);
        const v = params.linear(`${p}.self_attn.v_proj`, x); // (N, Hkv·hs)
        const h1 = tf.add(hIn, params.linear(`${p}.self_attn.o_proj`, attention(q, k, v, masks, i))) as tf.Tensor2D;
        const m = this.rmsNorm(h1, params.param(`${p}.post_attention_layernorm.weight`), params);
        const gate = params.linear(`${p}.mlp.gate_proj`, m); // (N, I)
        const up = params.linear(`${p}.mlp.up_proj`, m); // (N, I)
        return tf.add(h1, params.linear(`${p}.mlp.down_proj`, swiglu(gate, up))) as tf.Tensor2D;
      };
      h =
        params.recompute && mayRecompute
          ? recomputeInBackward(block, h, params.blockTensors?.(p) ?? [], constants)
          : block(h, constants);
    }
    return h;
  }

  /** RMSNorm: x / sqrt(mean(x²) + eps) · w, over the hidden dimension. */
  private rmsNorm(x: tf.Tensor2D, weight: tf.Tensor, params: ParamSource): tf.Tensor2D {
    return rmsNorm(x, weight, this.config.rms_norm_eps, params.frozen ?? false);
  }

  /** HF rotary embedding per head: x·cos + rotate_half(x)·sin; x (N, heads·hs) → (N, heads·hs). */
  private applyRope(x: tf.Tensor2D, heads: number, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor2D {
    const fused = fusedRope(x, cos, sin);
    if (fused) return fused;
    const hs = this.headSize;
    const rows = x.shape[0];
    const perHead = tf.reshape(x, [rows, heads, hs]);
    const rotated = tf.reshape(constMatMul(tf.reshape(x, [rows * heads, hs]), this.rotate, this.rotateT), [
      rows,
      heads,
      hs,
    ]);
    const out = tf.add(
      tf.mul(perHead, tf.reshape(cos, [rows, 1, hs])),
      tf.mul(rotated, tf.reshape(sin, [rows, 1, hs])),
    );
    return tf.reshape(out, [rows, heads * hs]);
  }

  /** cos and sin of position·inv_freq as (B·T, hs): rows are batch-major, so the (T, hs) table repeats B times. */
  private ropeTables(batch: number, offset: number, time: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    const hs = this.headSize;
    const half = hs / 2;
    const cos = new Float32Array(batch * time * hs);
    const sin = new Float32Array(batch * time * hs);
    for (let t = 0; t < time; t++) {
      for (let j = 0; j < half; j++) {
        const angle = (offset + t) * this.invFreq[j];
        for (let b = 0; b < batch; b++) {
          const row = (b * time + t) * hs;
          cos[row + j] = cos[row + j + half] = Math.cos(angle);
          sin[row + j] = sin[row + j + half] = Math.sin(angle);
        }
      }
    }
    return { cos: tf.tensor2d(cos, [batch * time, hs]), sin: tf.tensor2d(sin, [batch * time, hs]) };
  }
}
