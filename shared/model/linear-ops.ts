/**
 * Matmuls shaped for the wasm backend. Its fast XNNPACK path runs only plain 2-D non-transposed
 * matMul; autodiff's transposed and batched matmuls take a several times slower path (rates in
 * bench/RESULTS.md, Compute, "Where the time went"). Each op here keeps the layout its passes need
 * so every large product is a plain 2-D matMul, and defines its gradient by hand. Numerics equal
 * plain autodiff up to float summation order (tested).
 */
import * as tf from '@tensorflow/tfjs-core';
import { customOp, hasKernel, runKernel } from './custom-op.ts';
import type { FrozenProducts } from './types.ts';

/**
 * A frozen linear layer. XNNPACK packs the right-hand operand of a product into its own copy
 * (cached per tensor), so how W enters the two products decides memory and speed (GFLOP/s below
 * measured with bench/profile-step.ts on a 2-core AMD EPYC, 1 thread):
 *  - W on the right: y = x·Wᵀ, dx = dy·W. Fastest for small layers (20 GFLOP/s at d = 128), but W
 *    is held four times (both layouts, and a packed copy of each).
 *  - W on the left: yᵀ = W·xᵀ, dxᵀ = Wᵀ·dyᵀ; only activations (N × d) are transposed and packed.
 *    For GPT-2-sized layers (d_out ≥ 2304) this is faster (packed activations stay in cache, a
 *    packed 9 MB W does not; the rates are in bench/RESULTS.md, Compute, "Where the time went") and
 *    W is held twice (both layouts).
 *  - An LM head (d_out of a vocabulary) multiplies on the left forward (22 GFLOP/s) and on the
 *    right backward, where the other way sums over the vocabulary through 51 MB of packed dyᵀ
 *    (12.7 vs 10.1 GFLOP/s): again two copies, W and its packed copy.
 */
export interface FrozenLinear {
  /** (d_out, d_in), nn.Linear's layout; present when a pass needs it */
  outIn?: tf.Tensor2D;
  /** (d_in, d_out), Conv1D's layout; present when a pass needs it */
  inOut?: tf.Tensor2D;
  /** the layout this wrapper made (and must dispose); the stored one belongs to the checkpoint */
  owned?: tf.Tensor2D;
  /** W on the left in the forward product, in the backward one */
  forwardLeft: boolean;
  backwardLeft: boolean;
}

/** From this many output features a layer is treated as an LM head (see FrozenLinear). */
export const VOCABULARY_SIZED = 16384;

/**
 * Wraps a stored weight: (d_in, d_out) when storedInOut (GPT-2 Conv1D), else (d_out, d_in).
 * weightOnTheLeft: the large-model way of multiplying (see FrozenLinear).
 */
export function makeFrozenLinear(stored: tf.Tensor2D, storedInOut: boolean, weightOnTheLeft: boolean): FrozenLinear {
  const dOut = storedInOut ? stored.shape[1] : stored.shape[0];
  const forwardLeft = weightOnTheLeft;
  const backwardLeft = weightOnTheLeft && dOut < VOCABULARY_SIZED;
  const needOutIn = forwardLeft || !backwardLeft;
  const needInOut = !forwardLeft || backwardLeft;
  const owned = (storedInOut ? needOutIn : needInOut) ? tf.keep(tf.transpose(stored)) : undefined;
  return storedInOut
    ? { inOut: stored, outIn: owned, owned, forwardLeft, backwardLeft }
    : { outIn: stored, inOut: owned, owned, forwardLeft, backwardLeft };
}

/** x·Mᵀ for M given as m = M or mT = Mᵀ: x·mT, or (m·xᵀ)ᵀ with m on the left. */
function timesTransposed(
  x: tf.Tensor2D,
  m: tf.Tensor2D | undefined,
  mT: tf.Tensor2D | undefined,
  mOnTheLeft: boolean,
): tf.Tensor2D {
  return mOnTheLeft ? (tf.transpose(tf.matMul(m!, tf.transpose(x))) as tf.Tensor2D) : tf.matMul(x, mT!);
}

/**
 * y = x Wᵀ with W frozen: the gradient flows to x only, never to W. Every product is a plain 2-D
 * matMul, the only kind XNNPACK runs (autodiff would make the backward one a transposed matMul).
 */
export function frozenLinear(x: tf.Tensor2D, layer: FrozenLinear): tf.Tensor2D {
  const products = frozenProducts(layer);
  const op = customOp(([input]) => ({
    value: products.forward(input as tf.Tensor2D),
    gradFunc: (dy) => [products.backward(dy as tf.Tensor2D)],
  }));
  return op(x) as tf.Tensor2D;
}

