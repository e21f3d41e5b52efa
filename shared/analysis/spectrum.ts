/**
 * How many directions an update really uses, from its singular values σ₁ ≥ … ≥ σ_n ≥ 0.
 * Two measures, because they answer different questions:
 *   entropy effective rank (Roy & Vetterli 2007): exp(H(p)) with p_i = σ_i / Σσ — a continuous
 *     count; equals k exactly when k values are equal and the rest zero;
 *   energy rank: the fewest directions holding a share τ of ‖ΔW‖²_F = Σσ² — what a truncation to
 *     that rank would keep.
 */

/** exp(−Σ p_i ln p_i), p_i = σ_i / Σσ; 0 for an all-zero spectrum. */
export function entropyEffectiveRank(values: number[]): number {
  const total = values.reduce((s, v) => s + v, 0);
  if (total <= 0) return 0;
  let entropy = 0;
  for (const v of values) {
    const p = v / total;
    if (p > 0) entropy -= p * Math.log(p);
  }
  return Math.exp(entropy);
}

/**
 * Cumulative energy: share[k−1] = Σ_{i≤k} σ_i² / Σσ², the part of ‖ΔW‖²_F in the top-k directions.
 * All zeros for an all-zero spectrum.
 */
function energyShares(values: number[]): number[] {
  const total = values.reduce((s, v) => s + v * v, 0);
  let running = 0;
  return values.map((v) => {
    running += v * v;
    return total > 0 ? Math.min(1, running / total) : 0;
  });
}

/** The smallest k whose top-k directions hold at least `threshold` of Σσ²; 0 for an all-zero spectrum. */
export function energyRank(values: number[], threshold = 0.9): number {
  const shares = energyShares(values);
  if (shares.length === 0 || shares[shares.length - 1] === 0) return 0;
  // A relative slack of 1e-12 keeps rounding from pushing an exact share (e.g. 0.9 of equal values) one rank up.
  const k = shares.findIndex((s) => s >= threshold * (1 - 1e-12));
  return k < 0 ? shares.length : k + 1;
}

export interface SpectrumSummary {
  /** σ₁ ≥ σ₂ ≥ … of ΔW */
  singularValues: number[];
  /** ‖ΔW‖_F = √Σσ² */
  frobenius: number;
  entropyRank: number;
  /** energy rank at 90% and 99% of ‖ΔW‖²_F */
  energyRank90: number;
  energyRank99: number;
  /** share of ‖ΔW‖²_F in the top 1, 2, 4, 8 directions (those up to the rank) */
  topShares: Record<string, number>;
}

export function summarizeSpectrum(values: number[]): SpectrumSummary {
  const shares = energyShares(values);
  const topShares: Record<string, number> = {};
  for (const k of [1, 2, 4, 8]) if (k <= values.length) topShares[`top${k}`] = shares[k - 1];
  return {
    singularValues: values,
    frobenius: Math.sqrt(values.reduce((s, v) => s + v * v, 0)),
    entropyRank: entropyEffectiveRank(values),
    energyRank90: energyRank(values, 0.9),
    energyRank99: energyRank(values, 0.99),
    topShares,
  };
}
