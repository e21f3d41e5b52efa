/**
 * The run's step loop (DESIGN.md §3): sample the global batch, cut it into micro-batches, have an
 * executor compute them (in this process or on the worker mesh), add the results in micro-batch
 * order, divide by the token count, clip, AdamW, bump the parameter version, publish. No sockets
 * here: the same Trainer drives the single-process reference and the distributed run.
 */
import type { LoraConfig, ModelConfig, TrainConfig } from '../../shared/config.ts';
import {
  adapterSpec,
  cloneAdapter,
  initAdapter,
  type AdapterState,
  type AdapterTensorSpec,
} from '../../shared/lora/adapter.ts';
import { mixSeed } from '../../shared/rng.ts';
import type { StepGradient } from '../../shared/train/aggregate.ts';
import { robustAggregate, type Aggregation } from '../../shared/train/robust.ts';
import type { GradientResult } from '../../shared/train/gradients.ts';
import { type Example, type MicroBatch, packMicroBatch } from '../../shared/train/micro-batch.ts';
import {
  adamwStep,
  clipToNorm,
  globalNorm,
  initAdam,
  learningRate,
  type AdamState,
} from '../../shared/train/optimizer.ts';
import { EpochSampler, type SamplerCursor } from '../../shared/train/sampler.ts';
import { outerStep, type OuterConfig, type OuterState } from '../../shared/train/local-steps.ts';
import { factorAveragingGap } from '../../shared/lora/product-gap.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { firstNonFinite } from '../../shared/protocol/messages.ts';

/** Local-steps mode: H micro-batches with inner AdamW steps at `lr`, answered as start − end. */
export interface LocalJob {
  microBatches: MicroBatch[];
  lr: number;
}

export interface GradientExecutor {
  /**
   * Computes every micro-batch of a step against parameter version `paramVersion`:
   * results in micro-batch order and their in-order sum.
   */
  compute(step: number, paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults>;
  /** Local-steps mode: every job's pseudo-gradient (grads = start − end), in job order. */
  computeLocal(step: number, paramVersion: number, jobs: LocalJob[]): Promise<GradientResult[]>;
  /** Makes a new parameter version current everywhere. */
  publish(paramVersion: number, adapter: AdapterState): void;
}

export interface StepResults {
  results: GradientResult[];
  /** aggregateInOrder(results), bit for bit; the mesh adds results up as they arrive (InOrderSum) */
  sum: StepGradient;
}

export interface StepMetrics {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  stepMs: number;
  tokensPerSecond: number;
  /** sequences consumed by this step (global batch, × H in local-steps mode) */
  samples: number;
  /** micro-batches computed (× H in local-steps mode) */
  microBatches: number;
  /** local-steps mode: ‖mean(B_k A_k) − mean(B)·mean(A)‖ / ‖mean(B_k A_k) − B₀A₀‖ (product-gap.ts) */
  factorGap?: number;
}

export interface TrainerOptions {
  model: ModelConfig;
  lora: LoraConfig;
  train: TrainConfig;
  examples: Example[];
  padId: number;
  /** start from these A/B values (e.g. a PEFT adapter) instead of the fresh init */
  initialAdapter?: AdapterState;
  /** 'sum' (default) is exact data parallelism; the others bound the influence of bad micro-batches */
  aggregation?: Aggregation;
  /** local-steps (DiLoCo) mode; absent = synchronous data parallelism */
  local?: OuterConfig;
}

/** Everything needed to continue a run exactly where it stopped (the RNG is the sampler cursor:
 * epoch order and dropout seeds derive from (seed, epoch) and (seed, step, index)). */
export interface TrainerState {
  step: number;
  paramVersion: number;
  cursor: SamplerCursor;
  adapter: AdapterState;
  adam: AdamState;
  /** local-steps mode: the outer Nesterov momentum */
  outerMomentum?: AdapterState;
}

export class Trainer {
  readonly spec: AdapterTensorSpec[];
  adapter: AdapterState;
  paramVersion = 0;
  step = 0;
  readonly sampler: EpochSampler;
  readonly adam: AdamState;
  readonly outer: OuterState = { momentum: new Map() };

