/**
 * Singular value decompositions for LoRA analysis, in float64 (ml-matrix) although adapters are
 * float32. The low-rank route never forms ΔW = scale·B·A (d_out × d_in): with thin QR
 * B = Q_B·R_B and Aᵀ = Q_A·R_A,
 *   ΔW = Q_B · (scale·R_B·R_Aᵀ) · Q_Aᵀ,
 * so the SVD of the r × r core, Ũ·Σ·Ṽᵀ, gives ΔW = (Q_B·Ũ)·Σ·(Q_A·Ṽ)ᵀ exactly: O((d_out+d_in)·r²)
 * instead of O(d³) for a dense SVD.
 */
import { Matrix, QrDecomposition, SingularValueDecomposition } from 'ml-matrix';
import { ErrorCodes, fail } from '../errors.ts';

/** A thin SVD M = left · diag(values) · rightᵀ, values descending and ≥ 0. */
export interface ThinSvd {
  values: number[];
  /** (rows, k) orthonormal columns */
  left: Matrix;
  /** (cols, k) orthonormal columns */
  right: Matrix;
}

/**
 * A row-major (rows, cols) array as a float64 matrix; the boundary where tensor values enter the
 * analysis, so wrong lengths and non-finite values are refused here, naming the tensor.
 */
export function matrixFrom(data: ArrayLike<number>, rows: number, cols: number, name: string): Matrix {
  if (data.length !== rows * cols)
    fail(ErrorCodes.SHAPE, `${name} has ${data.length} values, expected ${rows}×${cols} = ${rows * cols}`);
  const m = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const x = data[i * cols + j];
      if (!Number.isFinite(x)) fail(ErrorCodes.NON_FINITE, `${name}[${i}, ${j}] is ${x}; every value must be finite`);
      m.set(i, j, x);
    }
  }
  return m;
}

/** Row-major float32 copy of a matrix (what PEFT files store). */
export function toFloat32(m: Matrix): Float32Array {
  const out = new Float32Array(m.rows * m.columns);
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.columns; j++) out[i * m.columns + j] = m.get(i, j);
  return out;
}

/** Thin QR of a tall matrix (rows ≥ cols): Q (rows, cols) with orthonormal columns, R (cols, cols). */
function thinQr(m: Matrix): { Q: Matrix; R: Matrix } {
  const qr = new QrDecomposition(m);
  return { Q: qr.orthogonalMatrix, R: qr.upperTriangularMatrix };
}

/** Dense thin SVD of any (rows, cols) matrix, k = min(rows, cols) triples; vectors optional for speed. */
export function denseSvd(m: Matrix, vectors = true): ThinSvd {
  const k = Math.min(m.rows, m.columns);
  const svd = new SingularValueDecomposition(m, {
    autoTranspose: true,
    computeLeftSingularVectors: vectors,
    computeRightSingularVectors: vectors,
  });
  const values = svd.diagonal.slice(0, k).map((s) => Math.max(0, s));
  if (!vectors) return { values, left: new Matrix(m.rows, 0), right: new Matrix(m.columns, 0) };
  return {
    values,
    left: svd.leftSingularVectors.subMatrix(0, m.rows - 1, 0, k - 1),
    right: svd.rightSingularVectors.subMatrix(0, m.columns - 1, 0, k - 1),
  };
}

/**
 * SVD of ΔW = scale·B·A with B (d_out, r) and A (r, d_in), r triples. `name` goes into errors.
 * r must not exceed min(d_in, d_out): then B·A could not have r independent directions.
 */
export function lowRankSvd(B: Matrix, A: Matrix, scale: number, name = 'adapter'): ThinSvd {
  const r = A.rows;
  if (B.columns !== r)
    fail(
      ErrorCodes.SHAPE,
      `${name}: lora_B has ${B.columns} columns but lora_A has ${r} rows; both should be the rank r`,
    );
  if (r > B.rows || r > A.columns)
    fail(
      ErrorCodes.SHAPE,
      `${name}: rank r=${r} exceeds min(d_out=${B.rows}, d_in=${A.columns}); ` +
        `expected r ≤ ${Math.min(B.rows, A.columns)}`,
    );
  if (!Number.isFinite(scale)) fail(ErrorCodes.NON_FINITE, `${name}: scaling is ${scale}; expected a finite number`);
  const b = thinQr(B); // Q (d_out, r), R (r, r)
  const a = thinQr(A.transpose()); // Q (d_in, r), R (r, r)
  const core = b.R.mmul(a.R.transpose()).mul(scale); // (r, r)
  const small = denseSvd(core);
  return { values: small.values, left: b.Q.mmul(small.left), right: a.Q.mmul(small.right) };
}

/** Right-singular vectors of A (r, d_in) as (d_in, r) columns, strongest first: the input directions A reads. */
export function rightSingularVectors(A: Matrix, name = 'lora_A'): Matrix {
  return lowRankSvd(Matrix.eye(A.rows), A, 1, name).right;
}

/** (rows, cols) with orthonormal columns spanning a random subspace: QR of a Gaussian matrix. */
export function randomOrthonormal(rows: number, cols: number, normal: () => number): Matrix {
  const g = new Matrix(rows, cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) g.set(i, j, normal());
  return thinQr(g).Q;
}
