// The LoRA analysis math on matrices of known structure: singular values and effective ranks come
// back as built, φ counts shared directions, extraction meets Eckart–Young, the QR route equals a
// dense SVD, and the amplification numbers equal a direct dense computation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Matrix } from 'ml-matrix';
import { amplification } from '../../shared/analysis/amplification.ts';
import { extractLowRank } from '../../shared/analysis/extract.ts';
import { energyRank, entropyEffectiveRank, summarizeSpectrum } from '../../shared/analysis/spectrum.ts';
import { randomSubspaceSimilarity, subspaceSimilarity } from '../../shared/analysis/subspace.ts';
import {
  denseSvd,
  lowRankSvd,
  matrixFrom,
  randomOrthonormal,
  rightSingularVectors,
  toFloat32,
} from '../../shared/analysis/svd.ts';
import { ErrorCodes } from '../../shared/errors.ts';
import { Rng } from '../../shared/rng.ts';
import { throwsCode } from '../helpers/assert.ts';

const rng = new Rng(42);
const gaussian = (rows: number, cols: number) =>
  Matrix.from1DArray(
    rows,
    cols,
    Array.from({ length: rows * cols }, () => rng.normal()),
  );
const relClose = (actual: number, expected: number, tol: number, what: string) =>
  assert.ok(
    Math.abs(actual - expected) <= tol * Math.max(Math.abs(expected), 1e-30),
    `${what}: ${actual} vs ${expected}`,
  );
/** A float32 round trip, as adapters are stored. */
const f32 = (m: Matrix, name = 'm') => matrixFrom(toFloat32(m), m.rows, m.columns, name);
/** (rows, k) columns of an orthonormal basis, from column `from` on. */
const columns = (Q: Matrix, from: number, k: number) => Q.subMatrix(0, Q.rows - 1, from, from + k - 1);

/** B (d_out, r), A (r, d_in) with scale·B·A = U·diag(values)·Vᵀ. */
function builtAdapter(U: Matrix, V: Matrix, values: number[], scale: number) {
  const B = U.clone();
  values.forEach((v, c) => B.mulColumn(c, v / scale));
  return { B: f32(B, 'B'), A: f32(V.transpose(), 'A') };
}

test(
  'ΔW built from orthonormal U, V and chosen σ gives back σ (≤ 1e-5 rel), ' +
    'its vectors and the right effective rank',
  () => {
    const [dOut, dIn] = [96, 80];
    const values = [5, 3, 2, 1.5, 0.7, 0.2];
    const U = randomOrthonormal(dOut, values.length, () => rng.normal());
    const V = randomOrthonormal(dIn, values.length, () => rng.normal());
    const { B, A } = builtAdapter(U, V, values, 2);
    const svd = lowRankSvd(B, A, 2);
    values.forEach((v, i) => relClose(svd.values[i], v, 1e-5, `σ${i + 1}`));
    for (let c = 0; c < values.length; c++) {
      const cosU = Math.abs(U.getColumnVector(c).transpose().mmul(svd.left.getColumnVector(c)).get(0, 0));
      const cosV = Math.abs(V.getColumnVector(c).transpose().mmul(svd.right.getColumnVector(c)).get(0, 0));
      assert.ok(cosU > 1 - 1e-6 && cosV > 1 - 1e-6, `direction ${c + 1}: |cos| ${cosU}, ${cosV}`);
    }
    // Three equal values and zeros: both effective ranks are exactly 3.
    const flatAdapter = builtAdapter(U, V, [2, 2, 2, 0, 0, 0], 1);
    const flat = lowRankSvd(flatAdapter.B, flatAdapter.A, 1);
    relClose(entropyEffectiveRank(flat.values), 3, 1e-6, 'entropy rank of (2,2,2,0,0,0)');
    assert.equal(energyRank(flat.values, 0.9), 3);
    assert.equal(energyRank(flat.values, 0.6), 2); // 2 of 3 equal directions hold 2/3 ≥ 0.6
    const summary = summarizeSpectrum([4, 2, 1, 0.5]); // Σσ² = 21.25
    assert.equal(summary.energyRank90, 2); // 16/21.25 = 0.753, 20/21.25 = 0.941
    assert.equal(summary.energyRank99, 4); // 21/21.25 = 0.988
    relClose(summary.topShares.top1, 16 / 21.25, 1e-12, 'top-1 share');
    relClose(summary.frobenius, Math.sqrt(21.25), 1e-12, '‖ΔW‖_F');
    assert.equal(entropyEffectiveRank([0, 0, 0]), 0);
  },
);

