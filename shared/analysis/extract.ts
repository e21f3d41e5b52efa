/**
 * A LoRA adapter from a full weight difference ΔW = W_tuned − W_base (d_out, d_in): the truncated
 * SVD U_k·Σ_k·V_kᵀ is the best rank-k approximation in Frobenius norm (Eckart–Young), so
 *   B = U_k·diag(√(σ/scale)),  A = diag(√(σ/scale))·V_kᵀ,   scale·B·A = U_k·Σ_k·V_kᵀ,
 * with σ split evenly between A and B so neither is tiny when the other is large. The error
 * ‖ΔW − scale·B·A‖_F is √(σ²_{k+1} + … ); it is measured on the float32 A and B actually written.
 */
import type { Matrix } from 'ml-matrix';
import { ErrorCodes, fail } from '../errors.ts';
import { denseSvd, toFloat32 } from './svd.ts';

export interface ExtractedModule {
  /** (rank, d_in), row-major */
  A: Float32Array;
  /** (d_out, rank), row-major */
  B: Float32Array;
  /** every singular value of ΔW, descending */
  singularValues: number[];
  /** ‖ΔW‖_F */
  deltaNorm: number;
  /** ‖ΔW − scale·B·A‖_F, measured */
  error: number;
  /** error / ‖ΔW‖_F (0 when ΔW = 0) */
  relativeError: number;
  /** √Σ_{i>k} σ_i²: the Eckart–Young error, which `error` should equal up to float32 rounding */
  optimalError: number;
}

export function extractLowRank(delta: Matrix, rank: number, scale: number, name = 'module'): ExtractedModule {
  const [dOut, dIn] = [delta.rows, delta.columns];
  if (!Number.isInteger(rank) || rank < 1 || rank > Math.min(dOut, dIn)) {
    fail(
      ErrorCodes.CONFIG,
      `--rank ${rank} for ${name} (${dOut}×${dIn}): expected an integer in [1, ${Math.min(dOut, dIn)}]`,
    );
  }
  if (!(scale > 0) || !Number.isFinite(scale))
    fail(ErrorCodes.CONFIG, `scaling ${scale} for ${name}: expected a finite number > 0`);
  const svd = denseSvd(delta);
  const left = svd.left.subMatrix(0, dOut - 1, 0, rank - 1).clone(); // (d_out, k)
  const right = svd.right.subMatrix(0, dIn - 1, 0, rank - 1).clone(); // (d_in, k)
  for (let c = 0; c < rank; c++) {
    const root = Math.sqrt(svd.values[c] / scale);
    left.mulColumn(c, root);
    right.mulColumn(c, root);
  }
  const B = toFloat32(left);
  const A = toFloat32(right.transpose());
  const deltaNorm = Math.sqrt(svd.values.reduce((s, v) => s + v * v, 0));
  const error = residualNorm(delta, B, A, rank, scale);
  return {
    A,
    B,
    singularValues: svd.values,
    deltaNorm,
    error,
    relativeError: deltaNorm > 0 ? error / deltaNorm : 0,
    optimalError: Math.sqrt(svd.values.slice(rank).reduce((s, v) => s + v * v, 0)),
  };
}

/** ‖ΔW − scale·B·A‖_F from the float32 factors, accumulated in float64, one output row at a time. */
function residualNorm(delta: Matrix, B: Float32Array, A: Float32Array, rank: number, scale: number): number {
  const [dOut, dIn] = [delta.rows, delta.columns];
  let sum = 0;
  const row = new Float64Array(dIn);
  for (let i = 0; i < dOut; i++) {
    row.fill(0);
    for (let c = 0; c < rank; c++) {
      const b = B[i * rank + c];
      for (let j = 0; j < dIn; j++) row[j] += b * A[c * dIn + j];
    }
    for (let j = 0; j < dIn; j++) {
      const e = delta.get(i, j) - scale * row[j];
      sum += e * e;
    }
  }
  return Math.sqrt(sum);
}
