/**
 * What a relay's answer goes through before it counts (the relay is trusted, but its frames are checked like a
 * worker's). The answer comes as one frame per block sum (`block-sum`) and per result sent up whole
 * (`block-forward`), each taken by `takePart` as it arrives, then the `block-result` that closes it, checked by
 * `admitBlockResult`: it answers exactly the blocks it holds, each micro-batch once with its expected token count,
 * each block's token and loss sums agree with its micro-batches' (the loss summed in order, so exactly), and every
 * partial sum decodes as float32, finite and too small to overflow the step's sum. Results the root asked for
 * whole (its spot checks) must be there. The first failure throws its LoraMeshError.
 */
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import {
  splitTensors,
  unpackFloats,
  type BlockForward,
  type BlockItem,
  type BlockResult,
  type BlockSum,
  type RunManifest,
} from '../../shared/protocol/messages.ts';
import { F32 } from '../../shared/protocol/wire-codec.ts';
import type { StepGradient } from '../../shared/train/aggregate.ts';
import { tokenCount } from '../../shared/train/micro-batch.ts';
import { finiteNorm, overflowBound } from './defence.ts';
import type { StepInFlight } from './step-in-flight.ts';

/** The whole-block assignment a relay holds. */
export interface BlockHolding {
  blockSize: number;
  blocks: number[];
  /** the micro-batch indices of those blocks, in order, and their attempt ids */
  indices: number[];
  attempts: string[];
  /** indices whose results the root asked for whole (its secret spot checks) */
  forward: number[];
  /** the answer's frames so far: block sums by block, results sent up whole by micro-batch index */
  sums: Map<number, BlockSum>;
  forwarded: Map<number, BlockForward>;
}

/** One frame of a relay's answer, kept until its block-result: each block and micro-batch held, at most once. */
export function takePart(m: BlockSum | BlockForward, held: BlockHolding): void {
  if (m.type === 'block-sum') {
    if (!held.blocks.includes(m.block) || held.sums.has(m.block))
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `block-sum for block ${m.block}, which it does not hold once`);
    held.sums.set(m.block, m);
  } else {
    if (!held.indices.includes(m.index) || held.forwarded.has(m.index))
      throw new LoraMeshError(
        ErrorCodes.ASSIGNMENT,
        `block-forward of micro-batch ${m.index}, which it does not hold once`,
      );
    held.forwarded.set(m.index, m);
  }
}

/** A block-result that may be summed. */
export interface AdmittedBlocks {
  partials: Map<number, StepGradient>;
  items: Map<number, BlockItem>;
  /** results sent up whole, by micro-batch index */
  forwarded: Map<number, Map<string, Float32Array>>;
}

/** Upper bound of one token's loss (as result-gate.ts's): a cross-entropy far below 1e4 nats. */
const MAX_TOKEN_LOSS = 1e4;

export function admitBlockResult(
  m: BlockResult,
  held: BlockHolding,
  step: StepInFlight,
  manifest: RunManifest,
  values: number,
): AdmittedBlocks {
  if (m.paramVersion !== step.paramVersion)
    throw new LoraMeshError(
      ErrorCodes.STALE,
      `block-result for version ${m.paramVersion}, current is ${step.paramVersion}`,
    );
  const slots = step.items.length;
  const bound = overflowBound(slots);
  const items = new Map<number, BlockItem>();
  const expected = new Set(held.indices);
  for (const item of m.items) {
    if (!expected.has(item.index) || items.has(item.index))
      throw new LoraMeshError(
        ErrorCodes.ASSIGNMENT,
        `block-result.items names micro-batch ${item.index} ${items.has(item.index) ? 'twice' : 'which this relay does not hold'}`,
      );
    const work = step.items[item.index];
    const tokens = work.kind === 'grad' ? tokenCount(work.microBatch) : -1;
    if (item.tokenCount !== tokens)
      throw new LoraMeshError(
        ErrorCodes.FIELD,
        `block-result.items: micro-batch ${item.index} has tokenCount ${item.tokenCount}, expected ${tokens}`,
      );
    if (!(item.lossSum >= 0 && item.lossSum <= MAX_TOKEN_LOSS * Math.max(1, item.tokenCount)))
      throw new LoraMeshError(
        ErrorCodes.NON_FINITE,
        `block-result.items: micro-batch ${item.index} lossSum ${item.lossSum}`,
      );
    if (!(item.norm <= bound))
      throw new LoraMeshError(ErrorCodes.NON_FINITE, `block-result.items: micro-batch ${item.index} norm ${item.norm}`);
    items.set(item.index, item);
  }
  if (items.size !== expected.size)
    throw new LoraMeshError(
      ErrorCodes.FIELD,
      `block-result.items has ${items.size} micro-batches, expected ${expected.size}`,
    );
  const partials = new Map<number, StepGradient>();
  for (const b of held.sums.values()) {
    const first = b.block * held.blockSize;
    let lossSum = 0;
    let tokens = 0;
    for (let i = first; i < Math.min(slots, first + held.blockSize); i++) {
      lossSum += items.get(i)!.lossSum;
      tokens += items.get(i)!.tokenCount;
    }
    if (b.tokenCount !== tokens || b.lossSum !== lossSum)
      throw new LoraMeshError(
        ErrorCodes.FIELD,
        `block-result: block ${b.block} sums ${b.tokenCount} tokens and loss ${b.lossSum}; its micro-batches ` +
          `sum ${tokens} and ${lossSum}`,
      );
    const what = `block-sum[${b.block}].grads`;
    const flat = unpackFloats(b.grads, F32, values, what, false);
    const norm = finiteNorm(flat, what);
    if (!(norm <= bound * held.blockSize))
      throw new LoraMeshError(ErrorCodes.NON_FINITE, `block ${b.block}'s sum has norm ${norm.toExponential(2)}`);
    partials.set(b.block, {
      lossSum: b.lossSum,
      tokenCount: b.tokenCount,
      grads: splitTensors(flat, manifest.adapter),
    });
  }
  if (partials.size !== held.blocks.length)
    throw new LoraMeshError(
      ErrorCodes.FIELD,
      `block-result came after ${partials.size} block-sums, expected ${held.blocks.length}`,
    );
  const forwarded = new Map<number, Map<string, Float32Array>>();
  for (const f of held.forwarded.values()) {
    const flat = unpackFloats(f.grads, F32, values, `block-forward[${f.index}].grads`);
    forwarded.set(f.index, splitTensors(flat, manifest.adapter));
  }
  const missing = held.forward.find((i) => !forwarded.has(i));
  if (missing !== undefined)
    throw new LoraMeshError(
      ErrorCodes.FIELD,
      `block-result came without a block-forward of micro-batch ${missing}, which was asked for`,
    );
  return { partials, items, forwarded };
}
