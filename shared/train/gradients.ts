/**
 * What a worker computes for one micro-batch: the SUM of per-token losses and the gradient of that
 * sum w.r.t. every LoRA A and B. Sums (not means) let the coordinator add micro-batches in a fixed
 * order and divide once by the global token count, so N workers equal one process exactly.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, loraScaling } from '../config.ts';
import type { AdapterState, AdapterTensorSpec } from '../lora/adapter.ts';
import { type FrozenBase, loraBranches, withLora, withSegmentedLora } from '../lora/params.ts';
import type { CausalLM, FrozenProducts, ParamSource } from '../model/causal-lm.ts';
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

/**
 * Logits held at once by the fused head + loss: rows per chunk = this / (4·V) (at least 1). 64 MiB is
 * 110 rows of a 152k vocabulary (Qwen2.5), 333 of GPT-2's 50k, every row of a small one.
 */
export const LOGITS_CHUNK_BYTES = 64 * 2 ** 20;

/** Rows of (rows, vocab) logits the fused head + loss computes at once. */
export const headChunkRows = (rows: number, vocab: number, budget = LOGITS_CHUNK_BYTES) =>
  Math.max(1, Math.min(rows, Math.floor(budget / (4 * vocab))));

/**
 * tokenLossSum(hidden·Wᵀ, …) for a frozen head W without ever holding the (N, V) logits: a chunk of
 * rows at a time computes its logits, their loss terms and their gradient dhidden = dlogits·W, then
 * drops the logits (as fused linear cross-entropy does; Liger-Kernel). Every row goes through the
 * same operations as in tokenLossSum and the head's own custom gradient, and these kernels treat rows
 * independently, so the loss and dhidden are the same bits whatever the chunk size (tested). The
 * gradient is formed for an upstream gradient of 1 (the loss is the root) and scaled by dy after.
 */
export function fusedHeadLoss(
  hidden: tf.Tensor2D,
  head: FrozenProducts,
  vocab: number,
  targets: tf.Tensor1D,
  mask: tf.Tensor1D,
  chunkRows = headChunkRows(hidden.shape[0], vocab),
  withGradient = true,
): tf.Scalar {
  const rows = hidden.shape[0];
  /** The loss terms (n, 1) of a chunk of rows and, with the gradient, their dhidden (n, d). */
  const chunk = (h: tf.Tensor2D, start: number, size: number) =>
    tf.tidy(() => {
      const z = head.forward(tf.slice(h, [start, 0], [size, -1])); // (n, V)
      const t = tf.slice(targets, [start], [size]);
      const w = tf.reshape(tf.slice(mask, [start], [size]), [size, 1]);
      const shifted = tf.sub(z, tf.max(z, -1, true));
      const exps = tf.exp(shifted);
      const sums = tf.sum(exps, -1, true); // (n, 1)
      const flatTargets = tf.add(tf.mul(tf.range(0, size, 1, 'int32'), tf.scalar(vocab, 'int32')), t);
      const picked = tf.reshape(tf.gather(tf.reshape(shifted, [-1]), flatTargets), [size, 1]);
      const term = tf.mul(tf.sub(tf.log(sums), picked), w); // (n, 1)
      if (!withGradient) return [term];
      const dz = tf.sub(tf.mul(exps, tf.div(w, sums)), tf.mul(tf.oneHot(t, vocab), w)) as tf.Tensor2D;
      return [term, head.backward(dz)];
    });
  const run = (h: tf.Tensor2D) => {
    const parts = Array.from({ length: Math.ceil(rows / chunkRows) }, (_, c) =>
      chunk(h, c * chunkRows, Math.min(chunkRows, rows - c * chunkRows)),
    );
    const join = (ts: tf.Tensor[]) => (ts.length === 1 ? ts[0] : tf.concat(ts, 0));
    return {
      value: tf.sum(join(parts.map((p) => p[0]))) as tf.Scalar,
      grad: withGradient ? join(parts.map((p) => p[1])) : null,
    };
  };
  // Evaluation needs no gradient: no custom op, no dhidden.
  if (!withGradient) return run(hidden).value;
  const op = customOp(([h], save) => {
    const { value, grad } = run(h as tf.Tensor2D);
    save([grad!]);
    return { value, gradFunc: (dy, [saved]) => [tf.mul(saved, dy)] };
  });
  return op(hidden) as tf.Scalar;
}

