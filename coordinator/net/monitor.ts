/**
 * What the dashboard shows: the run's config, per-step metrics, eval points and the worker table,
 * kept in memory and pushed to subscribers (Server-Sent Events) as they change. No tensors here.
 */
import type { WorkerInfo } from '../engine/mesh.ts';
import type { StepRecord } from '../engine/step-record.ts';

export interface RunSummary {
  runId: string;
  model: string;
  modelType: string;
  modelParameters: number;
  adapterParameters: number;
  steps: number;
  lora: unknown;
  train: unknown;
  /** "f32 up, int8/64 down"; null in-process (no wire) */
  wire: string | null;
  local: { steps: number; outerLr: number; outerMomentum: number } | null;
  /** the wasm kernels' arithmetic variant every worker computes with (shared/arithmetic.ts) */
  arithmetic: string;
}

export type MonitorEvent =
  | { kind: 'step'; record: StepRecord }
  | { kind: 'eval'; step: number; loss: number }
  | { kind: 'log'; line: string }
  | { kind: 'done' };

export class RunMonitor {
  readonly steps: StepRecord[] = [];
  readonly evals: { step: number; loss: number }[] = [];
  readonly logLines: string[] = [];
  startedAt = Date.now();
  finished = false;
  private readonly subscribers = new Set<(e: MonitorEvent) => void>();

  constructor(
    readonly summary: RunSummary,
    private readonly workers: () => WorkerInfo[],
  ) {}

  subscribe(fn: (e: MonitorEvent) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  private emit(e: MonitorEvent): void {
    for (const fn of this.subscribers) fn(e);
  }

  step(record: StepRecord): void {
    this.steps.push(record);
    this.emit({ kind: 'step', record });
  }

  evalPoint(step: number, loss: number): void {
    this.evals.push({ step, loss });
    this.emit({ kind: 'eval', step, loss });
  }

  log(line: string): void {
    this.logLines.push(`${new Date().toISOString().slice(11, 19)} ${line}`);
    if (this.logLines.length > 200) this.logLines.shift();
    this.emit({ kind: 'log', line });
  }

  done(): void {
    this.finished = true;
    this.emit({ kind: 'done' });
  }

  /** A JSON snapshot for /api/status. */
  snapshot() {
    const last = this.steps[this.steps.length - 1];
    const workers = this.workers();
    const done = last?.step ?? 0;
    const elapsed = (Date.now() - this.startedAt) / 1000;
    const recent = this.steps.slice(-10);
    const secondsPerStep = recent.length ? recent.reduce((s, r) => s + r.stepMs, 0) / recent.length / 1000 : null;
    return {
      summary: this.summary,
      step: done,
      finished: this.finished,
      elapsedSeconds: elapsed,
      etaSeconds: secondsPerStep === null ? null : secondsPerStep * (this.summary.steps - done),
      steps: this.steps,
      evals: this.evals,
      workers,
      log: this.logLines.slice(-50),
    };
  }
}
