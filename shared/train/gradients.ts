/**
 * What a worker computes for one micro-batch: the SUM of per-token losses and the gradient of that
 * sum w.r.t. every LoRA A and B. Sums (not means) let the coordinator add micro-batches in a fixed
 * order and divide once by the global token count, so N workers equal one process exactly.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, loraScaling } from '../config.ts';
import type { AdapterState, AdapterTensorSpec } from '../lora/adapter.ts';
import { type FrozenBase, loraBranches, withLora } from '../lora/params.ts';
import type { CausalLM, ParamSource } from '../model/causal-lm.ts';
import { customOp } from '../model/custom-op.ts';
import { type MicroBatch, tokenCount } from './micro-batch.ts';

export interface GradientResult {
  lossSum: number;
  tokenCount: number;
  grads: AdapterState;
}

/**
 * Σ mask·(−log softmax(logits)[target]) over all positions; logits (N, V), targets (N), mask (N).
 * Written as Σ mask·(logsumexp(z) − z[target]) with z = logits − rowmax and a hand-written
 * gradient, dlogits = mask·(softmax(z) − onehot(target)): four passes over the (N, V) logits each
 * way instead of autodiff's dozen (the vocabulary makes this the largest elementwise work).
 */
export function tokenLossSum(logits: tf.Tensor2D, targets: tf.Tensor1D, mask: tf.Tensor1D): tf.Scalar {
  const [rows, vocab] = logits.shape;
  const weights = tf.reshape(mask, [rows, 1]);
  const op = customOp(([z], save) => {
    const shifted = tf.sub(z, tf.max(z, -1, true)); // (N, V), max 0 per row
    const exps = tf.exp(shifted);
    const sums = tf.sum(exps, -1, true); // (N, 1)
    // row·V + target
    const flatTargets = tf.add(tf.mul(tf.range(0, rows, 1, 'int32'), tf.scalar(vocab, 'int32')), targets);
    const picked = tf.reshape(tf.gather(tf.reshape(shifted, [-1]), flatTargets), [rows, 1]); // z[target]
    save([exps, sums]);
    return {
      value: tf.sum(tf.mul(tf.sub(tf.log(sums), picked), weights)),
      gradFunc: (dy, [e, s]) => {
        const w = tf.mul(weights, dy); // (N, 1)
        return [tf.sub(tf.mul(e, tf.div(w, s)), tf.mul(tf.oneHot(targets, vocab), w))];
      },
    };
  });
  return op(logits) as tf.Scalar;
}

/** Forward and backward pass of one micro-batch; the caller reads and disposes the tensors. */
function gradientTensors(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  mb: MicroBatch,
): { value: tf.Scalar; grads: tf.Tensor[] } {
  const scaling = loraScaling(lora);
  return tf.tidy(() => {
    const inputIds = tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32');
    const targets = tf.tensor1d(mb.targets, 'int32');
    const mask = tf.tensor1d(mb.lossMask);
    const tensors = spec.map((t) => tf.tensor2d(adapter.get(t.name)!, t.shape));
    const loss = (...ab: tf.Tensor[]) => {
      const branches = loraBranches(spec, (i) => ab[i] as tf.Tensor2D);
      const params: ParamSource = withLora(base, branches, scaling, { p: lora.dropout, seed: mb.dropoutSeed });
      return tokenLossSum(model.forward(params, inputIds), targets, mask);
    };
    const { value, grads } = tf.valueAndGrads(loss)(tensors);
    return { value, grads };
  });
}

/** Reads synchronously: fine on wasm, cpu and tfjs-node; WebGPU in Node needs computeGradientsAsync. */
export function computeGradients(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  mb: MicroBatch,
): GradientResult {
  const out = gradientTensors(model, base, spec, adapter, lora, mb);
  const grads: AdapterState = new Map();
  spec.forEach((t, i) => grads.set(t.name, out.grads[i].dataSync() as Float32Array));
  const lossSum = out.value.dataSync()[0];
  tf.dispose([out.value, ...out.grads]);
  return { lossSum, tokenCount: tokenCount(mb), grads };
}

/**
 * computeGradients with asynchronous reads, the same numbers on every backend. Workers use this:
 * WebGPU's dataSync draws the buffer through an OffscreenCanvas, which Node does not have (it
 * throws there), and in browsers a synchronous GPU read stalls the page.
 */
export async function computeGradientsAsync(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  mb: MicroBatch,
): Promise<GradientResult> {
  const out = gradientTensors(model, base, spec, adapter, lora, mb);
  try {
    const values = await Promise.all(out.grads.map((g) => g.data() as Promise<Float32Array>));
    const lossSum = (await out.value.data())[0];
    return { lossSum, tokenCount: tokenCount(mb), grads: new Map(spec.map((t, i) => [t.name, values[i]])) };
  } finally {
    tf.dispose([out.value, ...out.grads]);
  }
}

/** Σ token losses of one micro-batch, forward only; the caller reads and disposes it. */
function evalLossTensor(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  mb: MicroBatch,
): tf.Scalar {
  return tf.tidy(() => {
    const branches = loraBranches(spec, (i) => tf.tensor2d(adapter.get(spec[i].name)!, spec[i].shape));
    const logits = model.forward(
      withLora(base, branches, loraScaling(lora)),
      tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32'),
    );
    return tokenLossSum(logits, tf.tensor1d(mb.targets, 'int32'), tf.tensor1d(mb.lossMask));
  });
}

/**
 * Σ token losses and token count over micro-batches, forward only (evaluation). Reads synchronously, see
 * computeGradients.
 */
export function evaluateLoss(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  microBatches: MicroBatch[],
): { lossSum: number; tokenCount: number } {
  let lossSum = 0;
  let count = 0;
  for (const mb of microBatches) {
    const loss = evalLossTensor(model, base, spec, adapter, lora, mb);
    lossSum += loss.dataSync()[0];
    loss.dispose();
    count += tokenCount(mb);
  }
  return { lossSum, tokenCount: count };
}
