/**
 * Normalizations and activations with hand-written gradients. Autodiff of their textbook formulas
 * records 10–20 small kernels per call and replays each backward; the closed forms below need a
 * few. Each equals the textbook formula (tested against autodiff in test/shared/lora-fast-path.test.ts).
 * Shapes: x (N, d); weights and biases (d).
 */
import * as tf from '@tensorflow/tfjs-core';
import { customOp } from './custom-op.ts';

/**
 * LayerNorm (biased variance, as torch.nn.LayerNorm): (x − mean) / √(var + eps) · w + b.
 * frozenAffine: w and b are constants (LoRA), so only dx is computed:
 *   dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)),  g = dy · w,  x̂ = (x − mean) · rstd.
 * Otherwise w and b are trained too and plain autodiff gives all three gradients.
 */
export function layerNorm(x: tf.Tensor2D, w: tf.Tensor, b: tf.Tensor, eps: number, frozenAffine: boolean): tf.Tensor2D {
  if (!frozenAffine) {
    const { mean, variance } = tf.moments(x, -1, true); // (N, 1) each
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    return tf.add(tf.mul(normed, w), b) as tf.Tensor2D;
  }
  const op = customOp(([input], save) => {
    const centered = tf.sub(input, tf.mean(input, -1, true));
    const rstd = tf.rsqrt(tf.add(tf.mean(tf.mul(centered, centered), -1, true), eps)); // (N, 1)
    const normed = tf.mul(centered, rstd); // x̂ (N, d)
    save([normed, rstd]);
    return {
      value: tf.add(tf.mul(normed, w), b),
      gradFunc: (dy, [xHat, r]) => {
        const g = tf.mul(dy, w);
        const inner = tf.sub(tf.sub(g, tf.mean(g, -1, true)), tf.mul(xHat, tf.mean(tf.mul(g, xHat), -1, true)));
        return [tf.mul(inner, r)];
      },
    };
  });
  return op(x) as tf.Tensor2D;
}

/**
 * RMSNorm: x / √(mean(x²) + eps) · w. frozenWeight: w is a constant, so only
 *   dx = rstd · (g − x̂ · mean(g · x̂)),  g = dy · w,  x̂ = x · rstd;
 * otherwise plain autodiff (w is trained too).
 */
export function rmsNorm(x: tf.Tensor2D, w: tf.Tensor, eps: number, frozenWeight: boolean): tf.Tensor2D {
  if (!frozenWeight) {
    const meanSquare = tf.mean(tf.mul(x, x), -1, true); // (N, 1)
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))), w) as tf.Tensor2D;
  }
  const op = customOp(([input], save) => {
    const rstd = tf.rsqrt(tf.add(tf.mean(tf.mul(input, input), -1, true), eps)); // (N, 1)
    const normed = tf.mul(input, rstd);
    save([normed, rstd]);
    return {
      value: tf.mul(normed, w),
      gradFunc: (dy, [xHat, r]) => {
        const g = tf.mul(dy, w);
        return [tf.mul(tf.sub(g, tf.mul(xHat, tf.mean(tf.mul(g, xHat), -1, true))), r)];
      },
    };
  });
  return op(x) as tf.Tensor2D;
}

const GELU_A = 0.044715;
const GELU_C = 2 * Math.sqrt(2 / Math.PI);

/**
 * gelu_new: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), written as x·σ(u), u = 2√(2/π)(x + 0.044715x³)
 * (the same function; tanh is several times slower than sigmoid on wasm, pow(x,3) slower than x·x·x).
 * d/dx = σ + x·σ(1 − σ)·(c + 3ac·x²).
 */
export function geluNew(x: tf.Tensor2D): tf.Tensor2D {
  const op = customOp(([input], save) => {
    const square = tf.mul(input, input);
    const s = tf.sigmoid(tf.mul(tf.mul(input, tf.add(tf.mul(square, GELU_A), 1)), GELU_C));
    save([input, s]);
    return {
      value: tf.mul(input, s),
      gradFunc: (dy, [xs, sig]) => {
        const slope = tf.add(tf.mul(tf.mul(xs, xs), 3 * GELU_A * GELU_C), GELU_C); // du/dx
        const dsdx = tf.mul(tf.mul(sig, tf.sub(1, sig)), slope);
        return [tf.mul(dy, tf.add(sig, tf.mul(xs, dsdx)))];
      },
    };
  });
  return op(x) as tf.Tensor2D;
}

/** SwiGLU: silu(gate)·up; d gate = dy·up·σ·(1 + gate·(1 − σ)), d up = dy·silu(gate). Shapes (N, I). */
export function swiglu(gate: tf.Tensor2D, up: tf.Tensor2D): tf.Tensor2D {
  const op = customOp(([g, u], save) => {
    const s = tf.sigmoid(g);
    const silu = tf.mul(g, s);
    save([g, u, s, silu]);
    return {
      value: tf.mul(silu, u),
      gradFunc: (dy, [gs, us, sig, silus]) => {
        const dGate = tf.mul(tf.mul(dy, us), tf.mul(sig, tf.add(1, tf.mul(gs, tf.sub(1, sig)))));
        return [dGate, tf.mul(dy, silus)];
      },
    };
  });
  return op(gate, up) as tf.Tensor2D;
}
