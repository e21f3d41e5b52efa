/**
 * AdamW with bias correction and decoupled weight decay, global-norm clipping and a warm-up +
 * cosine schedule, on plain Float32Arrays: no tensors, no I/O, so the coordinator steps exactly
 * the same way in every process and tests need no backend.
 */
import type { TrainConfig } from '../config.ts';
import { adamw, sumSquaresSerial } from './reduce-kernel.ts';

export type NamedArrays = Map<string, Float32Array>;

export interface AdamState {
  step: number;
  m: NamedArrays;
  v: NamedArrays;
}

export function initAdam(params: NamedArrays): AdamState {
  const zeros = () => new Map([...params].map(([k, p]) => [k, new Float32Array(p.length)]));
  return { step: 0, m: zeros(), v: zeros() };
}

/** Linear warm-up to lr over warmupSteps, then cosine decay to lr·minLrRatio at the last step. step counts from 0. */
export function learningRate(
  step: number,
  t: Pick<TrainConfig, 'lr' | 'warmupSteps' | 'steps' | 'minLrRatio'>,
): number {
  if (step < t.warmupSteps) return (t.lr * (step + 1)) / t.warmupSteps;
  const decaySteps = Math.max(1, t.steps - t.warmupSteps - 1);
  const progress = Math.min(1, (step - t.warmupSteps) / decaySteps);
  const minLr = t.lr * t.minLrRatio;
  return minLr + 0.5 * (t.lr - minLr) * (1 + Math.cos(Math.PI * progress));
}

/** L2 norm over all arrays, accumulated in float64 in name order, one sum (reduce-kernel.ts sumSquaresSerial). */
export function globalNorm(grads: NamedArrays): number {
  let sq = 0;
  for (const g of grads.values()) sq = sumSquaresSerial(g, sq);
  return Math.sqrt(sq);
}

/** Scales grads in place so their global norm is at most maxNorm; returns the norm before clipping. */
export function clipGlobalNorm(grads: NamedArrays, maxNorm: number): number {
  return clipToNorm(grads, globalNorm(grads), maxNorm);
}

/**
 * clipGlobalNorm with the norm already taken (globalNorm(grads)): scales grads in place so their global norm is at
 * most maxNorm; returns `norm`. A caller that needs the norm first (the coordinator checks it is finite: a float64
 * sum of float32 squares is finite exactly when every value is) reads the gradient once for both.
 */
export function clipToNorm(grads: NamedArrays, norm: number, maxNorm: number): number {
  if (maxNorm > 0 && norm > maxNorm) {
    const scale = maxNorm / (norm + 1e-6);
    for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i] *= scale;
  }
  return norm;
}

/**
 * One AdamW step in place: p ← p − lr·(m̂ / (√v̂ + eps) + wd·p), with m̂, v̂ bias-corrected: float64 arithmetic,
 * float32 storage, per tensor in reduce-kernel.ts (WebAssembly SIMD, the bits of its scalar loop adamwJs).
 */
export function adamwStep(
  params: NamedArrays,
  grads: NamedArrays,
  state: AdamState,
  lr: number,
  t: Pick<TrainConfig, 'beta1' | 'beta2' | 'eps' | 'weightDecay'>,
): void {
  state.step += 1;
  const k = {
    beta1: t.beta1,
    beta2: t.beta2,
    c1: 1 - Math.pow(t.beta1, state.step),
    c2: 1 - Math.pow(t.beta2, state.step),
    eps: t.eps,
    lr,
    weightDecay: t.weightDecay,
  };
  for (const [name, p] of params) {
    const g = grads.get(name);
    if (!g) throw new Error(`adamwStep: no gradient for ${name}`);
    adamw(p, g, state.m.get(name)!, state.v.get(name)!, k);
  }
}
