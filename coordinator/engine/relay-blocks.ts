/**
 * What a relay's block-result goes through before it counts (the relay is trusted, but its frames are checked
 * like a worker's): it answers exactly the blocks it holds, each micro-batch once with its expected token count,
 * each block's token and loss sums agree with its micro-batches' (the loss summed in order, so exactly), and every
 * partial sum decodes as float32, finite and too small to overflow the step's sum. Results the root asked for
 * whole (its spot checks) must be there. The first failure throws its LoraMeshError.
 */
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import {
  splitTensors,
  unpackFloats,
  type BlockItem,
  type BlockResult,
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
  const heldBlocks = new Set(held.blocks);
  for (const b of m.blocks) {
    if (!heldBlocks.has(b.block) || partials.has(b.block))
      throw new LoraMeshError(
        ErrorCodes.ASSIGNMENT,
        `block-result names block ${b.block}, which it does not hold once`,
      );
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
    const what = `block-result.blocks[${b.block}].grads`;
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
  if (partials.size !== heldBlocks.size)
    throw new LoraMeshError(ErrorCodes.FIELD, `block-result has ${partials.size} blocks, expected ${heldBlocks.size}`);
  const forwarded = new Map<number, Map<string, Float32Array>>();
  for (const f of m.forwarded) {
    if (!expected.has(f.index) || forwarded.has(f.index))
      throw new LoraMeshError(ErrorCodes.ASSIGNMENT, `block-result forwards micro-batch ${f.index} unasked or twice`);
    const flat = unpackFloats(f.grads, F32, values, `block-result.forwarded[${f.index}].grads`);
    forwarded.set(f.index, splitTensors(flat, manifest.adapter));
  }
  const missing = held.forward.find((i) => !forwarded.has(i));
  if (missing !== undefined)
    throw new LoraMeshError(
      ErrorCodes.FIELD,
      `block-result does not forward micro-batch ${missing}, which was asked for`,
    );
  return { partials, items, forwarded };
}
