/**
 * The default defence against workers that lie, as plain functions (no sockets, no clock):
 *
 * - every result's L2 norm is measured on arrival; one whose values could overflow the step's
 *   float32 sum is refused outright (LM_ERR_NON_FINITE), so the running sum stays finite;
 * - a secret, seeded fraction of results is recomputed by a trusted party (spot checks), and so are
 *   the first results of every new connection (probation), so a worker that always lies is caught
 *   on its first step;
 * - when a step's results are all in, a result whose norm is more than `outlierFactor` × the
 *   step's median norm is recomputed before it counts (the outlier screen). The median is taken
 *   over workers (each worker's median first; the lower middle for an even count), so a fast liar
 *   that won most micro-batches cannot move it while it is at most half of the step's workers;
 *   once trusted norms are known (probation, spot checks) their recent median is the reference.
 *   Flagged results are recomputed one at a time, largest first.
 *
 * A recomputation that agrees changes nothing (the worker's own bits are used), so honest runs
 * stay bit-identical to an undefended run; one that disagrees quarantines the sender.
 */
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import { firstNonFinite } from '../../shared/protocol/messages.ts';
import { sumSquares } from '../../shared/train/reduce-kernel.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';

export interface DefenceConfig {
  /** share of results recomputed by the coordinator, chosen by a secret seed (0: none) */
  spotCheck: number;
  /** the first this-many results of every connection are recomputed too (0: none) */
  probation: number;
  /** a result with norm > outlierFactor × its step's median norm is recomputed before it counts (0: off) */
  outlierFactor: number;
  /**
   * relative L2 distance within which a worker's result agrees with the trusted one (a run raises it
   * to its up codec's CODEC_TOLERANCE_FLOOR, wire-codec.ts)
   */
  tolerance: number;
}

/**
 * tolerance 1e-3 (relative L2) already covers the arithmetic variants (shared/arithmetic.ts): a relaxed-fma run's
 * worker whose engine or CPU does not fuse relaxed_madd (or fuses where the coordinator's does not) differs from
 * the trusted recomputation by one rounding per multiply-add, 2^-24 relative each, which through a step's
 * forward and backward stays near float32 noise (~1e-6 to 1e-5 of the gradients' norm), the same order as the
 * differences between backends this tolerance is set to accept: two orders of magnitude below it.
 */
export const DEFAULT_DEFENCE: DefenceConfig = { spotCheck: 0.05, probation: 2, outlierFactor: 10, tolerance: 1e-3 };

const FLOAT32_MAX = 3.4028234663852886e38;

/**
 * Largest result norm that cannot overflow a float32 sum of `slots` results: every value of every
 * result is then at most FLOAT32_MAX / (2·slots), so any partial sum is at most FLOAT32_MAX / 2.
 */
export const overflowBound = (slots: number): number => FLOAT32_MAX / (2 * Math.max(1, slots));

/** L2 norm of a flat vector, accumulated in float64 (finite for any finite float32 input; reduce-kernel.ts). */
export function l2Norm(x: Float32Array): number {
  return Math.sqrt(sumSquares(x));
}

/**
 * l2Norm(x), refusing a non-finite value (LM_ERR_NON_FINITE, naming `what`[index]) in the same pass: every float32
 * squared is at most 1.2e77, so a float64 sum of squares of finite values stays finite, and any NaN or ±Infinity
 * makes it non-finite. The coordinator's result checks read each gradient once for both.
 */
export function finiteNorm(x: Float32Array, what: string): number {
  const norm = l2Norm(x);
  if (Number.isFinite(norm)) return norm;
  const bad = firstNonFinite(x);
  throw new LoraMeshError(ErrorCodes.NON_FINITE, `${what}[${bad}] is ${x[bad]}`);
}

/** ‖theirs − trusted‖ / ‖trusted‖ over every tensor of `trusted` (by name), in float64. */
export function relativeL2(
  trusted: ReadonlyMap<string, Float32Array>,
  theirs: ReadonlyMap<string, Float32Array>,
): number {
  return relativeL2Distance([...trusted].map(([name, g]) => [g, theirs.get(name)] as const));
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};
/** The lower of the two middle values for an even count: with one honest and one lying worker, the smaller. */
const lowerMedian = (xs: number[]): number => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];

export interface ScreenedResult {
  index: number;
  workerId: string;
  norm: number;
  /** already confirmed by a trusted recomputation */
  verified: boolean;
  /** summed by a relay, which screened it against the root's reference (coordinator/relay/): never flagged here */
  relayed?: boolean;
}

/**
 * The reference norm of a step: the lower median over workers of each worker's median result norm
 * (verified results count like the others). Null when there are no results.
 */
export function referenceNorm(results: readonly ScreenedResult[]): number | null {
  if (results.length === 0) return null;
  return lowerMedian(workerMedians(results));
}

function workerMedians(results: readonly ScreenedResult[]): number[] {
  const byWorker = new Map<string, number[]>();
  for (const r of results) byWorker.set(r.workerId, [...(byWorker.get(r.workerId) ?? []), r.norm]);
  return [...byWorker.values()].map(median);
}

/**
 * Indices of unverified results whose norm exceeds factor × the reference: the step's own, or the
 * recent history's median when that is lower. The history matters when one fast worker computed
 * a whole step (honest workers still busy with late copies): its own median is then the liar's.
 */
export function outliers(
  results: readonly ScreenedResult[],
  factor: number,
  history: NormHistory | null = null,
): number[] {
  if (!(factor > 0) || results.length === 0) return [];
  const medians = workerMedians(results);
  const recent = history?.reference() ?? null;
  if (medians.length < 2 && recent === null) {
    // One worker computed the whole step and nothing independent is known yet (a run's first
    // steps): its largest result is confirmed before the step counts, and becomes the history.
    if (results.some((r) => r.verified || r.relayed)) return [];
    return [results.reduce((a, b) => (b.norm > a.norm ? b : a)).index];
  }
  // The recent trusted norms when there are any (no worker of this step can move them), else the step's own.
  const reference = recent ?? lowerMedian(medians);
  return results.filter((r) => !r.verified && !r.relayed && r.norm > factor * reference).map((r) => r.index);
}

/**
 * Recent norms a liar cannot set alone: results a trusted recomputation confirmed, and the
 * reference of every step that at least three workers computed (the lower median of three or more
 * is an honest worker's while at most one lies, whether it sends huge results or near-zero ones).
 */
export class NormHistory {
  private readonly norms: number[] = [];

  constructor(private readonly size = 16) {}

  /** A norm confirmed by a trusted recomputation. */
  trusted(norm: number): void {
    this.push(norm);
  }

  /** A finished step's results: its reference joins the history when three or more workers computed it. */
  step(results: readonly ScreenedResult[]): void {
    const medians = workerMedians(results);
    if (medians.length >= 3) this.push(lowerMedian(medians));
  }

  /** Median of the recent norms; null before any. */
  reference(): number | null {
    return this.norms.length === 0 ? null : median(this.norms);
  }

  private push(norm: number): void {
    this.norms.push(norm);
    if (this.norms.length > this.size) this.norms.shift();
  }
}
