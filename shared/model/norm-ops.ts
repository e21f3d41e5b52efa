/**
 * Normalizations and activations with hand-written gradients. Autodiff of their textbook formulas
 * records 10–20 small kernels per call and replays each backward; the closed forms below need a
 * few. Each equals the textbook formula (tested against autodiff in test/shared/lora-fast-path.test.ts).
 * Where the backend has the fused kernels below (wasm: kernels/c/fused.c, registered by
 * kernels/wasm-kernels.ts), each frozen-parameter form is one kernel forward and one backward, and
 * keeps less for the backward pass (the input and a value per row, not x̂; SwiGLU and GELU recompute
 * their sigmoid). Shapes: x (N, d); weights and biases (d).
 */
import * as tf from '@tensorflow/tfjs-core';
import { customOp, hasKernel, runKernel } from './custom-op.ts';

/** Fused kernels (inputs → outputs): x, w; eps → y, rstd (N) */
export const FUSED_RMS_NORM = 'LoraMeshRmsNorm';
/** dy, x, w, rstd → dx */
export const FUSED_RMS_NORM_GRAD = 'LoraMeshRmsNormGrad';
/** x, w, b; eps → y, mean (N), rstd (N) */
export const FUSED_LAYER_NORM = 'LoraMeshLayerNorm';
/** dy, x, w, mean, rstd → dx */
export const FUSED_LAYER_NORM_GRAD = 'LoraMeshLayerNormGrad';
/** g, u → silu(g)·u */
export const FUSED_SWIGLU = 'LoraMeshSwiglu';
/** dy, g, u → dg, du */
export const FUSED_SWIGLU_GRAD = 'LoraMeshSwigluGrad';
/** x → gelu_new(x) */
export const FUSED_GELU = 'LoraMeshGelu';
/** dy, x → dx */
export const FUSED_GELU_GRAD = 'LoraMeshGeluGrad';

/** x (N, heads·hs), cos, sin (N, hs) → x rotated per head (HF rotate_half form) */
export const FUSED_ROPE = 'LoraMeshRope';
/** dy, cos, sin → dx */
export const FUSED_ROPE_GRAD = 'LoraMeshRopeGrad';

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
  if (hasKernel(FUSED_LAYER_NORM)) {
    const op = customOp(([input], save) => {
      const [y, mean, rstd] = runKernel(FUSED_LAYER_NORM, { x: input, w, b }, { eps }) as tf.Tensor[];
      save([input, mean, rstd]);
      return {
        value: y,
        gradFunc: (dy, [xs, m, r]) => [
          runKernel(FUSED_LAYER_NORM_GRAD, { dy, x: xs, w, mean: m, rstd: r }) as tf.Tensor,
        ],
      };
    });
    return op(x) as tf.Tensor2D;
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
  if (hasKernel(FUSED_RMS_NORM)) {
    const op = customOp(([input], save) => {
      const [y, rstd] = runKernel(FUSED_RMS_NORM, { x: input, w }, { eps }) as tf.Tensor[];
      save([input, rstd]);
      return {
        value: y,
        gradFunc: (dy, [xs, r]) => [runKernel(FUSED_RMS_NORM_GRAD, { dy, x: xs, w, rstd: r }) as tf.Tensor],
      };
    });
    return op(x) as tf.Tensor2D;
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
  if (hasKernel(FUSED_GELU)) {
    const op = customOp(([input], save) => {
      save([input]);
      return {
        value: runKernel(FUSED_GELU, { x: input }) as tf.Tensor,
        gradFunc: (dy, [xs]) => [runKernel(FUSED_GELU_GRAD, { dy, x: xs }) as tf.Tensor],
      };
    });
    return op(x) as tf.Tensor2D;
  }
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
  if (hasKernel(FUSED_SWIGLU)) {
    const op = customOp(([g, u], save) => {
      save([g, u]);
      return {
        value: runKernel(FUSED_SWIGLU, { g, u }) as tf.Tensor,
        gradFunc: (dy, [gs, us]) => runKernel(FUSED_SWIGLU_GRAD, { dy, g: gs, u: us }) as tf.Tensor[],
      };
    });
    return op(gate, up) as tf.Tensor2D;
  }
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

/**
 * Rotary embedding per head, x (N, heads·hs) with cos and sin (N, hs), as one fused kernel each way
 * where the backend has it (the same bits as llama.ts's tf-op form); null where it does not.
 */
export function fusedRope(x: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor2D | null {
  if (!hasKernel(FUSED_ROPE)) return null;
  const op = customOp(([input], save) => {
    save([cos, sin]);
    return {
      value: runKernel(FUSED_ROPE, { x: input, cos, sin }) as tf.Tensor,
      gradFunc: (dy, [c, s]) => [runKernel(FUSED_ROPE_GRAD, { dy, cos: c, sin: s }) as tf.Tensor],
    };
  });
  return op(x) as tf.Tensor2D;
}
