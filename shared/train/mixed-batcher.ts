/**
 * A pool worker's computations, one at a time, with micro-batches of several runs that arrive together
 * computed in one pass (issue 18's multi-adapter pass, gradients.ts computeMixedGradientsAsync). The pool hands
 * an idle worker up to `hello.multiRun` attempts of different runs at once; each run's session queues its
 * assignment here, and what is queued when the worker gets to it is computed together where it can be:
 * the same arithmetic variant, canMix, and the combined rows within the worker's memory. Everything else
 * runs alone, in arrival order. Each run gets the bits of its micro-batch alone either way.
 */
import type { FrozenBase } from '../lora/params.ts';
import type { CausalLM } from '../model/causal-lm.ts';
import {
  canMix,
  computeGradientsAsync,
  computeMixedGradientsAsync,
  type GradientResult,
  type MixedJob,
  type StepOptions,
} from './gradients.ts';

/** How many runs' micro-batches a worker offers to compute in one pass (hello.multiRun). */
export const MIX_MAX_RUNS = 4;

interface Entry {
  /** a micro-batch that may share a pass; absent: a computation that runs alone (a local-steps job) */
  job?: MixedJob;
  step: StepOptions;
  /** the run's arithmetic variant, and making it the kernels' */
  arithmetic: string;
  select: () => void;
  alone: () => Promise<GradientResult>;
  resolve: (r: GradientResult) => void;
  reject: (err: unknown) => void;
}

const later: (f: () => void) => void =
  (globalThis as { setImmediate?: (f: () => void) => void }).setImmediate ?? ((f) => setTimeout(f, 0));

export class MixBatcher {
  private pending: Entry[] = [];
  private running = false;
  /** passes that computed more than one run's micro-batch, and the micro-batches in them (tests, logs) */
  mixedPasses = 0;
  mixedMicroBatches = 0;

  /** `fits`: whether these micro-batches' combined pass fits the worker's memory */
  constructor(
    private readonly model: CausalLM,
    private readonly base: FrozenBase,
    private readonly fits: (jobs: MixedJob[]) => boolean,
    private readonly log: (line: string) => void = () => {},
  ) {}

  /** A run's micro-batch: computed with the others queued with it where it can be. */
  gradients(job: MixedJob, step: StepOptions, arithmetic: string, select: () => void): Promise<GradientResult> {
    return this.enqueue({
      job,
      step,
      arithmetic,
      select,
      alone: () => computeGradientsAsync(this.model, this.base, job.spec, job.adapter, job.lora, job.mb, step),
    });
  }

  /** Anything else a run computes (a local-steps job): alone, in turn. */
  alone(arithmetic: string, select: () => void, run: () => Promise<GradientResult>): Promise<GradientResult> {
    return this.enqueue({ step: {}, arithmetic, select, alone: run });
  }

  private enqueue(entry: Omit<Entry, 'resolve' | 'reject'>): Promise<GradientResult> {
    return new Promise((resolve, reject) => {
      this.pending.push({ ...entry, resolve, reject });
      // the other runs' assignments of the same delivery arrive in this task: start after it
      if (!this.running) {
        this.running = true;
        later(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0);
        // runs that can share a pass: same arithmetic and step options, canMix, within memory
        const first = batch[0];
        const group = batch.filter(
          (e) => e.job && e.arithmetic === first.arithmetic && !!e.step.recompute === !!first.step.recompute,
        );
        const jobs = group.map((e) => e.job!);
        let mix = false;
        try {
          mix = group.length > 1 && canMix(this.base, jobs, first.step) && this.fits(jobs);
        } catch (err) {
          // a plan that cannot be made (an odd shape) only means: compute them one at a time
          this.log(`multi-adapter pass skipped: ${(err as Error).message}`);
        }
        if (mix) {
          first.select();
          try {
            const results = await computeMixedGradientsAsync(this.model, this.base, jobs);
            this.mixedPasses++;
            this.mixedMicroBatches += jobs.length;
            if (this.mixedPasses === 1 || this.mixedPasses % 1000 === 0)
              this.log(
                `multi-adapter pass ${this.mixedPasses}: ${jobs.length} runs' micro-batches in one forward and ` +
                  `backward (${this.mixedMicroBatches} micro-batches shared a pass so far)`,
              );
            group.forEach((e, i) => e.resolve(results[i]));
          } catch (err) {
            for (const e of group) e.reject(err);
          }
        }
        for (const e of mix ? batch.filter((x) => !group.includes(x)) : batch) {
          try {
            e.select();
            e.resolve(await e.alone());
          } catch (err) {
            e.reject(err);
          }
        }
      }
    } finally {
      this.running = false;
    }
  }
}
