/**
 * What one arriving result goes through before it counts, and the trusted recomputations that can
 * take results back (the policy is defence.ts's; this is its bookkeeping):
 *
 * - `admitResult` refuses a result that cannot be summed: stale, wrong token count, a loss sum no
 *   tokens could have, values that do not unpack, or a norm that could overflow the float32 sum;
 * - `ResultGate.holdForCheck` holds a result on probation or chosen by the secret spot-check seed
 *   until a trusted recomputation agrees (then the mesh accepts it) or refutes it (its worker is
 *   convicted);
 * - `ResultGate.closeIfComplete` ends a step once every slot is filled and no result in it is an
 *   unverified outlier, recomputing flagged results one at a time, largest first.
 *
 * A conviction counts the rejection, takes back every result the worker gave in the step, bans its
 * name and has the mesh close it. The gate never touches a connection: what only the mesh can do
 * (credit a worker, close it, hand out work) it asks through `GateHost`.
 */
import type { AdapterState } from '../../shared/lora/adapter.ts';
import { ErrorCodes, LoraMeshError, type ErrorCode } from '../../shared/errors.ts';
import { splitTensors, unpackFloats, type Result, type RunManifest } from '../../shared/protocol/messages.ts';
import { mixSeed } from '../../shared/rng.ts';
import type { GradientResult } from '../../shared/train/gradients.ts';
import { tokenCount } from '../../shared/train/micro-batch.ts';
import { finiteNorm, NormHistory, outliers, overflowBound, relativeL2, type ScreenedResult } from './defence.ts';
import { itemMicroBatches, type Holding, type StepInFlight, type WorkItem } from './step-in-flight.ts';

/**
 * Untrusted volunteers (defence.ts): a secret, seeded fraction of results, and every result whose
 * norm is an outlier in its step, is recomputed by a trusted party (the coordinator). A worker whose
 * result disagrees beyond `tolerance` (relative L2 over all gradients) is quarantined and every
 * result it gave in the current step is recomputed.
 */
export interface ResultChecks {
  /** share of results spot-checked (0: none) */
  spotCheck: number;
  /** the first this-many results of every connection are spot-checked too */
  probation: number;
  /** norm > outlierFactor × the step's median norm: recomputed before it counts (0: off) */
  outlierFactor: number;
  tolerance: number;
  secret: number;
  /** the trusted result of a micro-batch (sync) or a local job, from the parameters the workers hold */
  recompute: (work: WorkItem, adapter: AdapterState) => Promise<GradientResult>;
}

/** Upper bound of one token's loss in a result (a cross-entropy in nats; ln of any vocabulary is far below). */
const MAX_TOKEN_LOSS = 1e4;

/** A result that may be summed: its gradients by tensor name and its L2 norm. */
export interface Admitted {
  grads: Map<string, Float32Array>;
  norm: number;
}

/**
 * The checks every result passes on arrival, in order; the first that fails throws its
 * LoraMeshError (LM_ERR_STALE, LM_ERR_FIELD, LM_ERR_NON_FINITE or unpackFloats' own).
 * `values` is the adapter's parameter count, `slots` the number of items in the step.
 */
export function admitResult(
  r: Result,
  expected: { paramVersion: number; item: WorkItem; slots: number },
  manifest: RunManifest,
  values: number,
): Admitted {
  if (r.paramVersion !== expected.paramVersion)
    throw new LoraMeshError(
      ErrorCodes.STALE,
      `result for version ${r.paramVersion}, current is ${expected.paramVersion}`,
    );
  const expectedTokens = itemMicroBatches(expected.item).reduce((n, mb) => n + tokenCount(mb), 0);
  if (r.tokenCount !== expectedTokens)
    throw new LoraMeshError(
      ErrorCodes.FIELD,
      `result.tokenCount ${r.tokenCount} should be ${expectedTokens} for this ` +
        (expected.item.kind === 'grad' ? 'micro-batch' : 'job'),
    );
  // A token's loss is a cross-entropy: ≥ 0, and far below 1e4 for any model worth training.
  if (!(r.lossSum >= 0 && r.lossSum <= MAX_TOKEN_LOSS * Math.max(1, r.tokenCount))) {
    throw new LoraMeshError(
      ErrorCodes.NON_FINITE,
      `result.lossSum ${r.lossSum} is not a sum of ${r.tokenCount} token losses (each in [0, ${MAX_TOKEN_LOSS}])`,
    );
  }
  // one pass for the norm and the finiteness check (defence.ts finiteNorm), not two
  const flat = unpackFloats(r.grads, manifest.wire.up, values, 'result.grads', false);
  const norm = finiteNorm(flat, 'result.grads');
  // Finite values can still overflow the float32 sum (3e38 + 3e38 = Infinity): refused here.
  const bound = overflowBound(expected.slots);
  if (!(norm <= bound))
    throw new LoraMeshError(
      ErrorCodes.NON_FINITE,
      `result norm ${norm.toExponential(2)} could overflow the step's float32 sum (at most ${bound.toExponential(2)})`,
    );
  return { grads: splitTensors(flat, manifest.adapter), norm };
}

