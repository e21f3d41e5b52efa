// The relaxed-fma arithmetic variant (shared/arithmetic.ts) of the wasm matmul kernels. Its bits are
// the engine's and CPU's (a fused multiply-add or not), so no JavaScript reference can match them
// exactly: it is checked against the simd128 kernels (which equal the JavaScript reference bit for
// bit, test/kernels/compact-kernels.test.ts) within relative L2 ≤ 1e-6 (‖Δ‖_F / ‖ref‖_F), and for
// what simd128 guarantees: the same bits call after call (also after V8 has moved the module to its
// optimizing tier), and a row's result the same alone or in a batch (4-row blocks and the rest).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../node/backend.ts';
import { selectArithmetic, selectedArithmetic, supportedArithmetic } from '../../kernels/arithmetic.ts';
import type { ArithmeticVariant } from '../../shared/arithmetic.ts';
import { CompactWeight, compactLinear } from '../../shared/model/compact-linear.ts';
import { quantizeMatrix } from '../../shared/quant/quantize.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';
import { COMPACT_SPECS, gaussian } from '../helpers/compact.ts';

await initBackend('wasm');

/** ‖a − b‖_F / ‖b‖_F */
const relative = (a: Float32Array, b: Float32Array) => relativeL2Distance([[b, a]]);

/** f() under `variant`, the selection put back afterwards. */
function under<T>(variant: ArithmeticVariant, f: () => T): T {
  const before = selectedArithmetic();
  selectArithmetic(variant);
  try {
    return f();
  } finally {
    selectArithmetic(before);
  }
}

test('Node 20 runs relaxed SIMD once node/backend.ts has loaded (it sets the V8 flag)', () => {
  assert.deepEqual(supportedArithmetic(), ['simd128', 'relaxed-fma']);
  assert.equal(selectedArithmetic(), 'simd128', 'the default until a run selects another');
});

// (rows = d_out, cols = d_in, n): ragged output widths, several 256-deep tiles, rows not a multiple of 4
const SHAPES: [number, number, number][] = [
  [13, 70, 5],
  [64, 600, 9],
  [40, 1030, 12],
];

/** Forward y = x·Wᵀ and backward dx = dy·W (its gradient) of one compact matrix, and a row alone. */
function compactProducts(weight: CompactWeight, x: tf.Tensor2D, dy: tf.Tensor2D) {
  return tf.tidy(() => ({
    y: compactLinear(x, weight).dataSync() as Float32Array,
    dx: tf
      .grad((input: tf.Tensor) => tf.sum(tf.mul(compactLinear(input as tf.Tensor2D, weight), dy)))(x)
      .dataSync() as Float32Array,
    firstRowAlone: compactLinear(tf.slice(x, [0, 0], [1, x.shape[1]]), weight).dataSync() as Float32Array,
  }));
}

test('compact products with relaxed-fma: within 1e-6 of simd128, the same bits every call and for a row alone', () => {
  let seed = 300;
  for (const spec of COMPACT_SPECS)
    for (const [rows, cols, n] of SHAPES) {
      const what = `${JSON.stringify(spec)} [${rows}, ${cols}, ${n}]`;
      const weight = new CompactWeight(quantizeMatrix(gaussian(rows * cols, seed, 0.2), rows, cols, spec));
      const x = tf.tensor2d(gaussian(n * cols, seed + 1), [n, cols]);
      const dy = tf.tensor2d(gaussian(n * rows, seed + 2), [n, rows]);
      seed += 10;
      const plain = under('simd128', () => compactProducts(weight, x, dy));
      const fused = under('relaxed-fma', () => compactProducts(weight, x, dy));
      const again = under('relaxed-fma', () => compactProducts(weight, x, dy));
      assert.ok(relative(fused.y, plain.y) <= 1e-6, `${what} forward: ${relative(fused.y, plain.y)}`);
      assert.ok(relative(fused.dx, plain.dx) <= 1e-6, `${what} backward: ${relative(fused.dx, plain.dx)}`);
      assert.deepEqual(again.y, fused.y, `${what} forward: same bits twice`);
      assert.deepEqual(again.dx, fused.dx, `${what} backward: same bits twice`);
      assert.deepEqual(fused.firstRowAlone, fused.y.subarray(0, rows), `${what} a row alone == in the batch`);
      tf.dispose([x, dy]);
      weight.dispose();
    }
});

test('relaxed-fma bits do not change when V8 tiers the kernel up (many calls)', () => {
  const [rows, cols, n] = [24, 520, 7];
  const weight = new CompactWeight(quantizeMatrix(gaussian(rows * cols, 41, 0.2), rows, cols, { format: 'f32' }));
  const x = tf.tensor2d(gaussian(n * cols, 42), [n, cols]);
  under('relaxed-fma', () => {
    const first = tf.tidy(() => compactLinear(x, weight).dataSync() as Float32Array);
    let last = first;
    for (let i = 0; i < 300; i++) last = tf.tidy(() => compactLinear(x, weight).dataSync() as Float32Array);
    assert.deepEqual(last, first);
  });
  x.dispose();
  weight.dispose();
});

test('BatchMatMul (the attention products) with relaxed-fma: within 1e-6 of simd128, same bits twice', () => {
  const values = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed + 1.7 * i));
  // (batch, m, k) · (batch, k, n), n with a remainder after the 4-wide part, and transposed B
  const cases: [number[], number[], boolean][] = [
    [[3, 5, 70], [3, 70, 13], false],
    [[12, 16, 64], [12, 16, 64], true],
    [[1, 9, 33], [4, 33, 8], false],
  ];
  for (const [aShape, bShape, transposeB] of cases) {
    const a = tf.tensor(
      values(
        aShape.reduce((p, q) => p * q),
        1,
      ),
      aShape,
    );
    const b = tf.tensor(
      values(
        bShape.reduce((p, q) => p * q),
        2,
      ),
      bShape,
    );
    const product = () => tf.tidy(() => tf.matMul(a, b, false, transposeB).dataSync() as Float32Array);
    const plain = under('simd128', product);
    const fused = under('relaxed-fma', product);
    const what = `[${aShape}]·[${bShape}]${transposeB ? 'ᵀ' : ''}`;
    assert.ok(relative(fused, plain) <= 1e-6, `${what}: ${relative(fused, plain)}`);
    assert.deepEqual(under('relaxed-fma', product), fused, `${what}: same bits twice`);
    tf.dispose([a, b]);
  }
});