  constructor(
    readonly options: TrainerOptions,
    private readonly executor: GradientExecutor,
  ) {
    if (options.local && (options.aggregation ?? 'sum') !== 'sum')
      fail(
        ErrorCodes.CONFIG,
        `aggregation ${options.aggregation} cannot be combined with local steps (pseudo-gradients are averaged)`,
      );
    this.spec = adapterSpec(options.model, options.lora);
    this.adapter = options.initialAdapter
      ? cloneAdapter(options.initialAdapter)
      : initAdapter(this.spec, options.lora, mixSeed(options.train.seed, 1));
    this.sampler = new EpochSampler(options.examples.length, mixSeed(options.train.seed, 2));
    this.adam = initAdam(this.adapter);
  }

  exportState(): TrainerState {
    return {
      step: this.step,
      paramVersion: this.paramVersion,
      cursor: { ...this.sampler.cursor },
      adapter: cloneAdapter(this.adapter),
      adam: { step: this.adam.step, m: cloneAdapter(this.adam.m), v: cloneAdapter(this.adam.v) },
      ...(this.options.local ? { outerMomentum: cloneAdapter(this.outer.momentum) } : {}),
    };
  }

  /** Continues from a saved state; tensor names and lengths must match this run's adapter. */
  importState(state: TrainerState): void {
    for (const t of this.spec) {
      const n = t.shape[0] * t.shape[1];
      for (const [what, m] of [
        ['adapter', state.adapter],
        ['adam.m', state.adam.m],
        ['adam.v', state.adam.v],
      ] as const) {
        const data = m.get(t.name);
        if (!data || data.length !== n)
          fail(ErrorCodes.SHAPE, `checkpoint ${what} tensor ${t.name} is missing or has the wrong size`);
      }
    }
    this.step = state.step;
    this.paramVersion = state.paramVersion;
    this.sampler.cursor = { ...state.cursor };
    this.adapter = new Map(this.spec.map((t) => [t.name, state.adapter.get(t.name)!.slice()]));
    this.adam.step = state.adam.step;
    for (const t of this.spec) {
      this.adam.m.set(t.name, state.adam.m.get(t.name)!.slice());
      this.adam.v.set(t.name, state.adam.v.get(t.name)!.slice());
    }
    this.outer.momentum = cloneAdapter(state.outerMomentum ?? new Map());
  }

  get done(): boolean {
    return this.step >= this.options.train.steps;
  }

  /** The micro-batches of the next step, from the sampler (advances its cursor); `rounds` global batches. */
  nextMicroBatches(rounds = 1): MicroBatch[] {
    const t = this.options.train;
    const indices = this.sampler.next(t.globalBatch * rounds);
    const microBatches: MicroBatch[] = [];
    for (let i = 0; i < indices.length; i += t.microBatch) {
      const examples = indices.slice(i, i + t.microBatch).map((k) => this.options.examples[k]);
      microBatches.push(packMicroBatch(examples, this.options.padId, mixSeed(t.seed, 3, this.step, i / t.microBatch)));
    }
    return microBatches;
  }

  start(): void {
    this.executor.publish(this.paramVersion, this.adapter);
  }

  /**
   * One step. If it fails (interrupted, or refused as non-finite) the sampler is put back, so the
   * state is exactly the last completed step's and a checkpoint of it resumes with the same batch.
   */
  async runStep(): Promise<StepMetrics> {
    const cursor = { ...this.sampler.cursor };
    try {
      return await (this.options.local ? this.runOuterStep(this.options.local) : this.runSyncStep());
    } catch (err) {
      this.sampler.cursor = cursor;
      throw err;
    }
  }

  /**
   * Applies an update only if it leaves every parameter and optimizer moment finite; otherwise
   * restores them and refuses the step (LM_ERR_NON_FINITE): nothing non-finite is ever published.
   */
  private applyFinite(what: string, arrays: Map<string, Float32Array>[], update: () => void): void {
    // the copies to restore are kept between steps: 3 × the adapter allocated once, not every step
    const saved = arrays.map((m, i) => {
      const kept = this.backup[i];
      if (!kept || kept.size !== m.size || [...m].some(([k, x]) => kept.get(k)?.length !== x.length))
        return (this.backup[i] = cloneAdapter(m));
      for (const [k, x] of m) kept.get(k)!.set(x);
      return kept;
    });
    const adamStep = this.adam.step;
    update();
    for (const m of arrays) {
      for (const [name, v] of m) {
        if (firstNonFinite(v) < 0) continue;
        arrays.forEach((target, i) => {
          for (const [k, x] of saved[i]) target.get(k)!.set(x);
        });
        this.adam.step = adamStep;
        fail(
          ErrorCodes.NON_FINITE,
          `step ${this.step + 1}: ${what} would make ${name} non-finite; the update was not applied`,
        );
      }
    }
  }

