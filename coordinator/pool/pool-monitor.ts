/**
 * What the pool's dashboard shows (issue 18). Public (GET /api/status, the page's first view): the base and
 * the workers, with counts of runs by state and no run names, since tenants share the workers but not their
 * runs. Per caller (GET /pool/api/status with a tenant's token, or the admin's for everything): the caller's
 * runs with their loss curves. Log lines stay on the pool's console: the public event stream carries none.
 */
import type { PoolRegistry, PoolRun } from './registry.ts';
import type { PoolWorkerInfo } from './pool-mesh.ts';
import type { MonitorEvent } from '../net/monitor.ts';
import type { ResolvedBaseSpec } from '../../shared/quant/formats.ts';

export interface PoolSummary {
  model: string;
  baseFormat: ResolvedBaseSpec | null;
  /** the pool process computes the runs itself (no workers) */
  inProcess: boolean;
}

/** points kept per run's loss curve; past it, every other point goes (the curve keeps its shape) */
const MAX_POINTS = 2000;

export class PoolMonitor {
  private readonly losses = new Map<string, [number, number][]>();
  readonly startedAt = Date.now();

  constructor(
    private readonly registry: PoolRegistry,
    private readonly workers: () => PoolWorkerInfo[],
    readonly summary: PoolSummary,
  ) {}

  /** Run `runId`'s step `step` ended with training loss `loss`. */
  step(runId: string, step: number, loss: number): void {
    let curve = this.losses.get(runId);
    if (!curve) this.losses.set(runId, (curve = []));
    curve.push([step, loss]);
    if (curve.length > MAX_POINTS)
      this.losses.set(
        runId,
        curve.filter((_, i) => i % 2 === 1),
      );
  }

  /** The pool's console has every line; the public stream carries none (run names are the tenants'). */
  log(_line: string): void {}

  subscribe(_fn: (e: MonitorEvent) => void): () => void {
    return () => {};
  }

  /** The public view: the base, the workers, and how many runs are in each state. */
  snapshot() {
    const states: Record<string, number> = {};
    for (const run of this.registry.runs(null)) states[run.state] = (states[run.state] ?? 0) + 1;
    return { pool: this.summary, workers: this.workers(), runs: states };
  }

  /** A caller's view: its own runs (the admin's: all, with their tenants) and their loss curves. */
  status(tenantId: string | null) {
    const view = (run: PoolRun) => ({
      id: run.id,
      name: run.name,
      ...(tenantId === null ? { tenant: run.tenantId } : {}),
      state: run.state,
      // the registry's step is written at checkpoints and once a second; the curve has every step
      step: Math.max(run.step, this.losses.get(run.id)?.at(-1)?.[0] ?? 0),
      steps: run.steps,
      weight: run.weight,
      priority: run.priority,
      losses: this.losses.get(run.id) ?? [],
    });
    return {
      pool: this.summary,
      admin: tenantId === null,
      workers: this.workers(),
      runs: this.registry.runs(tenantId).map(view),
    };
  }
}