/** Σ token losses of a forward pass: the fused head + loss where the head is frozen, else through the full logits. */
function lossOf(
  model: CausalLM,
  params: ParamSource,
  inputIds: tf.Tensor2D,
  targets: tf.Tensor1D,
  mask: tf.Tensor1D,
  withGradient: boolean,
): tf.Scalar {
  if (!params.head) return tokenLossSum(model.forward(params, inputIds), targets, mask);
  const vocab = model.config.vocab_size;
  const hidden = model.hidden(params, inputIds);
  return fusedHeadLoss(hidden, params.head, vocab, targets, mask, undefined, withGradient);
}

/** How a step computes, without changing its result: memory against time. */
export interface StepOptions {
  /** recompute each block's forward in the backward pass (shared/model/recompute.ts): same bits, ~1/3 more compute */
  recompute?: boolean;
}

/** Forward and backward pass of one micro-batch; the caller reads and disposes the tensors. */
function gradientTensors(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  adapter: AdapterState,
  lora: LoraConfig,
  mb: MicroBatch,
  options: StepOptions = {},
): { value: tf.Scalar; grads: tf.Tensor[] } {
  const scaling = loraScaling(lora);
  return tf.tidy(() => {
    const inputIds = tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32');
    const targets = tf.tensor1d(mb.targets, 'int32');
    const mask = tf.tensor1d(mb.lossMask);
    const tensors = spec.map((t) => tf.tensor2d(adapter.get(t.name)!, t.shape));
    const loss = (...ab: tf.Tensor[]) => {
      const branches = loraBranches(spec, (i) => ab[i] as tf.Tensor2D);
      const dropout = { p: lora.dropout, seed: mb.dropoutSeed };
      const params: ParamSource = withLora(base, branches, scaling, dropout, options);
      return lossOf(model, params, inputIds, targets, mask, true);
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
  options: StepOptions = {},
): GradientResult {
  const out = gradientTensors(model, base, spec, adapter, lora, mb, options);
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
  options: StepOptions = {},
): Promise<GradientResult> {
  const out = gradientTensors(model, base, spec, adapter, lora, mb, options);
  try {
    const values = await Promise.all(out.grads.map((g) => g.data() as Promise<Float32Array>));
    const lossSum = (await out.value.data())[0];
    return { lossSum, tokenCount: tokenCount(mb), grads: new Map(spec.map((t, i) => [t.name, values[i]])) };
  } finally {
    tf.dispose([out.value, ...out.grads]);
  }
}

/** One run's micro-batch in a multi-adapter pass. */
export interface MixedJob {
  spec: AdapterTensorSpec[];
  adapter: AdapterState;
  lora: LoraConfig;
  mb: MicroBatch;
}

/**
 * Whether these runs' micro-batches can share one pass (the pool's multi-adapter pass). Not when a run has
 * LoRA dropout or LoRA on lm_head, when the step recomputes activations, or on the plain (autodiff reference)
 * base: each of those computes alone.
 */
export function canMix(base: FrozenBase, jobs: MixedJob[], options: StepOptions = {}): boolean {
  return (
    jobs.length >= 1 &&
    !base.plain &&
    !options.recompute &&
    jobs.every((j) => j.lora.dropout === 0 && !j.spec.some((t) => t.modulePath === 'lm_head'))
  );
}

/**
 * Forward and backward of several runs' micro-batches in one pass: their rows one after another, every frozen
 * product and row-wise kernel once over all rows, and each run's rows through its own LoRA branches, its own
 * attention and its own loss. The loss's root is the sum of the runs' losses; since a run's adapter touches
 * only its own rows, each run's gradient is its own loss's, and every kernel treats rows independently (or
 * runs per segment), so each run gets the bits of its micro-batch computed alone (tested). The caller reads
 * and disposes the tensors.
 */
function mixedGradientTensors(
  model: CausalLM,
  base: FrozenBase,
  jobs: MixedJob[],
): { losses: tf.Scalar[]; grads: tf.Tensor[][] } {
  const losses: tf.Scalar[] = [];
  const rows = jobs.map((j) => j.mb.batch * j.mb.time);
  const ids = new Int32Array(rows.reduce((a, b) => a + b, 0));
  let at = 0;
  for (const j of jobs) {
    ids.set(j.mb.inputIds, at);
    at += j.mb.inputIds.length;
  }
  try {
    return tf.tidy(() => {
      const tensors = jobs.flatMap((j) => j.spec.map((t) => tf.tensor2d(j.adapter.get(t.name)!, t.shape)));
      const loss = (...ab: tf.Tensor[]) => {
        let offset = 0;
        const runs = jobs.map((j, r) => {
          const from = offset;
          offset += j.spec.length;
          return {
            rows: rows[r],
            branches: loraBranches(j.spec, (i) => ab[from + i] as tf.Tensor2D),
            scaling: loraScaling(j.lora),
          };
        });
        const params = withSegmentedLora(base, runs);
        const hidden = model.hiddenSegments(
          params,
          tf.tensor1d(ids, 'int32'),
          jobs.map((j) => ({ batch: j.mb.batch, time: j.mb.time })),
        );
        const parts = jobs.length === 1 ? [hidden] : (tf.split(hidden, rows, 0) as tf.Tensor2D[]);
        jobs.forEach((j, r) => {
          const targets = tf.tensor1d(j.mb.targets, 'int32');
          const mask = tf.tensor1d(j.mb.lossMask);
          // as lossOf: the fused head + loss where the head is frozen, else the full logits
          const value = params.head
            ? fusedHeadLoss(parts[r], params.head, model.config.vocab_size, targets, mask)
            : tokenLossSum(params.linear('lm_head', parts[r]), targets, mask);
          losses.push(tf.keep(value));
        });
        return losses.length === 1 ? losses[0] : (tf.addN(losses) as tf.Scalar);
      };
      const { grads } = tf.valueAndGrads(loss)(tensors);
      let offset = 0;
      return {
        losses,
        grads: jobs.map((j) => {
          offset += j.spec.length;
          return grads.slice(offset - j.spec.length, offset);
        }),
      };
    });
  } catch (err) {
    tf.dispose(losses);
    throw err;
  }
}

/**
 * computeGradients for several runs' micro-batches in one pass (see mixedGradientTensors), asynchronous reads:
 * one GradientResult per job, in order, each the same as computeGradients gives for that job alone. The
 * jobs must pass canMix.
 */
export async function computeMixedGradientsAsync(
  model: CausalLM,
  base: FrozenBase,
  jobs: MixedJob[],
): Promise<GradientResult[]> {
  const out = mixedGradientTensors(model, base, jobs);
  try {
    return await Promise.all(
      jobs.map(async (j, r) => {
        const values = await Promise.all(out.grads[r].map((g) => g.data() as Promise<Float32Array>));
        const lossSum = (await out.losses[r].data())[0];
        return { lossSum, tokenCount: tokenCount(j.mb), grads: new Map(j.spec.map((t, i) => [t.name, values[i]])) };
      }),
    );
  } finally {
    tf.dispose([...out.losses, ...out.grads.flat()]);
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
    const params = withLora(base, branches, loraScaling(lora));
    const inputIds = tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32');
    return lossOf(model, params, inputIds, tf.tensor1d(mb.targets, 'int32'), tf.tensor1d(mb.lossMask), false);
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
