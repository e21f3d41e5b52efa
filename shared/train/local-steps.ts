/**
 * Local-steps mode (DiLoCo, arXiv 2311.08105): a job is H micro-batches, each followed by an inner
 * AdamW step on the job's own copy of A/B; the job answers the pseudo-gradient start − end. The
 * coordinator averages the jobs' pseudo-gradients and takes an outer Nesterov-momentum step.
 *
 * A job starts with fresh inner AdamW moments (DiLoCo keeps them per worker): jobs stay stateless,
 * so any worker can compute or recompute any job and the result is the same bits — the property
 * reassignment, straggler copies and spot checks rely on.
 */
import type { LoraConfig, TrainConfig } from '../config.ts';
import { cloneAdapter, type AdapterState, type AdapterTensorSpec } from '../lora/adapter.ts';
import type { FrozenBase } from '../lora/params.ts';
import type { CausalLM } from '../model/causal-lm.ts';
import { computeGradientsAsync, type GradientResult, type StepOptions } from './gradients.ts';
import type { MicroBatch } from './micro-batch.ts';
import { adamwStep, clipGlobalNorm, initAdam } from './optimizer.ts';

export type InnerOptimizer = Pick<TrainConfig, 'beta1' | 'beta2' | 'eps' | 'weightDecay' | 'clipNorm'>;

export interface OuterConfig {
  /** H: inner steps (micro-batches) per job */
  steps: number;
  /** outer learning rate on the averaged pseudo-gradient (DiLoCo: 0.7) */
  outerLr: number;
  /** Nesterov momentum of the outer step (DiLoCo: 0.9) */
  outerMomentum: number;
  /** peak inner learning rate (the schedule of TrainConfig applies over outer steps) */
  innerLr: number;
}

/**
 * Runs one job from `start`; grads of the result = start − end, lossSum/tokenCount over all micro-batches (each
 * before its step).
 */
export async function runLocalJob(
  model: CausalLM,
  base: FrozenBase,
  spec: AdapterTensorSpec[],
  start: ReadonlyMap<string, Float32Array>,
  lora: LoraConfig,
  microBatches: MicroBatch[],
  lr: number,
  inner: InnerOptimizer,
  step: StepOptions = {},
): Promise<GradientResult> {
  const adapter = cloneAdapter(start);
  const adam = initAdam(adapter);
  let lossSum = 0;
  let tokenCount = 0;
  for (const mb of microBatches) {
    const r = await computeGradientsAsync(model, base, spec, adapter, lora, mb, step);
    lossSum += r.lossSum;
    tokenCount += r.tokenCount;
    const scale = 1 / Math.max(1, r.tokenCount); // summed token-loss gradients → mean
    for (const g of r.grads.values()) for (let i = 0; i < g.length; i++) g[i] *= scale;
    clipGlobalNorm(r.grads, inner.clipNorm);
    adamwStep(adapter, r.grads, adam, lr, inner);
  }
  const grads = new Map(
    [...start].map(([k, s]) => {
      const end = adapter.get(k)!;
      return [k, Float32Array.from(s, (v, i) => v - end[i])];
    }),
  );
  return { lossSum, tokenCount, grads };
}

export interface OuterState {
  momentum: AdapterState;
}

/**
 * θ ← θ − lr·(Δ + μ·m) with m ← μ·m + Δ (Nesterov), Δ = mean of the jobs' pseudo-gradients, summed
 * in job order in float32 so the result does not depend on who computed what.
 */
export function outerStep(
  adapter: AdapterState,
  pseudoGrads: AdapterState[],
  state: OuterState,
  config: Pick<OuterConfig, 'outerLr' | 'outerMomentum'>,
): AdapterState {
  const mean: AdapterState = new Map();
  for (const [name, theta] of adapter) {
    const d = new Float32Array(theta.length);
    for (const g of pseudoGrads) {
      const x = g.get(name)!;
      for (let i = 0; i < d.length; i++) d[i] += x[i];
    }
    for (let i = 0; i < d.length; i++) d[i] /= pseudoGrads.length;
    let m = state.momentum.get(name);
    if (!m) state.momentum.set(name, (m = new Float32Array(theta.length)));
    const mu = config.outerMomentum;
    for (let i = 0; i < d.length; i++) {
      m[i] = mu * m[i] + d[i];
      theta[i] -= config.outerLr * (d[i] + mu * m[i]);
    }
    mean.set(name, d);
  }
  return mean;
}
