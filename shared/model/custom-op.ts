/** tf.customGrad with the save function split off from the tensor inputs (tfjs passes it last). */
import * as tf from '@tensorflow/tfjs-core';

export type GradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[];

/**
 * An op with a hand-written gradient: f gets the input tensors and a save function (tfjs keeps
 * only saved tensors alive until the backward pass) and returns the value and its gradient
 * function, which returns one gradient per input, in order.
 */
export function customOp(f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFunc }) {
  return tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save);
  }) as Parameters<typeof tf.customGrad>[0]);
}

/** Whether the current backend registers kernel `name` (the fused kernels of kernels/wasm-kernels.ts). */
export const hasKernel = (name: string): boolean => tf.getKernel(name, tf.getBackend()) !== undefined;

/** Runs a registered kernel by name (no gradient of its own: callers wrap it in customOp). */
export const runKernel = (name: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}) =>
  tf.engine().runKernel(name, inputs, attrs);
