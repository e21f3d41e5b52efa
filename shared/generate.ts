/**
 * Text generation with a KV cache: greedy, temperature and top-p (nucleus) sampling. Prompts in
 * one call share a length (callers group them), so no padding enters the attention.
 */
import * as tf from '@tensorflow/tfjs-core';
import { contextLength } from './config.ts';
import type { CausalLM, KvCache, ParamSource } from './model/causal-lm.ts';
import { Rng } from './rng.ts';

export interface SamplingOptions {
  maxNewTokens: number;
  /** 0 means greedy (argmax) */
  temperature?: number;
  /** nucleus sampling: keep the smallest set of tokens whose probability reaches topP */
  topP?: number;
  /** stop a sequence once it emits this token (kept in the output) */
  eosId?: number;
  seed?: number;
}

export function generate(model: CausalLM, params: ParamSource, prompts: number[][], opts: SamplingOptions): number[][] {
  const batch = prompts.length;
  const promptLength = prompts[0].length;
  if (prompts.some((p) => p.length !== promptLength))
    throw new Error('generate: prompts in one call must have the same length');
  if (promptLength + opts.maxNewTokens > contextLength(model.config)) {
    throw new Error(
      `generate: ${promptLength} + ${opts.maxNewTokens} tokens ` +
        `exceed the context length ${contextLength(model.config)}`,
    );
  }
  const rng = new Rng(opts.seed ?? 0);
  const cache: KvCache = { keys: [], values: [], length: 0 };
  const outputs: number[][] = prompts.map(() => []);
  const done = new Array<boolean>(batch).fill(false);
  let input = prompts;
  try {
    for (let step = 0; step < opts.maxNewTokens && !done.every(Boolean); step++) {
      const time = input[0].length;
      const lastLogits = tf.tidy(() => {
        const ids = tf.tensor2d(input.flat(), [batch, time], 'int32');
        const logits = model.forward(params, ids, cache); // (B·T, V)
        const lastRows = tf.tensor1d(
          Array.from({ length: batch }, (_, b) => b * time + time - 1),
          'int32',
        );
        return tf.gather(logits, lastRows); // (B, V)
      });
      const vocab = lastLogits.shape[1];
      const values = lastLogits.dataSync() as Float32Array;
      lastLogits.dispose();
      const next: number[] = [];
      for (let b = 0; b < batch; b++) {
        const token = pickToken(values.subarray(b * vocab, (b + 1) * vocab), opts, rng);
        next.push(token);
        if (!done[b]) outputs[b].push(token);
        if (token === opts.eosId) done[b] = true;
      }
      input = next.map((t) => [t]);
    }
  } finally {
    tf.dispose([...cache.keys, ...cache.values]);
  }
  return outputs;
}

function pickToken(logits: Float32Array, opts: SamplingOptions, rng: Rng): number {
  const temperature = opts.temperature ?? 0;
  if (temperature <= 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = -Infinity;
  for (const l of logits) max = Math.max(max, l);
  const probs = Array.from(logits, (l, i) => ({ i, p: Math.exp((l - max) / temperature) }));
  const total = probs.reduce((s, x) => s + x.p, 0);
  probs.sort((a, b) => b.p - a.p);
  const topP = opts.topP ?? 1;
  let kept = 0;
  let mass = 0;
  while (kept < probs.length && (kept === 0 || mass < topP * total)) mass += probs[kept++].p;
  let u = rng.next() * mass;
  for (let k = 0; k < kept; k++) {
    u -= probs[k].p;
    if (u <= 0) return probs[k].i;
  }
  return probs[kept - 1].i;
}
