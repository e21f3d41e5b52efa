/**
 * A micro-batch is the unit of work: B sequences of T tokens with next-token targets and a loss
 * mask (1 where the target token counts, e.g. only completion tokens). It carries the token ids
 * themselves, so a worker needs nothing but the base model and the current LoRA parameters.
 */
import { fail, ErrorCodes } from '../errors.ts';

export interface MicroBatch {
  batch: number;
  time: number;
  /** (B, T) */
  inputIds: Int32Array;
  /** (B, T): the token that should follow each input position */
  targets: Int32Array;
  /** (B, T): 1 where the target counts toward the loss, else 0 */
  lossMask: Float32Array;
  /** seeds the LoRA dropout masks of this micro-batch */
  dropoutSeed: number;
}

/** One training example: tokens, and which of them (as targets) count toward the loss. */
export interface Example {
  tokens: number[];
  /** same length as tokens; weight[i] = 1 if predicting tokens[i] counts */
  lossWeights: number[];
}

/** Packs examples into a micro-batch, right-padded to the longest one (padding is masked out). */
export function packMicroBatch(examples: Example[], padId: number, dropoutSeed: number): MicroBatch {
  if (examples.length === 0) fail(ErrorCodes.DATA, 'a micro-batch needs at least one example');
  const time = Math.max(...examples.map((e) => e.tokens.length)) - 1;
  if (time < 1) fail(ErrorCodes.DATA, 'every example needs at least 2 tokens');
  const batch = examples.length;
  const inputIds = new Int32Array(batch * time).fill(padId);
  const targets = new Int32Array(batch * time).fill(padId);
  const lossMask = new Float32Array(batch * time);
  examples.forEach((e, b) => {
    for (let t = 0; t + 1 < e.tokens.length; t++) {
      inputIds[b * time + t] = e.tokens[t];
      targets[b * time + t] = e.tokens[t + 1];
      lossMask[b * time + t] = e.lossWeights[t + 1];
    }
  });
  return { batch, time, inputIds, targets, lossMask, dropoutSeed };
}

export function tokenCount(mb: MicroBatch): number {
  let n = 0;
  for (const w of mb.lossMask) n += w;
  return n;
}
