/**
 * Causal self-attention shared by every architecture, shaped for the wasm backend: heads move to
 * the front with one transpose, and with grouped-query attention the G query heads of one key
 * head fold into the row axis (query head h = kv·G + g uses key head kv, as HF repeat_kv), so K
 * and V are never repeated. Shapes: B batch, T new positions, S key positions (past + new),
 * H query heads, Hkv key/value heads, G = H / Hkv, hs head size.
 */
import * as tf from '@tensorflow/tfjs-core';

/** Keys and values of the positions seen so far, one entry per layer: (B·Hkv, S, hs). */
export interface KvCache {
  keys: tf.Tensor3D[];
  values: tf.Tensor3D[];
  length: number;
}

export interface AttentionShape {
  batch: number;
  time: number;
  heads: number;
  kvHeads: number;
  headSize: number;
}

/**
 * softmax(q kᵀ / √hs + mask) v for q (B·T, H·hs), k and v (B·T, Hkv·hs); returns (B·T, H·hs).
 * With a cache, k and v are appended to layer `layer`'s entry and attention covers all of it.
 */
export function attend(q: tf.Tensor2D, k: tf.Tensor2D, v: tf.Tensor2D, s: AttentionShape, mask: tf.Tensor2D, cache: KvCache | undefined, layer: number): tf.Tensor2D {
  const { batch, time, heads, kvHeads, headSize: hs } = s;
  const groups = heads / kvHeads;
  const qh = tf.reshape(tf.transpose(tf.reshape(q, [batch, time, heads, hs]), [0, 2, 1, 3]), [batch * kvHeads, groups * time, hs]);
  let kh = tf.reshape(tf.transpose(tf.reshape(k, [batch, time, kvHeads, hs]), [0, 2, 1, 3]), [batch * kvHeads, time, hs]) as tf.Tensor3D;
  let vh = tf.reshape(tf.transpose(tf.reshape(v, [batch, time, kvHeads, hs]), [0, 2, 1, 3]), [batch * kvHeads, time, hs]) as tf.Tensor3D;
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
  return tf.reshape(tf.transpose(tf.reshape(out, [batch, heads, time, hs]), [0, 2, 1, 3]), [batch * time, heads * hs]) as tf.Tensor2D;
}

/**
 * Additive mask (G·T, S): query row g·T + t sits at position offset + t and sees keys
 * max(0, p − window + 1) … p (window = Infinity: all earlier keys).
 */
export function causalMask(groups: number, time: number, offset: number, window = Infinity): tf.Tensor2D {
  const keys = offset + time;
  const m = new Float32Array(groups * time * keys);
  for (let g = 0; g < groups; g++) {
    for (let t = 0; t < time; t++) {
      const row = (g * time + t) * keys;
      const p = offset + t;
      for (let s = 0; s < keys; s++) if (s > p || p - s >= window) m[row + s] = -1e9;
    }
  }
  return tf.tensor2d(m, [groups * time, keys]);
}
