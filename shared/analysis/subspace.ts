/**
 * Normalized subspace similarity between two adapters (LoRA paper §7.2, Figures 3 and 4):
 *   φ(A₁, A₂, i, j) = ‖U_iᵀ U_j‖²_F / min(i, j) ∈ [0, 1]
 * where U_i are the top-i right-singular vectors of A₁ (r₁, d_in) and U_j the top-j of A₂. It is
 * the mean squared cosine of the principal angles between the two subspaces: 1 when the smaller
 * lies inside the larger, 0 when they are orthogonal. Two random subspaces of dims i and j in
 * d_in dimensions give max(i, j) / d_in on average — the baseline any finding must beat.
 */
import type { Matrix } from 'ml-matrix';
import { ErrorCodes, fail } from '../errors.ts';

/**
 * φ for every i ≤ r₁, j ≤ r₂: phi[i−1][j−1]. U1 (d, r₁) and U2 (d, r₂) hold orthonormal columns,
 * strongest first. ‖U_iᵀU_j‖²_F is a 2-D prefix sum of the squared entries of G = U1ᵀU2, so the
 * whole grid costs one (r₁, r₂) product.
 */
export function subspaceSimilarity(U1: Matrix, U2: Matrix, name = 'adapter'): number[][] {
  if (U1.rows !== U2.rows)
    fail(
      ErrorCodes.SHAPE,
      `${name}: the two adapters' A matrices read ${U1.rows} and ${U2.rows} input dimensions; expected the same d_in`,
    );
  const gram = U1.transpose().mmul(U2); // (r₁, r₂)
  const [r1, r2] = [gram.rows, gram.columns];
  const prefix = Array.from({ length: r1 + 1 }, () => new Float64Array(r2 + 1));
  for (let i = 1; i <= r1; i++) {
    for (let j = 1; j <= r2; j++) {
      const g = gram.get(i - 1, j - 1);
      prefix[i][j] = g * g + prefix[i - 1][j] + prefix[i][j - 1] - prefix[i - 1][j - 1];
    }
  }
  const phi: number[][] = [];
  for (let i = 1; i <= r1; i++) {
    const row: number[] = [];
    // Rounding can push a sum of squared cosines a hair past min(i, j); φ is a mean of cos² ≤ 1.
    for (let j = 1; j <= r2; j++) row.push(Math.min(1, Math.max(0, prefix[i][j] / Math.min(i, j))));
    phi.push(row);
  }
  return phi;
}

/** Expected φ(i, j) between random subspaces of dims i and j in d dimensions: E‖U_iᵀU_j‖²_F = i·j/d. */
export const randomSubspaceSimilarity = (i: number, j: number, d: number) => Math.min(1, Math.max(i, j) / d);