/** What the gate reads and keeps of a connection. */
export interface CheckedWorker {
  id: string;
  name: string;
  /** results of this connection confirmed by a trusted recomputation, and those being recomputed now */
  checksPassed: number;
  checksPending: number;
}

/** What the gate asks of the mesh: the connection side of its verdicts. */
export interface GateHost<W extends CheckedWorker> {
  log(line: string): void;
  /** a refused result, counted by error code for the run's summary */
  countRejection(code: ErrorCode): void;
  /** hands queued work to idle workers (after a conviction requeued some) */
  dispatch(): void;
  /** the parameters the workers hold, by name: what a trusted recomputation uses */
  adapter(): AdapterState;
  /** the connected workers by id (a convicted worker may have left) */
  readonly workers: ReadonlyMap<string, W>;
  /** a checked result counts: credit its worker, complete its attempt, use it if first (then closeIfComplete) */
  accept(w: W, held: Holding, r: Result, admitted: Admitted, verified: boolean, step: StepInFlight, now: number): void;
  /**
   * Closes a worker that failed a check (LM_ERR_QUARANTINED, `closing`). With `refusal` it first
   * gives up the worker's attempt of that step and sends it a reject frame with the code and why.
   */
  expel(w: W, closing: string, refusal?: { step: StepInFlight; code: ErrorCode; why: string }): void;
  /** gives up the step in flight (a trusted recomputation itself failed) */
  abort(err: Error): void;
}

export class ResultGate<W extends CheckedWorker> {
  /**
   * Names of workers that failed a check: refused if they come back (names are self-chosen, so this
   * stops careless or restarted liars; per-volunteer tokens would make it binding).
   */
  private readonly banned = new Set<string>();
  /** recent trusted result norms, the outlier screen's memory across steps */
  private readonly norms = new NormHistory();

  constructor(
    private readonly checks: ResultChecks | undefined,
    private readonly host: GateHost<W>,
  ) {}

  /** A worker of this name failed a check earlier in the run. */
  isBanned(name: string): boolean {
    return this.banned.has(name);
  }

  // A relay's blocks (coordinator/relay/): the relay runs the screens on its workers' results with what the root
  // tells it, and sends up whole the results the root checks itself.

  /** Whether the secret seed picks micro-batch `index` of `step` for a spot check. */
  spotted(step: number, index: number): boolean {
    const checks = this.checks;
    return !!checks && checks.spotCheck > 0 && mixSeed(checks.secret, step, index) / 2 ** 32 < checks.spotCheck;
  }

  /** What a relay needs to screen its workers' results as this gate would: the factor, the trusted reference. */
  relayScreen(): { outlier?: { factor: number; reference?: number }; probation?: number } {
    const checks = this.checks;
    if (!checks) return {};
    const reference = this.norms.reference();
    return {
      ...(checks.outlierFactor > 0
        ? { outlier: { factor: checks.outlierFactor, ...(reference === null ? {} : { reference }) } }
        : {}),
      ...(checks.probation > 0 ? { probation: checks.probation } : {}),
    };
  }

  /**
   * A relayed result the root checks (sent up whole): how far it is from the trusted recomputation, and whether
   * within tolerance (then its norm joins the trusted history).
   */
  async checkRelayed(
    step: StepInFlight,
    index: number,
    grads: Map<string, Float32Array>,
    lossSum: number,
    norm: number,
  ): Promise<{ relative: number; agrees: boolean }> {
    const checks = this.checks!;
    const relative = await this.disagreement(step, index, grads, lossSum, checks);
    const agrees = relative <= checks.tolerance;
    if (agrees) this.norms.trusted(norm);
    return { relative, agrees };
  }

  /** A name refused from now on (a worker behind a relay that failed the root's check). */
  ban(name: string): void {
    this.banned.add(name);
  }

  /**
   * Starts a trusted recomputation of an admitted result when its worker is on probation or the
   * secret seed picks its slot, and returns true: the result is then accepted or refuted later
   * (meanwhile the worker may take more work). False: no check, the caller accepts it now.
   */
  holdForCheck(w: W, held: Holding, r: Result, admitted: Admitted, step: StepInFlight): boolean {
    const checks = this.checks;
    if (!checks) return false;
    const onProbation = w.checksPassed + w.checksPending < checks.probation;
    const spotted = checks.spotCheck > 0 && mixSeed(checks.secret, held.step, held.index) / 2 ** 32 < checks.spotCheck;
    if (!onProbation && !spotted) return false;
    void this.spotCheck(w, held, r, admitted, step, checks).catch((err) => this.failStep(step, err));
    return true;
  }

  /**
   * Once every slot holds a result: the outlier screen (defence.ts). Flagged results are recomputed
   * by the trusted party; the step ends when none is flagged or being recomputed.
   */
  closeIfComplete(step: StepInFlight): void {
    if (!step.open || step.schedule.remaining > 0 || step.verifying > 0) return;
    const checks = this.checks;
    const screened = step.screened.filter((s): s is ScreenedResult => !!s);
    const flagged = checks ? outliers(screened, checks.outlierFactor, this.norms) : [];
    if (flagged.length === 0) {
      this.norms.step(screened);
      step.finish(Date.now());
      return;
    }
    // One at a time, largest first: a conviction takes back the liar's other results with it.
    const largest = flagged.reduce((a, b) => (step.screened[b]!.norm > step.screened[a]!.norm ? b : a));
    void this.screenOutlier(step, largest, checks!).catch((err) => this.failStep(step, err));
  }