test('QR + r×r SVD equals the dense SVD of B·A on random B (96×8), A (8×80): σ ≤ 1e-5 rel, same ΔW', () => {
  const B = f32(gaussian(96, 8));
  const A = f32(gaussian(8, 80));
  const scale = 16 / 8;
  const low = lowRankSvd(B, A, scale);
  const dense = denseSvd(B.mmul(A).mul(scale));
  for (let i = 0; i < 8; i++) relClose(low.values[i], dense.values[i], 1e-5, `σ${i + 1}`);
  assert.ok(dense.values[8] < 1e-10 * dense.values[0], `dense σ9 ${dense.values[8]} should be ~0`);
  // U·Σ·Vᵀ rebuilds scale·B·A.
  const rebuilt = low.left.mmul(Matrix.diag(low.values)).mmul(low.right.transpose());
  const diff = rebuilt.sub(B.mmul(A).mul(scale)).norm('frobenius') / dense.values[0];
  assert.ok(diff < 1e-10, `reconstruction error ${diff}`);
  // Orthonormal columns.
  assert.ok(low.left.transpose().mmul(low.left).sub(Matrix.eye(8)).norm('frobenius') < 1e-10);
  assert.ok(low.right.transpose().mmul(low.right).sub(Matrix.eye(8)).norm('frobenius') < 1e-10);
});

test('the QR route handles 768×8 · 8×768 in well under a second (a dense 768² SVD takes ~15 s)', () => {
  const B = gaussian(768, 8);
  const A = gaussian(8, 768);
  const started = performance.now();
  const svd = lowRankSvd(B, A, 1);
  const ms = performance.now() - started;
  assert.equal(svd.values.length, 8);
  assert.ok(ms < 1000, `${ms.toFixed(0)} ms`);
});

test(
  'bad inputs raise coded errors naming the value: ' +
    'rank > min(d_in, d_out), mismatched r, non-finite, wrong length',
  () => {
    throwsCode(
      () => lowRankSvd(gaussian(4, 6), gaussian(6, 10), 1, 'q_proj'),
      ErrorCodes.SHAPE,
      /rank r=6 exceeds min\(d_out=4, d_in=10\)/,
    );
    throwsCode(
      () => lowRankSvd(gaussian(10, 3), gaussian(4, 10), 1),
      ErrorCodes.SHAPE,
      /3 columns but lora_A has 4 rows/,
    );
    throwsCode(
      () => matrixFrom(Float32Array.from([1, NaN, 0, 1]), 2, 2, 'lora_A'),
      ErrorCodes.NON_FINITE,
      /lora_A\[0, 1\] is NaN/,
    );
    throwsCode(() => matrixFrom(new Float32Array(5), 2, 2, 'lora_B'), ErrorCodes.SHAPE, /5 values, expected 2×2/);
    throwsCode(() => extractLowRank(gaussian(4, 6), 5, 1, 'v_proj'), ErrorCodes.CONFIG, /--rank 5 .*\[1, 4\]/);
    throwsCode(() => subspaceSimilarity(gaussian(8, 2), gaussian(9, 2)), ErrorCodes.SHAPE, /8 and 9 input dimensions/);
  },
);

test(
  'φ: adapters sharing exactly m directions give m / min(i, j); ' + 'an adapter with itself gives 1 on the diagonal',
  () => {
    const [d, r1, r2, m] = [64, 8, 16, 3];
    const basis = randomOrthonormal(d, d, () => rng.normal());
    // A₁ reads basis columns 0..7; A₂ reads 0..2 (shared, also its strongest) then 8..20 (orthogonal to A₁).
    const U1 = columns(basis, 0, r1);
    const U2 = new Matrix(d, r2);
    U2.setSubMatrix(columns(basis, 0, m), 0, 0);
    U2.setSubMatrix(columns(basis, r1, r2 - m), 0, m);
    const decreasing = (r: number) => Array.from({ length: r }, (_, i) => 10 - i * 0.5);
    const A1 = f32(Matrix.diag(decreasing(r1)).mmul(U1.transpose()));
    const A2 = f32(Matrix.diag(decreasing(r2)).mmul(U2.transpose()));
    const phi = subspaceSimilarity(rightSingularVectors(A1), rightSingularVectors(A2));
    assert.equal(phi.length, r1);
    assert.equal(phi[0].length, r2);
    for (let i = 1; i <= r1; i++) {
      for (let j = 1; j <= r2; j++) {
        // Top-i of A₁ and top-j of A₂ share min(i, j, m) directions.
        const expected = Math.min(i, j, m) / Math.min(i, j);
        assert.ok(
          Math.abs(phi[i - 1][j - 1] - expected) < 1e-5,
          `φ(${i}, ${j}) = ${phi[i - 1][j - 1]}, expected ${expected}`,
        );
      }
    }
    const self = subspaceSimilarity(rightSingularVectors(A2), rightSingularVectors(A2));
    for (let i = 0; i < r2; i++) assert.ok(Math.abs(self[i][i] - 1) < 1e-6, `φ(${i + 1}, ${i + 1}) = ${self[i][i]}`);
    assert.equal(randomSubspaceSimilarity(1, 64, 128), 0.5);
  },
);