/** The layer's two products as frozenLinear computes them: x (N, d_in) → (N, d_out) and back. */
export function frozenProducts(layer: FrozenLinear): FrozenProducts {
  return {
    forward: (x) => timesTransposed(x, layer.outIn, layer.inOut, layer.forwardLeft),
    backward: (dy) => timesTransposed(dy, layer.inOut, layer.outIn, layer.backwardLeft),
  };
}

/**
 * The LoRA branch scaling · (x Aᵀ) Bᵀ with gradients for x, A and B, all plain 2-D matMuls
 * (autodiff would make them transposed ones, several times slower on wasm). The transposes are of the
 * thin (·, r) factors only, and so is the scaling: u = scaling·(x Aᵀ) is (N, r), where scaling the
 * (N, d_out) output (PEFT's order, the plain path's) is an extra pass over d_out/r times more numbers,
 * forward and backward. Same math, rounding differs in the last bits (tested against autodiff).
 * Shapes: x (N, d_in), A (r, d_in), B (d_out, r).
 */
export function loraBranch(x: tf.Tensor2D, loraA: tf.Tensor2D, loraB: tf.Tensor2D, scaling: number): tf.Tensor2D {
  // Transposes as matMul flags, not Transpose kernels: on wasm every product with a flag runs the C GEMM,
  // which reads its operands through strides (kernels/c/compact-gemm.c, lm_gemm).
  const op = customOp(([input, a, b], save) => {
    const u = tf.mul(tf.matMul(input as tf.Tensor2D, a as tf.Tensor2D, false, true), scaling); // (N, r)
    save([input, a, b, u]);
    return {
      value: tf.matMul(u, b as tf.Tensor2D, false, true), // (N, d_out)
      gradFunc: (dy, [xs, as, bs, us]) => {
        const du = tf.mul(tf.matMul(dy as tf.Tensor2D, bs as tf.Tensor2D), scaling) as tf.Tensor2D; // (N, r)
        return [
          tf.matMul(du, as as tf.Tensor2D), // dx (N, d_in)
          tf.matMul(du, xs as tf.Tensor2D, true, false), // dA (r, d_in)
          tf.matMul(dy as tf.Tensor2D, us as tf.Tensor2D, true, false), // dB (d_out, r)
        ];
      },
    };
  });
  return op(x, loraA, loraB) as tf.Tensor2D;
}

/** Fused kernels (wasm: kernels/c/fused.c + lm_gemm): y, x, a, b; scale → out = y + scale·(x Aᵀ)Bᵀ, u = scale·(x Aᵀ) */
export const FUSED_LORA = 'LoraMeshLora';
/** dy, x, a, b, u, dxFrozen; scale → dx = dxFrozen + scale·(dy B)A, dA, dB (loraBranch's gradients) */
export const FUSED_LORA_GRAD = 'LoraMeshLoraGrad';

/**
 * An adapted frozen linear, frozen(x) + scaling·(x Aᵀ)Bᵀ, as one op where the backend has the fused
 * kernels: the frozen product, then the branch added to it in one pass over the rows forward, and dx
 * (frozen + branch) in one pass backward with dA and dB as two products. On wasm that is 2 kernels
 * each way where frozenLinear + loraBranch + add run 5 forward and 7 backward, each a pass over
 * (N, d) tensors. loraBranch's math and order of the r-wide scaling; null without the kernels.
 */
export function fusedLoraLinear(
  x: tf.Tensor2D,
  products: FrozenProducts,
  loraA: tf.Tensor2D,
  loraB: tf.Tensor2D,
  scaling: number,
): tf.Tensor2D | null {
  if (!hasKernel(FUSED_LORA)) return null;
  const attrs = { scale: scaling };
  const op = customOp(([input, a, b], save) => {
    const [out, u] = runKernel(FUSED_LORA, { y: products.forward(input as tf.Tensor2D), x: input, a, b }, attrs) as [
      tf.Tensor,
      tf.Tensor,
    ];
    save([input, a, b, u]);
    return {
      value: out,
      gradFunc: (dy, [xs, as, bs, us]) =>
        runKernel(
          FUSED_LORA_GRAD,
          { dy, x: xs, a: as, b: bs, u: us, dxFrozen: products.backward(dy as tf.Tensor2D) },
          attrs,
        ) as tf.Tensor[],
    };
  });
  return op(x, loraA, loraB) as tf.Tensor2D;
}

/** One segment of rows in a multi-adapter pass, with its run's LoRA branch on this layer if it has one. */
export interface LoraSegment {
  rows: number;
  branch?: { A: tf.Tensor2D; B: tf.Tensor2D; scaling: number };
}

/**
 * fusedLoraLinear over rows that hold several runs' micro-batches (the pool's multi-adapter pass): the frozen
 * products once for all rows, then each segment's own LoRA branch (its rank, or none) on its rows. Per
 * segment the kernels are fusedLoraLinear's with the same inputs: the frozen product's rows do not depend
 * on the other rows (kernels/c/compact-gemm.c sums each element over k in a fixed order), so every segment
 * gets the bits of its micro-batch alone, forward and backward. Null without the fused kernels.
 */
