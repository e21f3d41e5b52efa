/**
 * The arithmetic of the base-quality benchmark (bench/base-quality.ts): per base, the mean and spread
 * of each measure over seeds, the difference to float32 paired by seed (the same data and the same
 * initial adapter), and issue 16's goal: NF4 within 2 points of float32.
 */

/** One run: a base, a seed, trained and measured on the held-out set. Exact match in percent. */
export interface QualityRun {
  /** the base's label (bench/base-quality.ts QUALITY_BASES) */
  base: string;
  seed: number;
  /** the base alone, before training */
  exactMatchBefore: number;
  /** the adapter served unmerged on the very base it was trained on */
  exactMatchSameBase: number;
  /** the adapter merged into the original float32 weights */
  exactMatchMerged: number;
  /** mean held-out token loss on the base the run trained on, before and after training */
  evalLossBefore: number;
  evalLoss: number;
  /** the last step's training loss */
  trainLoss: number;
  /** wall time to train and measure */
  seconds: number;
}

/** Mean and spread of a measure over seeds; sd is the sample standard deviation (0 for one seed). */
export interface Spread {
  mean: number;
  sd: number;
  min: number;
  max: number;
  n: number;
}

export function spread(xs: readonly number[]): Spread {
  const n = xs.length;
  if (n === 0) return { mean: NaN, sd: NaN, min: NaN, max: NaN, n };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1)) : 0;
  return { mean, sd, min: Math.min(...xs), max: Math.max(...xs), n };
}

export interface QualitySummary {
  base: string;
  exactMatchBefore: Spread;
  exactMatchSameBase: Spread;
  exactMatchMerged: Spread;
  evalLoss: Spread;
  /**
   * this base minus float32 of the same seed (exact match in points, eval loss in nats), over the
   * seeds both ran; null for float32 itself or when float32 did not run
   */
  vsFloat32: { sameBase: Spread; merged: Spread; evalLoss: Spread } | null;
}

export const FLOAT32_BASE = 'float32';

/** Summaries in the order the bases first appear in runs. */
export function summarise(runs: readonly QualityRun[]): QualitySummary[] {
  const labels = [...new Set(runs.map((r) => r.base))];
  const float32 = new Map(runs.filter((r) => r.base === FLOAT32_BASE).map((r) => [r.seed, r]));
  return labels.map((base) => {
    const own = runs.filter((r) => r.base === base);
    const paired = own.filter((r) => float32.has(r.seed));
    const diff = (measure: (r: QualityRun) => number) =>
      spread(paired.map((r) => measure(r) - measure(float32.get(r.seed)!)));
    return {
      base,
      exactMatchBefore: spread(own.map((r) => r.exactMatchBefore)),
      exactMatchSameBase: spread(own.map((r) => r.exactMatchSameBase)),
      exactMatchMerged: spread(own.map((r) => r.exactMatchMerged)),
      evalLoss: spread(own.map((r) => r.evalLoss)),
      vsFloat32:
        base === FLOAT32_BASE || paired.length === 0
          ? null
          : {
              sameBase: diff((r) => r.exactMatchSameBase),
              merged: diff((r) => r.exactMatchMerged),
              evalLoss: diff((r) => r.evalLoss),
            },
    };
  });
}

/** Issue 16: NF4's held-out exact match at most this many points below float32's. */
export const GOAL_POINTS = 2;
export const GOAL_BASE = 'nf4';

export interface QualityGoal {
  /** NF4 (block 64) minus float32, mean over seeds, in points: served on the NF4 base it trained on */
  sameBase: number;
  /** the same with the NF4-trained adapter merged into the float32 weights (not judged; QLoRA's mismatch) */
  merged: number;
  /** judged on sameBase: NF4 no more than GOAL_POINTS below float32 */
  met: boolean;
}

/** The goal judged on the summaries; null when NF4 or float32 did not run. */
export function qualityGoal(summaries: readonly QualitySummary[]): QualityGoal | null {
  const vs = summaries.find((s) => s.base === GOAL_BASE)?.vsFloat32;
  if (!vs) return null;
  return { sameBase: vs.sameBase.mean, merged: vs.merged.mean, met: vs.sameBase.mean >= -GOAL_POINTS };
}
