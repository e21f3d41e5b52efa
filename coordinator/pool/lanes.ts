/**
 * Several runs computing at once, each through its own lane (a GradientExecutor), their micro-batches
 * served one at a time in the order the fair share picks (fair-share.ts). Each run's Trainer is the
 * one `train` uses and sums its results in micro-batch order, so a run's adapter is bit-identical to
 * the same run trained alone, whatever the other lanes do: who computes a micro-batch and when never
 * enters its arithmetic.
 *
 * For now the pool process computes the micro-batches itself, in one loop (the lanes are the pool's
 * scheduling and bookkeeping, the same whoever computes). Serving them to the pool's workers over one
 * shared mesh is the next step of issue 18: the lane interface stays, the loop's compute call becomes
 * a dispatch.
 */
import { ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';
import { cloneAdapter, type AdapterState } from '../../shared/lora/adapter.ts';
import { aggregateInOrder } from '../../shared/train/aggregate.ts';
import { computeGradients, type GradientResult } from '../../shared/train/gradients.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import type { GradientExecutor, LocalJob, StepResults } from '../engine/trainer.ts';
import type { ExecutorParts } from '../run/run-builder.ts';
import { FairShare, type ShareSettings } from './fair-share.ts';

/** One micro-batch computed for a run: what the pool's ledger and its fairness figures read. */
export interface Served {
  run: string;
  step: number;
  index: number;
  tokens: number;
}

interface Pending {
  step: number;
  microBatches: MicroBatch[];
  results: GradientResult[];
  next: number;
  resolve: (r: StepResults) => void;
  reject: (err: unknown) => void;
}

class Lane implements GradientExecutor {
  adapter: AdapterState = new Map();
  pending: Pending | null = null;

  constructor(
    readonly id: string,
    readonly parts: ExecutorParts,
    private readonly wake: () => void,
  ) {}

  publish(_paramVersion: number, adapter: AdapterState): void {
    this.adapter = cloneAdapter(adapter);
  }

  compute(step: number, _paramVersion: number, microBatches: MicroBatch[]): Promise<StepResults> {
    if (this.pending)
      fail(ErrorCodes.STATE, `run ${this.id}: step ${step} asked for while step ${this.pending.step} runs`);
    return new Promise<StepResults>((resolve, reject) => {
      this.pending = { step, microBatches, results: [], next: 0, resolve, reject };
      this.wake();
    });
  }

  computeLocal(_step: number, _paramVersion: number, _jobs: LocalJob[]): Promise<GradientResult[]> {
    return fail(ErrorCodes.CONFIG, `run ${this.id}: local steps are not served by the pool yet`);
  }

  /** Whether a micro-batch of this lane waits to be computed. */
  get ready(): boolean {
    return this.pending !== null && this.pending.next < this.pending.microBatches.length;
  }
}

export class PoolLanes {
  private readonly share = new FairShare();
  private readonly lanes = new Map<string, Lane>();
  private serving = false;

  /** `onServe` hears every micro-batch as it is computed (tests, the pool's ledger). */
  constructor(private readonly onServe?: (s: Served) => void) {}

  /** A new lane for run `id`: its executor, to pass to runTraining (RunOptions.executor). */
  lane(id: string, settings: ShareSettings, parts: ExecutorParts): GradientExecutor {
    if (this.lanes.has(id)) fail(ErrorCodes.STATE, `run ${id} already has a lane`);
    this.share.add(id, settings);
    const lane = new Lane(id, parts, () => this.wake());
    this.lanes.set(id, lane);
    return lane;
  }

  /** The run ended (or was cancelled): its lane goes; a step it still waited for is failed. */
  close(id: string): void {
    const lane = this.lanes.get(id);
    if (!lane) return;
    this.lanes.delete(id);
    this.share.remove(id);
    lane.pending?.reject(new LoraMeshError(ErrorCodes.STATE, `run ${id} was closed`));
    lane.pending = null;
  }

  private wake(): void {
    if (this.serving) return;
    this.serving = true;
    setImmediate(() => this.serve());
  }

  /**
   * Computes one micro-batch of the lane the fair share picks, then yields to the event loop (so a run
   * whose step just ended can queue its next one) and continues while any lane has work.
   */
  private serve(): void {
    const ready = [...this.lanes.values()].filter((l) => l.ready).map((l) => l.id);
    const id = this.share.pick(ready);
    if (id === null) {
      this.serving = false;
      return;
    }
    const lane = this.lanes.get(id)!;
    const p = lane.pending!;
    const index = p.next++;
    const mb = p.microBatches[index];
    const tokens = mb.batch * mb.time; // positions computed, padding included: the work, not the loss tokens
    this.share.charge(id, tokens);
    try {
      const { model, base, spec, lora, step, select } = lane.parts;
      select(); // runs of the pool may compute with different arithmetic variants
      p.results[index] = computeGradients(model, base, spec, lane.adapter, lora, mb, step);
      this.onServe?.({ run: id, step: p.step, index, tokens });
      if (p.next === p.microBatches.length) {
        // served in index order, one at a time: the last one served completes the step
        lane.pending = null;
        p.resolve({ results: p.results, sum: aggregateInOrder(p.results, lane.parts.reductionBlock) });
      }
    } catch (err) {
      lane.pending = null;
      p.reject(err);
    }
    setImmediate(() => this.serve());
  }
}