export function segmentedLoraLinear(
  x: tf.Tensor2D,
  products: FrozenProducts,
  segments: LoraSegment[],
): tf.Tensor2D | null {
  if (!hasKernel(FUSED_LORA)) return null;
  const sizes = segments.map((s) => s.rows);
  const adapted = segments.flatMap((s, j) => (s.branch ? [j] : []));
  const split = (t: tf.Tensor) => (segments.length === 1 ? [t] : tf.split(t, sizes, 0));
  const join = (ts: tf.Tensor[]) => (ts.length === 1 ? ts[0] : tf.concat(ts, 0));
  const op = customOp((inputs, save) => {
    const input = inputs[0] as tf.Tensor2D;
    const [xs, ys] = [split(input), split(products.forward(input))];
    const us: tf.Tensor[] = [];
    const outs = ys.map((y, j) => {
      const branch = segments[j].branch;
      if (!branch) return y;
      const [out, u] = runKernel(FUSED_LORA, { y, x: xs[j], a: branch.A, b: branch.B }, { scale: branch.scaling }) as [
        tf.Tensor,
        tf.Tensor,
      ];
      us.push(u);
      return out;
    });
    save([...adapted.map((j) => xs[j]), ...us]);
    return {
      value: join(outs),
      gradFunc: (dy, saved) => {
        const [dys, dxFrozen] = [split(dy), split(products.backward(dy as tf.Tensor2D))];
        const dx = [...dxFrozen];
        const dA: tf.Tensor[] = [];
        const dB: tf.Tensor[] = [];
        adapted.forEach((j, n) => {
          const { A, B, scaling } = segments[j].branch!;
          const inputs = { dy: dys[j], x: saved[n], a: A, b: B, u: saved[adapted.length + n], dxFrozen: dxFrozen[j] };
          const [dxj, dAj, dBj] = runKernel(FUSED_LORA_GRAD, inputs, { scale: scaling }) as tf.Tensor[];
          dx[j] = dxj;
          dA.push(dAj);
          dB.push(dBj);
        });
        return [join(dx), ...dA, ...dB];
      },
    };
  });
  const branches = adapted.map((j) => segments[j].branch!);
  return op(x, ...branches.map((b) => b.A), ...branches.map((b) => b.B)) as tf.Tensor2D;
}

/** y = x Wᵀ with W trainable (full pretraining): dx = dy W, dW = dyᵀ x, all plain 2-D matmuls. */
export function trainableLinear(x: tf.Tensor2D, weight: tf.Tensor2D): tf.Tensor2D {
  const op = customOp(([input, w], save) => {
    save([input, w]); // tfjs keeps only saved tensors alive until the backward pass
    return {
      value: tf.matMul(input as tf.Tensor2D, tf.transpose(w as tf.Tensor2D)), // (N, d_out)
      gradFunc: (dy, [xs, ws]) => [
        tf.matMul(dy as tf.Tensor2D, ws as tf.Tensor2D), // (N, d_in)
        tf.matMul(tf.transpose(dy as tf.Tensor2D), xs as tf.Tensor2D), // (d_out, d_in)
      ],
    };
  });
  return op(x, weight) as tf.Tensor2D;
}

/** y = x M for a constant M given with its transpose, so both passes are plain matmuls. */
export function constMatMul(x: tf.Tensor2D, m: tf.Tensor2D, mT: tf.Tensor2D): tf.Tensor2D {
  const op = customOp(([input]) => ({
    value: tf.matMul(input as tf.Tensor2D, m),
    gradFunc: (dy) => [tf.matMul(dy as tf.Tensor2D, mT)],
  }));
  return op(x) as tf.Tensor2D;
}

/**
 * Embedding lookup with a gradient for the table: gather's own gradient needs UnsortedSegmentSum,
 * which the wasm backend lacks; dE = onehot(ids)ᵀ · dy is a plain matmul. Only full pretraining
 * differentiates the table (N·V·d extra flops: fine for small vocabularies).
 */
export function trainableEmbedding(ids: tf.Tensor1D, table: tf.Tensor2D): tf.Tensor2D {
  const vocab = table.shape[0];
  const op = customOp(([t], save) => {
    save([ids]);
    return {
      value: tf.gather(t, ids), // (N, d)
      gradFunc: (dy, [savedIds]) => [
        tf.matMul(tf.transpose(tf.oneHot(savedIds as tf.Tensor1D, vocab)), dy as tf.Tensor2D),
      ], // (V, d)
    };
  });
  return op(table) as tf.Tensor2D;
}
