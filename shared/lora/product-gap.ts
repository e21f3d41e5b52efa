/**
 * Averaging LoRA factors is not averaging updates: mean_k(B_k)·mean_k(A_k) ≠ mean_k(B_k·A_k).
 * Local-steps mode averages A and B separately; this measures what that costs, per outer step:
 *
 *   gap = ‖mean_k(B_k A_k) − B̄ Ā‖_F / ‖mean_k(B_k A_k) − B₀ A₀‖_F
 *
 * (0: no difference; 1: the error is as large as the update the jobs agreed on). Norms of sums of
 * low-rank products are computed from r×r Gram matrices, never forming a d_out×d_in matrix:
 *   ‖Σ_i w_i B_i A_i‖²_F = Σ_ij w_i w_j Σ_ab (B_iᵀ B_j)_ab (A_i A_jᵀ)_ab
 */
import type { AdapterState, AdapterTensorSpec } from './adapter.ts';

interface Term {
  weight: number;
  /** (d_out, r) row-major */
  B: Float32Array;
  /** (r, d_in) row-major */
  A: Float32Array;
}

/** Σ_ab (XᵀY)_ab (PQᵀ)_ab for X, Y (rows, r) and P, Q (r, cols). */
function gramInner(X: Float32Array, Y: Float32Array, P: Float32Array, Q: Float32Array, r: number): number {
  const rowsB = X.length / r;
  const colsA = P.length / r;
  let total = 0;
  for (let a = 0; a < r; a++) {
    for (let b = 0; b < r; b++) {
      let xy = 0; // (XᵀY)_ab
      for (let i = 0; i < rowsB; i++) xy += X[i * r + a] * Y[i * r + b];
      let pq = 0; // (PQᵀ)_ab
      for (let j = 0; j < colsA; j++) pq += P[a * colsA + j] * Q[b * colsA + j];
      total += xy * pq;
    }
  }
  return total;
}

/** ‖Σ w_i B_i A_i‖²_F. */
export function productSumNormSq(terms: Term[], r: number): number {
  let total = 0;
  for (const s of terms) for (const t of terms) total += s.weight * t.weight * gramInner(s.B, t.B, s.A, t.A, r);
  return Math.max(0, total);
}

/**
 * The gap above, over all adapted modules together. `start` is A₀/B₀; `pseudoGrads[k]` is job k's
 * start − end (so its end is start − pseudoGrad). Returns null when there is nothing to compare.
 */
export function factorAveragingGap(
  spec: AdapterTensorSpec[],
  start: AdapterState,
  pseudoGrads: AdapterState[],
  r: number,
): number | null {
  const K = pseudoGrads.length;
  if (K < 2) return null;
  let gapSq = 0;
  let updateSq = 0;
  for (const t of spec) {
    if (t.which !== 'A') continue;
    const nameB = t.name.replace(/lora_A$/, 'lora_B');
    const A0 = start.get(t.name)!;
    const B0 = start.get(nameB)!;
    const ends = pseudoGrads.map((g) => ({
      A: Float32Array.from(A0, (v, i) => v - g.get(t.name)![i]),
      B: Float32Array.from(B0, (v, i) => v - g.get(nameB)![i]),
    }));
    const meanOf = (pick: (e: { A: Float32Array; B: Float32Array }) => Float32Array) => {
      const out = new Float32Array(pick(ends[0]).length);
      for (const e of ends) pick(e).forEach((v, i) => (out[i] += v / K));
      return out;
    };
    const perJob: Term[] = ends.map((e) => ({ weight: 1 / K, A: e.A, B: e.B }));
    gapSq += productSumNormSq([...perJob, { weight: -1, A: meanOf((e) => e.A), B: meanOf((e) => e.B) }], r);
    updateSq += productSumNormSq([...perJob, { weight: -1, A: A0, B: B0 }], r);
  }
  return updateSq > 0 ? Math.sqrt(gapSq / updateSq) : null;
}