  /** applyFinite's copies of what an update changes, reused step after step */
  private readonly backup: Map<string, Float32Array>[] = [];

  private async runSyncStep(): Promise<StepMetrics> {
    const started = performance.now();
    const t = this.options.train;
    const microBatches = this.nextMicroBatches();
    const { results, sum: exact } = await this.executor.compute(this.step, this.paramVersion, microBatches);
    const { lossSum, tokenCount } = exact;
    const how = this.options.aggregation ?? 'sum';
    const grads = how === 'sum' ? exact.grads : robustAggregate(results, how);
    // The global norm (a float64 sum of float32 squares) is finite exactly when every value is: one read of the
    // gradient checks it and gives the norm; only a refusal looks for the tensor to name.
    const norm = globalNorm(grads);
    if (!Number.isFinite(norm))
      for (const [name, g] of grads) {
        if (firstNonFinite(g) >= 0)
          fail(
            ErrorCodes.NON_FINITE,
            `step ${this.step + 1}: the summed gradient of ${name} is not finite; nothing was applied`,
          );
      }
    if (!Number.isFinite(lossSum))
      fail(ErrorCodes.NON_FINITE, `step ${this.step + 1}: the summed loss is ${lossSum}; nothing was applied`);
    const gradNorm = clipToNorm(grads, norm, t.clipNorm);
    const lr = learningRate(this.step, t);
    this.applyFinite('the AdamW step', [this.adapter, this.adam.m, this.adam.v], () =>
      adamwStep(this.adapter, grads, this.adam, lr, t),
    );
    this.step += 1;
    this.paramVersion += 1;
    this.executor.publish(this.paramVersion, this.adapter);
    const stepMs = performance.now() - started;
    return {
      step: this.step,
      loss: lossSum / Math.max(1, tokenCount),
      lr,
      gradNorm,
      tokens: tokenCount,
      stepMs,
      tokensPerSecond: tokenCount / (stepMs / 1000),
      samples: t.globalBatch,
      microBatches: microBatches.length,
    };
  }

  /**
   * One outer step: K = globalBatch/microBatch jobs of H micro-batches each (H·globalBatch
   * sequences), averaged pseudo-gradient, Nesterov step. The inner lr follows the schedule over
   * outer steps.
   */
  private async runOuterStep(local: OuterConfig): Promise<StepMetrics> {
    const started = performance.now();
    const t = this.options.train;
    const H = local.steps;
    const microBatches = this.nextMicroBatches(H);
    const lr = learningRate(this.step, { ...t, lr: local.innerLr });
    const jobs: LocalJob[] = [];
    for (let k = 0; k < microBatches.length; k += H) jobs.push({ microBatches: microBatches.slice(k, k + H), lr });
    const results = await this.executor.computeLocal(this.step, this.paramVersion, jobs);
    const lossSum = results.reduce((s, r) => s + r.lossSum, 0);
    const tokenCount = results.reduce((s, r) => s + r.tokenCount, 0);
    const start = cloneAdapter(this.adapter);
    const pseudoGrads = results.map((r) => r.grads);
    // Gram-matrix cost grows with jobs²; past 16 jobs the diagnostic is skipped.
    const factorGap =
      jobs.length <= 16
        ? (factorAveragingGap(this.spec, start, pseudoGrads, this.options.lora.r) ?? undefined)
        : undefined;
    let mean!: Map<string, Float32Array>;
    for (const r of results) {
      for (const [name, g] of r.grads)
        if (firstNonFinite(g) >= 0)
          fail(
            ErrorCodes.NON_FINITE,
            `step ${this.step + 1}: a pseudo-gradient of ${name} is not finite; nothing was applied`,
          );
    }
    if (this.outer.momentum.size === 0)
      for (const [k, v] of this.adapter) this.outer.momentum.set(k, new Float32Array(v.length));
    this.applyFinite('the outer Nesterov step', [this.adapter, this.outer.momentum], () => {
      mean = outerStep(this.adapter, pseudoGrads, this.outer, local);
    });
    this.step += 1;
    this.paramVersion += 1;
    this.executor.publish(this.paramVersion, this.adapter);
    const stepMs = performance.now() - started;
    return {
      step: this.step,
      loss: lossSum / Math.max(1, tokenCount),
      lr,
      gradNorm: globalNorm(mean),
      tokens: tokenCount,
      stepMs,
      tokensPerSecond: tokenCount / (stepMs / 1000),
      samples: t.globalBatch * H,
      microBatches: microBatches.length,
      factorGap,
    };
  }
}
