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

export function aggregateInOrder(results: GradientResult[]): StepGradient {
  if (results.length === 0) fail(ErrorCodes.STATE, 'no micro-batch results to aggregate');
  let lossSum = 0;
  let tokenCount = 0;
  const grads: AdapterState = new Map();
  for (const r of results) {
    lossSum += r.lossSum;
    tokenCount += r.tokenCount;
    for (const [name, g] of r.grads) {
      const acc = grads.get(name);
      if (!acc) grads.set(name, g.slice());
      else for (let i = 0; i < g.length; i++) acc[i] += g[i];
    }
  }
  const scale = 1 / Math.max(1, tokenCount);
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] *= scale;
  return { lossSum, tokenCount, grads };
}
