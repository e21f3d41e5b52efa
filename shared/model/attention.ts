/**
 * Causal self-attention shared by every architecture, shaped for the wasm backend: heads move to
 * the front with one transpose, and with grouped-query attention the G query heads of one key
 * head fold into the row axis (query head h = kv·G + g uses key head kv, as HF repeat_kv), so K
 * and V are never repeated. Shapes: B batch, T new positions, S key positions (past + new),
 * H query heads, Hkv key/value heads, G = H / Hkv, hs head size.
 */
import * as tf from '@tensorflow/tfjs-core';
import { customOp, hasKernel, runKernel } from './custom-op.ts';

/** Fused kernels (wasm: kernels/c/fused.c): scores (R, S), mask (M, S) repeating every M rows; scale → P */
export const FUSED_MASKED_SOFTMAX = 'LoraMeshMaskedSoftmax';
/** dp, p (R, S); scale → dScores = P ⊙ (dP − Σ(dP ⊙ P))·scale */
export const FUSED_SOFTMAX_GRAD = 'LoraMeshSoftmaxGrad';

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
export function attend(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  s: AttentionShape,
  mask: tf.Tensor2D,
  cache: KvCache | undefined,
  layer: number,
): tf.Tensor2D {
  const { batch, time, heads, kvHeads, headSize: hs } = s;
  const groups = heads / kvHeads;
  const qh = tf.reshape(tf.transpose(tf.reshape(q, [batch, time, heads, hs]), [0, 2, 1, 3]), [
    batch * kvHeads,
    groups * time,
    hs,
  ]);
  let kh = tf.reshape(tf.transpose(tf.reshape(k, [batch, time, kvHeads, hs]), [0, 2, 1, 3]), [
    batch * kvHeads,
    time,
    hs,
  ]) as tf.Tensor3D;
  let vh = tf.reshape(tf.transpose(tf.reshape(v, [batch, time, kvHeads, hs]), [0, 2, 1, 3]), [
    batch * kvHeads,
    time,
    hs,
  ]) as tf.Tensor3D;
  if (cache) {
    if (cache.keys[layer]) {
      kh = tf.concat([cache.keys[layer], kh], 1);
      vh = tf.concat([cache.values[layer], vh], 1);
      tf.dispose([cache.keys[layer], cache.values[layer]]);
    }
    cache.keys[layer] = tf.keep(kh);
    cache.values[layer] = tf.keep(vh);
  }
  const out = scaledDotProductAttention(qh as tf.Tensor3D, kh, vh, mask, 1 / Math.sqrt(hs)); // (B·Hkv, G·T, hs)
  return tf.reshape(tf.transpose(tf.reshape(out, [batch, heads, time, hs]), [0, 2, 1, 3]), [
    batch * time,
    heads * hs,
  ]) as tf.Tensor2D;
}

/** One micro-batch's rows in a pass that holds several one after another (the pool's multi-adapter pass). */
export interface RowSegment {
  batch: number;
  time: number;
}

/**
 * attend() over rows holding several micro-batches one after another (no cache): each segment attends only
 * within itself, under its own mask, through exactly the ops attend() runs on it alone. Splitting and
 * concatenating rows are copies, and so are their gradients, so every segment's values and gradients are
 * the bits of its micro-batch computed alone.
 */
export function attendSegments(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  segments: RowSegment[],
  heads: { heads: number; kvHeads: number; headSize: number },
  masks: tf.Tensor2D[],
  layer: number,
): tf.Tensor2D {
  const shapeOf = (s: RowSegment) => ({ batch: s.batch, time: s.time, ...heads });
  if (segments.length === 1) return attend(q, k, v, shapeOf(segments[0]), masks[0], undefined, layer);
  const sizes = segments.map((s) => s.batch * s.time);
  const [qs, ks, vs] = [q, k, v].map((t) => tf.split(t, sizes, 0) as tf.Tensor2D[]);
  return tf.concat(
    segments.map((s, j) => attend(qs[j], ks[j], vs[j], shapeOf(s), masks[j], undefined, layer)),
    0,
  ) as tf.Tensor2D;
}

/**
 * softmax(q kᵀ·scale + mask) v per head with a hand-written gradient; q (H, M, hs), k and v
 * (H, S, hs), mask (M, S) additive. With P the probabilities and dO the output's gradient:
 *   dV = Pᵀ dO,  dP = dO vᵀ,  dScores = P ⊙ (dP − rowsum(dP ⊙ P)),  dq = dScores k·scale,
 *   dk = dScoresᵀ q·scale.
 * Autodiff gives the same products; written out, the backward pass needs no softmax replay and no
 * extra transposes. On wasm these batched products run in kernels/c/compact-gemm.c (lm_gemm), and the
 * softmax with its scale and mask, and its gradient, are one kernel each (kernels/c/fused.c).
 */
export function scaledDotProductAttention(
  q: tf.Tensor3D,
  k: tf.Tensor3D,
  v: tf.Tensor3D,
  mask: tf.Tensor2D,
  scale: number,
): tf.Tensor3D {
  const fusedSoftmax = hasKernel(FUSED_MASKED_SOFTMAX);
  const op = customOp(([qs, ks, vs], save) => {
    const scores = tf.matMul(qs as tf.Tensor3D, ks as tf.Tensor3D, false, true); // (H, M, S)
    const probs = (
      fusedSoftmax
        ? runKernel(FUSED_MASKED_SOFTMAX, { scores, mask }, { scale })
        : tf.softmax(tf.add(tf.mul(scores, scale), mask))
    ) as tf.Tensor3D;
    save([qs, ks, vs, probs]);
    return {
      value: tf.matMul(probs, vs as tf.Tensor3D), // (H, M, hs)
      gradFunc: (dOut, [qSaved, kSaved, vSaved, p]) => {
        const dP = tf.matMul(dOut as tf.Tensor3D, vSaved as tf.Tensor3D, false, true); // (H, M, S)
        const dScores = (
          fusedSoftmax
            ? runKernel(FUSED_SOFTMAX_GRAD, { dp: dP, p }, { scale })
            : tf.mul(tf.mul(p, tf.sub(dP, tf.sum(tf.mul(dP, p), -1, true))), scale)
        ) as tf.Tensor3D;
        return [
          tf.matMul(dScores, kSaved as tf.Tensor3D), // dq (H, M, hs)
          tf.matMul(dScores, qSaved as tf.Tensor3D, true, false), // dk (H, S, hs)
          tf.matMul(p as tf.Tensor3D, dOut as tf.Tensor3D, true, false), // dv (H, S, hs)
        ];
      },
    };
  });
  return op(q, k, v) as tf.Tensor3D;
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
