/**
 * Adds micro-batch results in micro-batch order (never arrival order), in float32, so the sum is
 * the same bits whichever worker computed what and whenever it arrived.
 */
import { fail, ErrorCodes } from '../errors.ts';
import type { AdapterState } from '../lora/adapter.ts';
import type { GradientResult } from './gradients.ts';
import { addInto as addValues } from './reduce-kernel.ts';

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
 * from its decode and check) instead of after them. A whole block may instead arrive already summed
 * (a relay's partial sum, `fillBlock`): the same bits, since a block's sum is its results added in order.
 */
export class InOrderSum {
  /** the sum of each completed block, undivided, by block number */
  private readonly sums: (StepGradient | undefined)[] = [];
  /** blocks handed in already summed (relays): their slots hold no gradients */
  private readonly given: (StepGradient | undefined)[] = [];
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
    this.blockSize = Math.min(block ?? Infinity, Math.max(1, results.length));
  }

  /** Call after filling a slot: adds every filled slot from the first not yet added. */
  advance(): void {
    const n = this.results.length;
    while (!this.redo && this.next < n) {
      const b = Math.floor(this.next / this.blockSize);
      const whole = this.next % this.blockSize === 0 ? this.given[b] : undefined;
      if (whole) {
        this.sums[b] = whole;
        this.next = Math.min(n, this.next + this.blockSize);
        continue;
      }
      const r = this.results[this.next];
      if (!r) return;
      addResult(this.block, r);
      this.next++;
      if (this.next % this.blockSize === 0 || this.next === n) {
        this.sums[b] = this.block;
        this.block = emptySum();
      }
    }
  }

  /** Block `b` arrived already summed (undivided, its results in order): the caller fills its slots too. */
  fillBlock(b: number, partial: StepGradient): void {
    this.given[b] = partial;
    this.advance();
  }

  /** Slot `index` was emptied again (its result revoked); if it was already added, the sum is built afresh. */
  retract(index: number): void {
    const b = Math.floor(index / this.blockSize);
    if (this.given[b]) this.given[b] = undefined;
    if (index < this.next) this.redo = true;
  }

  /** Once every slot is filled: each block's sum, undivided (what a relay sends up). */
  blockSums(): StepGradient[] {
    const missing = this.results.findIndex((r) => !r);
    if (missing >= 0) fail(ErrorCodes.STATE, `result ${missing} of ${this.results.length} is missing`);
    if (this.results.length === 0) fail(ErrorCodes.STATE, 'no micro-batch results to aggregate');
    if (this.redo || this.next < this.results.length) {
      const fresh = new InOrderSum(this.results, this.blockSize);
      this.given.forEach((g, b) => g && (fresh.given[b] = g));
      fresh.advance();
      return fresh.blockSums();
    }
    return this.sums as StepGradient[];
  }

  /** Once every slot is filled: the step's gradient, bit-identical to aggregateInOrder(results, block). */
  finish(): StepGradient {
    // the total is built in the first block's sum (one handed in included: a relay's partial is its message's own)
    const [total, ...rest] = this.blockSums();
    for (const s of rest) addSum(total, s);
    return finishSum(total);
  }
}

/** The undivided sum of `results` in order (one block): what a relay sums for a block it holds. */
export function sumInOrder(results: readonly GradientResult[]): StepGradient {
  const sum = emptySum();
  for (const r of results) addResult(sum, r);
  return sum;
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

/** acc += g elementwise, one float32 addition each (reduce-kernel.ts: WebAssembly SIMD, the bits of the scalar loop). */
export function addInto(acc: Float32Array, g: Float32Array): void {
  if (acc.length !== g.length) fail(ErrorCodes.SHAPE, `cannot add ${g.length} values into ${acc.length}`);
  addValues(acc, g);
}