test('extraction of a rank-k difference is exact at rank k and has error σ_k at rank k − 1', () => {
  const [dOut, dIn, k] = [48, 40, 5];
  const values = [9, 6, 4, 2.5, 1.25];
  const U = randomOrthonormal(dOut, k, () => rng.normal());
  const V = randomOrthonormal(dIn, k, () => rng.normal());
  const delta = U.mmul(Matrix.diag(values)).mmul(V.transpose());
  const norm = Math.sqrt(values.reduce((s, v) => s + v * v, 0));
  const exact = extractLowRank(delta, k, 2, 'q_proj');
  assert.equal(exact.A.length, k * dIn);
  assert.equal(exact.B.length, dOut * k);
  assert.ok(exact.relativeError < 1e-5, `relative error at rank k: ${exact.relativeError}`);
  relClose(exact.deltaNorm, norm, 1e-10, '‖ΔW‖_F');
  const truncated = extractLowRank(delta, k - 1, 1, 'q_proj');
  relClose(truncated.error, values[k - 1], 1e-5, 'error at rank k − 1');
  relClose(truncated.optimalError, values[k - 1], 1e-10, 'Eckart–Young error');
  relClose(truncated.relativeError, values[k - 1] / norm, 1e-5, 'relative error');
});

test("amplification equals a direct dense computation; ΔW along W's own top directions is not amplified", () => {
  const [dOut, dIn, r, k] = [24, 20, 4, 4];
  const W = gaussian(dOut, dIn);
  const B = f32(gaussian(dOut, r));
  const A = f32(gaussian(r, dIn));
  const scale = 0.5;
  const delta = lowRankSvd(B, A, scale);
  const weightSvd = denseSvd(W);
  const amp = amplification(W, delta, weightSvd.values, k, 3);
  // Direct: top-k vectors from a dense SVD of the formed ΔW, then ‖UᵀWV‖_F.
  const dense = denseSvd(B.mmul(A).mul(scale));
  const top = (m: Matrix) => m.subMatrix(0, m.rows - 1, 0, k - 1);
  const direct = top(dense.left).transpose().mmul(W).mmul(top(dense.right)).norm('frobenius');
  relClose(amp.projectedOnDelta, direct, 1e-8, '‖UᵀWV‖_F (ΔW directions)');
  relClose(amp.deltaNorm, B.mmul(A).mul(scale).norm('frobenius'), 1e-10, '‖ΔW‖_F');
  relClose(amp.factor, amp.deltaNorm / direct, 1e-8, 'amplification factor');
  const onWeight = top(weightSvd.left).transpose().mmul(W).mmul(top(weightSvd.right)).norm('frobenius');
  relClose(amp.projectedOnWeight, onWeight, 1e-10, '‖UᵀWV‖_F (W directions)');
  relClose(amp.weightNorm, W.norm('frobenius'), 1e-12, '‖W‖_F');
  assert.ok(
    amp.projectedOnRandom > 0 && amp.projectedOnRandom < amp.projectedOnWeight,
    `random ${amp.projectedOnRandom}`,
  );
  // A ΔW that boosts exactly W's top-k directions: the projection is W's best, no amplification beyond ‖ΔW‖/that.
  const aligned = builtAdapter(top(weightSvd.left), top(weightSvd.right), [1, 1, 1, 1], 1);
  const alignedAmp = amplification(W, lowRankSvd(aligned.B, aligned.A, 1), weightSvd.values, k);
  relClose(alignedAmp.projectedOnDelta, alignedAmp.projectedOnWeight, 1e-6, 'aligned projection');
});
