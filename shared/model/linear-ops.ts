/**
 * Matmuls shaped for the wasm backend. Its fast XNNPACK path runs only plain 2-D non-transposed
 * matMul; autodiff's transposed and batched matmuls run 7–12× slower (DESIGN.md §7). Each op here
 * keeps the layout its passes need so every large product is a plain 2-D matMul, and defines its
 * gradient by hand. Numerics equal plain autodiff up to float summation order (tested).
 */
import * as tf from '@tensorflow/tfjs-core';

type GradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[];

/** tf.customGrad with the save function split off from the tensor inputs (tfjs passes it last). */
function customOp(f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFunc }) {
  return tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save);
  }) as Parameters<typeof tf.customGrad>[0]);
}

/** A frozen linear layer in both layouts: forward needs Wᵀ, backward (dx only) needs W. */
export interface FrozenLinear {
  /** (d_out, d_in), Hugging Face layout */
  weight: tf.Tensor2D;
  /** (d_in, d_out) */
  weightT: tf.Tensor2D;
  /** the layout this wrapper made (and must dispose); the other one belongs to the checkpoint */
  owned?: tf.Tensor2D;
}

/** From a (d_out, d_in) weight (nn.Linear). */
export function makeFrozenLinear(weight: tf.Tensor2D): FrozenLinear {
  const weightT = tf.keep(tf.transpose(weight));
  return { weight, weightT, owned: weightT };
}

/** From a (d_in, d_out) weight (GPT-2 Conv1D). */
export function makeFrozenLinearFromTransposed(weightT: tf.Tensor2D): FrozenLinear {
  const weight = tf.keep(tf.transpose(weightT));
  return { weight, weightT, owned: weight };
}

/** y = x Wᵀ with W frozen: the gradient flows to x only, never to W. */
export function frozenLinear(x: tf.Tensor2D, layer: FrozenLinear): tf.Tensor2D {
  const op = customOp(([input]) => ({
    value: tf.matMul(input as tf.Tensor2D, layer.weightT), // (N, d_out)
    gradFunc: (dy) => [tf.matMul(dy as tf.Tensor2D, layer.weight)], // (N, d_in)
  }));
  return op(x) as tf.Tensor2D;
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
      gradFunc: (dy, [savedIds]) => [tf.matMul(tf.transpose(tf.oneHot(savedIds as tf.Tensor1D, vocab)), dy as tf.Tensor2D)], // (V, d)
    };
  });
  return op(table) as tf.Tensor2D;
}