  /**
   * The trusted recomputation of a slot's work, and how far the result is from it (the larger of
   * the relative L2 of the gradients and the relative loss).
   */
  private async disagreement(
    step: StepInFlight,
    index: number,
    grads: Map<string, Float32Array>,
    lossSum: number,
    checks: ResultChecks,
  ): Promise<number> {
    const trusted = await checks.recompute(step.items[index], this.host.adapter());
    const loss = Math.abs(trusted.lossSum - lossSum) / Math.max(1, Math.abs(trusted.lossSum));
    return Math.max(relativeL2(trusted.grads, grads), loss);
  }

  /** A trusted recomputation itself failed (weights unloadable, out of memory): the step fails with it. */
  private failStep(step: StepInFlight, err: unknown): void {
    if (!step.open) return;
    this.host.log(`a trusted recomputation failed: ${(err as Error).message}`);
    this.host.abort(err instanceof Error ? err : new Error(String(err)));
  }

  private async spotCheck(
    w: W,
    held: Holding,
    r: Result,
    admitted: Admitted,
    step: StepInFlight,
    checks: ResultChecks,
  ): Promise<void> {
    w.checksPending++;
    let relative: number;
    try {
      relative = await this.disagreement(step, held.index, admitted.grads, r.lossSum, checks);
    } finally {
      w.checksPending--;
    }
    if (!step.open) {
      // The step ended meanwhile (a copy won): nothing to take back, but a proven liar still goes.
      if (relative > checks.tolerance) {
        this.host.countRejection(ErrorCodes.SPOT_CHECK);
        this.banned.add(w.name);
        this.host.expel(w, 'failed a spot check');
      }
      return;
    }
    const now = Date.now();
    if (relative <= checks.tolerance) {
      w.checksPassed++;
      this.norms.trusted(admitted.norm);
      this.host.accept(w, held, r, admitted, true, step, now);
      return;
    }
    step.schedule.lose(held.assignmentId, 'rejected', now);
    this.convict(
      w,
      step,
      ErrorCodes.SPOT_CHECK,
      `result of micro-batch ${held.index} of step ${held.step} disagrees with a trusted recomputation ` +
        `(relative L2 ${relative.toExponential(2)})`,
    );
  }

  /**
   * A worker's result was refuted by a trusted recomputation: count it, quarantine the worker (and
   * its name), take back every result it gave in this step and hand those micro-batches out again.
   */
  private convict(w: W, step: StepInFlight, code: ErrorCode, why: string): void {
    this.host.countRejection(code);
    const check = code === ErrorCodes.SPOT_CHECK ? 'a spot check' : 'an outlier check';
    this.host.log(`worker ${w.id} (${w.name}) failed ${check} (${code}): ${why}; quarantining it`);
    step.takeBack(w.id);
    this.host.expel(w, `failed ${check}`, { step, code, why });
    this.banned.add(w.name);
    this.host.dispatch();
  }

  private async screenOutlier(step: StepInFlight, index: number, checks: ResultChecks): Promise<void> {
    const screened = step.screened[index]!;
    const grads = step.results[index]!.grads;
    step.verifying++;
    this.host.log(
      `step ${step.schedule.step}: micro-batch ${index} from worker ${screened.workerId} has norm ` +
        `${screened.norm.toExponential(2)}, over ${checks.outlierFactor}× the step's median; recomputing it`,
    );
    let relative: number;
    try {
      relative = await this.disagreement(step, index, grads, step.results[index]!.lossSum, checks);
    } finally {
      step.verifying--;
    }
    if (!step.open) return;
    if (step.screened[index] !== screened) {
      // taken back meanwhile (its worker was convicted elsewhere): nothing left to decide
    } else if (relative <= checks.tolerance) {
      screened.verified = true;
      this.norms.trusted(screened.norm);
    } else {
      const w = this.host.workers.get(screened.workerId);
      const why =
        `result of micro-batch ${index} of step ${step.schedule.step} has norm ${screened.norm.toExponential(2)} ` +
        `and disagrees with a trusted recomputation (relative L2 ${relative.toExponential(2)})`;
      if (w) this.convict(w, step, ErrorCodes.OUTLIER, why);
      else this.revokeAbsent(step, screened.workerId, why);
    }
    this.closeIfComplete(step);
  }

  /** A refuted worker that already left: its results of the step are taken back all the same. */
  private revokeAbsent(step: StepInFlight, workerId: string, why: string): void {
    this.host.countRejection(ErrorCodes.OUTLIER);
    this.host.log(`worker ${workerId} (gone): ${ErrorCodes.OUTLIER}: ${why}; its results are recomputed`);
    step.takeBack(workerId);
    this.host.dispatch();
  }
}
