/**
 * Adds micro-batch results in micro-batch order (never arrival order), in float32, so the sum is
 * the same bits whichever worker computed what and whenever it arrived.
 */
import { fail, ErrorCodes } from '../errors.ts';
import type { AdapterState } from '../lora/adapter.ts';
import type { GradientResult } from './gradients.ts';

export interface StepGradient {
  lossSum: number;
  tokenCount: number;
  /** gradient of the MEAN token loss: summed gradients / tokenCount */
  grads: AdapterState;
}

/**
 * The step's sum of `results` in micro-batch order. With `block` (the run's train.reductionBlock), the canonical
 * reduction order of issue 19: results summed in order within fixed blocks of `block` micro-batch indices
 * (0…block−1, block…2·block−1, …), then the block sums in order. Relays and ingestion threads each sum whole
 * blocks, so any topology gives these bits. Without it (or block ≥ the step's micro-batches) one block holds
 * every result: the order runs have always had.
 */
export function aggregateInOrder(results: GradientResult[], block?: number): StepGradient {
  if (results.length === 0) fail(ErrorCodes.STATE, 'no micro-batch results to aggregate');
  const sum = new InOrderSum(results, block);
  sum.advance();
  return sum.finish();
}

/**
 * The same sum built while a step's results arrive: result i is added as soon as results 0…i−1
 * have been, so the bits equal aggregateInOrder's whatever the arrival order, and most of the
 * adding happens while the step still waits for its last results (each result still in cache
 * from its decode and check) instead of after them.
 */
export class InOrderSum {
  /** the sum of the whole blocks so far, and of the block being added */
  private total: StepGradient | null = null;
  private block = emptySum();
  private next = 0;
  private redo = false;
  private readonly blockSize: number;

  /** `results` is the step's result slots, filled by the caller (in any order); `block` as aggregateInOrder's. */
  constructor(
    private readonly results: readonly (GradientResult | undefined)[],
    block?: number,
  ) {
    if (block !== undefined && !(Number.isInteger(block) && block >= 1))
      fail(ErrorCodes.CONFIG, `reduction block ${block}: expected an integer ≥ 1`);
    this.blockSize = block ?? Infinity;
  }

  /** Call after filling a slot: adds every filled slot from the first not yet added. */
  advance(): void {
    while (!this.redo && this.next < this.results.length && this.results[this.next]) {
      addResult(this.block, this.results[this.next++]!);
      if (this.next % this.blockSize === 0 || this.next === this.results.length) this.closeBlock();
    }
  }

  /** A whole block is added: its sum goes into the total, in block order. */
  private closeBlock(): void {
    if (!this.total) this.total = this.block;
    else addSum(this.total, this.block);
    this.block = emptySum();
  }

  /** Slot `index` was emptied again (its result revoked); if it was already added, finish() sums afresh. */
  retract(index: number): void {
    if (index < this.next) this.redo = true;
  }

  /** Once every slot is filled: the step's gradient, bit-identical to aggregateInOrder(results, block). */
  finish(): StepGradient {
    const missing = this.results.findIndex((r) => !r);
    if (missing >= 0) fail(ErrorCodes.STATE, `result ${missing} of ${this.results.length} is missing`);
    if (this.results.length === 0) fail(ErrorCodes.STATE, 'no micro-batch results to aggregate');
    if (this.redo || this.next < this.results.length) {
      const fresh = new InOrderSum(this.results, Number.isFinite(this.blockSize) ? this.blockSize : undefined);
      fresh.advance();
      return fresh.finish();
    }
    return finishSum(this.total!);
  }
}

const emptySum = (): StepGradient => ({ lossSum: 0, tokenCount: 0, grads: new Map() });

function addResult(sum: StepGradient, r: GradientResult): void {
  sum.lossSum += r.lossSum;
  sum.tokenCount += r.tokenCount;
  for (const [name, g] of r.grads) {
    const acc = sum.grads.get(name);
    if (!acc) sum.grads.set(name, new Float32Array(g));
    else addInto(acc, g);
  }
}

/** total += a block's sum, in float32 for the gradients (lossSum in float64, as every sum here). */
function addSum(total: StepGradient, block: StepGradient): void {
  total.lossSum += block.lossSum;
  total.tokenCount += block.tokenCount;
  for (const [name, g] of block.grads) {
    const acc = total.grads.get(name);
    if (!acc) total.grads.set(name, g);
    else addInto(acc, g);
  }
}

/** Divides the summed gradients by the token count: the gradient of the mean token loss. */
function finishSum(sum: StepGradient): StepGradient {
  const scale = 1 / Math.max(1, sum.tokenCount);
  for (const g of sum.grads.values()) for (let i = 0; i < g.length; i++) g[i] *= scale;
  return sum;
}

/**
 * acc += g elementwise. Unrolled by 4, which V8 runs faster than the plain loop (~1.5× in a
 * one-off measurement when it was written; the sum's current rate is bench:scale's "sum after the
 * fact" column in bench/RESULTS.md); each element is still one float32 addition, so the bits are
 * the same.
 */
export function addInto(acc: Float32Array, g: Float32Array): void {
  if (acc.length !== g.length) fail(ErrorCodes.SHAPE, `cannot add ${g.length} values into ${acc.length}`);
  const n4 = g.length & ~3;
  for (let i = 0; i < n4; i += 4) {
    acc[i] += g[i];
    acc[i + 1] += g[i + 1];
    acc[i + 2] += g[i + 2];
    acc[i + 3] += g[i + 3];
  }
  for (let i = n4; i < g.length; i++) acc[i] += g[i];
}
