/**
 * GPT-2: learned position embeddings, pre-LayerNorm blocks, fused c_attn (q, k, v in that order),
 * GELU (tanh approximation) MLP, LM head tied to the token embedding. Linear weights are Conv1D,
 * stored (d_in, d_out) — LinearStorage says so and FrozenBase uses them as the forward layout.
 * Shapes: B batch, T new positions, d = n_embd, N = B·T rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Gpt2Config } from '../config.ts';
import { attend, attendSegments, causalMask, type KvCache, type RowSegment } from './attention.ts';
import { recomputeInBackward } from './recompute.ts';
import type { CausalLM, LinearStorage, ParamSource } from './types.ts';
import { geluNew, layerNorm } from './norm-ops.ts';

const block = (i: number) => `transformer.h.${i}`;

export function linearModulePaths(config: Gpt2Config): string[] {
  const paths: string[] = [];
  for (let i = 0; i < config.n_layer; i++)
    paths.push(`${block(i)}.attn.c_attn`, `${block(i)}.attn.c_proj`, `${block(i)}.mlp.c_fc`, `${block(i)}.mlp.c_proj`);
  paths.push('lm_head');
  return paths;
}

export function linearShape(config: Gpt2Config, modulePath: string): [number, number] {
  const d = config.n_embd;
  if (modulePath === 'lm_head') return [config.vocab_size, d];
  if (modulePath.endsWith('attn.c_attn')) return [3 * d, d];
  if (modulePath.endsWith('attn.c_proj')) return [d, d];
  if (modulePath.endsWith('mlp.c_fc')) return [4 * d, d];
  if (modulePath.endsWith('mlp.c_proj')) return [d, 4 * d];
  throw new Error(`not a linear module: ${modulePath}`);
}

export function linearStorage(modulePath: string): LinearStorage {
  if (modulePath === 'lm_head') return { weight: 'transformer.wte.weight', transposed: false };
  return { weight: `${modulePath}.weight`, transposed: true, bias: `${modulePath}.bias` };
}

export function parameterShapes(config: Gpt2Config): Map<string, number[]> {
  const d = config.n_embd;
  const shapes = new Map<string, number[]>([
    ['transformer.wte.weight', [config.vocab_size, d]],
    ['transformer.wpe.weight', [config.n_positions, d]],
  ]);
  for (let i = 0; i < config.n_layer; i++) {
    for (const ln of ['ln_1', 'ln_2']) {
      shapes.set(`${block(i)}.${ln}.weight`, [d]);
      shapes.set(`${block(i)}.${ln}.bias`, [d]);
    }
  }
  for (const path of linearModulePaths(config)) {
    if (path === 'lm_head') continue;
    const [dOut, dIn] = linearShape(config, path);
    shapes.set(`${path}.weight`, [dIn, dOut]); // Conv1D layout
    shapes.set(`${path}.bias`, [dOut]);
  }
  shapes.set('transformer.ln_f.weight', [d]);
  shapes.set('transformer.ln_f.bias', [d]);
  return shapes;
}

export class Gpt2Model implements CausalLM {
  readonly headSize: number;

  constructor(readonly config: Gpt2Config) {
    this.headSize = config.n_embd / config.n_head;
  }

  forward(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D {
    return params.linear('lm_head', this.hidden(params, inputIds, cache)); // (N, V)
  }

  hidden(params: ParamSource, inputIds: tf.Tensor2D, cache?: KvCache): tf.Tensor2D {
    const [batch, time] = inputIds.shape;
    const c = this.config;
    const offset = cache?.length ?? 0;
    const positions = tf.tensor1d(
      Array.from({ length: batch * time }, (_, r) => offset + (r % time)),
      'int32',
    );
    const shape = { batch, time, heads: c.n_head, kvHeads: c.n_head, headSize: this.headSize };
    const h = this.layers(
      params,
      tf.reshape(inputIds, [-1]),
      positions,
      [causalMask(1, time, offset)],
      (q, k, v, [mask], i) => attend(q, k, v, shape, mask, cache, i),
      !cache,
    );
    if (cache) cache.length += time;
    return this.layerNorm(h, 'transformer.ln_f', params); // (N, d)
  }

  hiddenSegments(params: ParamSource, ids: tf.Tensor1D, segments: RowSegment[]): tf.Tensor2D {
    const c = this.config;
    const positions = tf.tensor1d(
      segments.flatMap((s) => Array.from({ length: s.batch * s.time }, (_, r) => r % s.time)),
      'int32',
    );
    const heads = { heads: c.n_head, kvHeads: c.n_head, headSize: this.headSize };
    const h = this.layers(
      params,
      ids,
      positions,
      segments.map((s) => causalMask(1, s.time, 0)),
      (q, k, v, masks, i) => attendSegments(q, k, v, segments, heads, masks, i),
      true,
    );
    return this.layerNorm(h, 'transformer.ln_f', params);
  }

  /** Embeddings, then the blocks over the rows; `masks` go to `attention` (constants of a recomputed block). */
  private layers(
    params: ParamSource,
    ids: tf.Tensor1D,
    positions: tf.Tensor1D,
    masks: tf.Tensor2D[],
    attention: (q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, masks: tf.Tensor2D[], layer: number) => tf.Tensor2D,
    mayRecompute: boolean,
  ): tf.Tensor2D {
    const c = this.config;
    const d = c.n_embd;
    let h = tf.add(params.embed(ids), tf.gather(params.param('transformer.wpe.weight'), positions)) as tf.Tensor2D; // (N, d)
    for (let i = 0; i < c.n_layer; i++) {
      const p = block(i);
      const run = (hIn: tf.Tensor2D, blockMasks: tf.Tensor2D[]) => {
        const qkv = params.linear(`${p}.attn.c_attn`, this.layerNorm(hIn, `${p}.ln_1`, params)); // (N, 3d)
        const [q, k, v] = tf.split(qkv, [d, d, d], 1) as tf.Tensor2D[];
        const h1 = tf.add(hIn, params.linear(`${p}.attn.c_proj`, attention(q, k, v, blockMasks, i))) as tf.Tensor2D;
        const fc = params.linear(`${p}.mlp.c_fc`, this.layerNorm(h1, `${p}.ln_2`, params)); // (N, 4d)
        return tf.add(h1, params.linear(`${p}.mlp.c_proj`, geluNew(fc))) as tf.Tensor2D;
      };
      h =
        params.recompute && mayRecompute
          ? recomputeInBackward(run, h, params.blockTensors?.(p) ?? [], masks)
          : run(h, masks);
    }
    return h;
  }

  private layerNorm(x: tf.Tensor2D, prefix: string, params: ParamSource): tf.Tensor2D {
    return layerNorm(
      x,
      params.param(`${prefix}.weight`),
      params.param(`${prefix}.bias`),
      this.config.layer_norm_epsilon,
      params.frozen ?? false,
    );
  }
}
