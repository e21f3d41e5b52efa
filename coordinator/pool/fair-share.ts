/**
 * Which run an idle pool worker serves next (issue 18): strict priority levels, and within a level a
 * weighted fair share of worker time measured in tokens (start-time fair queuing). Plain logic, no
 * sockets or clocks, so it is tested on a virtual clock (test/coordinator/pool/fair-share.test.ts).
 *
 * - Each run has a virtual time: the tokens charged to it divided by its weight. An idle worker goes to
 *   the ready run (one with an unassigned micro-batch) of the highest priority with the least virtual
 *   time; ties go to the run submitted first. Over any stretch in which two runs of a level stay ready,
 *   their charged tokens therefore grow in the ratio of their weights, whatever their micro-batch sizes.
 * - Only a micro-batch's first attempt is charged: straggler copies, retries after a lost worker and
 *   recomputations after a failed spot check are the pool's cost, not the run's share.
 * - A run that was not ready (between steps, or just submitted) banks no credit: when it becomes
 *   ready again its virtual time is lifted to its level's system virtual time (the virtual time of the
 *   run picked last at that level).
 * - Preemption happens at micro-batch boundaries: every assignment asks again, so a higher-priority
 *   run gets the next worker that finishes; nothing running is cut short.
 */
import { fail, ErrorCodes } from '../../shared/errors.ts';

export interface ShareSettings {
  /** share within its priority level, relative to the other runs' weights (> 0) */
  weight: number;
  /** strict level: a ready run of a higher level always goes first (integer, higher first) */
  priority: number;
}

export const DEFAULT_SHARE: ShareSettings = { weight: 1, priority: 0 };

interface RunShare extends ShareSettings {
  id: string;
  /** order of submission, for ties */
  order: number;
  /** tokens of first attempts assigned to it */
  charged: number;
  virtualTime: number;
  ready: boolean;
}

/** Checks a run's share settings, naming the field and value on error (LM_ERR_CONFIG). */
export function checkShareSettings(raw: Partial<ShareSettings>): ShareSettings {
  const weight = raw.weight ?? DEFAULT_SHARE.weight;
  const priority = raw.priority ?? DEFAULT_SHARE.priority;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0 || weight > 1e6)
    fail(ErrorCodes.CONFIG, `weight ${String(weight)}: expected a number > 0 and ≤ 1e6`);
  if (!Number.isInteger(priority) || Math.abs(priority) > 1000)
    fail(ErrorCodes.CONFIG, `priority ${String(priority)}: expected an integer from −1000 to 1000`);
  return { weight, priority };
}

export class FairShare {
  private readonly runs = new Map<string, RunShare>();
  private submitted = 0;
  /** per priority level, the virtual time of the run last picked (start-time fair queuing's system time) */
  private readonly levelTime = new Map<number, number>();

  add(id: string, settings: ShareSettings = DEFAULT_SHARE): void {
    if (this.runs.has(id)) fail(ErrorCodes.CONFIG, `run ${id} is already in the pool's schedule`);
    const { weight, priority } = checkShareSettings(settings);
    this.runs.set(id, { id, weight, priority, order: this.submitted++, charged: 0, virtualTime: 0, ready: false });
  }

  remove(id: string): void {
    this.runs.delete(id);
  }

  has(id: string): boolean {
    return this.runs.has(id);
  }

  /** Tokens charged to a run so far (first attempts only). */
  charged(id: string): number {
    return this.runs.get(id)?.charged ?? 0;
  }

  /**
   * The run an idle worker should serve: among `among` (the runs with work this worker may take; default
   * `ready`), the one the share picks; null when none is. `ready` is every run with an unassigned micro-batch
   * in the pool, whoever may take it: it updates which runs are ready (see the module comment), so a run this
   * worker cannot serve keeps its place for the workers that can.
   */
  pick(ready: Iterable<string>, among?: Iterable<string>): string | null {
    const now = new Set(ready);
    // `among`: the runs this worker may take (a subset of the ready ones); readiness itself is the pool's
    const allowed = among ? new Set(among) : now;
    for (const run of this.runs.values()) {
      const isReady = now.has(run.id);
      // a run that just became ready starts no earlier than its level's system virtual time
      if (isReady && !run.ready) run.virtualTime = Math.max(run.virtualTime, this.levelTime.get(run.priority) ?? 0);
      run.ready = isReady;
    }
    let best: RunShare | null = null;
    for (const run of this.runs.values()) {
      if (!run.ready || !allowed.has(run.id)) continue;
      if (
        !best ||
        run.priority > best.priority ||
        (run.priority === best.priority &&
          (run.virtualTime < best.virtualTime || (run.virtualTime === best.virtualTime && run.order < best.order)))
      )
        best = run;
    }
    if (!best) return null;
    this.levelTime.set(best.priority, best.virtualTime);
    return best.id;
  }

  /** A first attempt of `tokens` tokens went out for run `id`: its share grows by that much. */
  charge(id: string, tokens: number): void {
    const run = this.runs.get(id);
    if (!run || !(tokens >= 0)) return;
    run.charged += tokens;
    run.virtualTime += tokens / run.weight;
  }
}
