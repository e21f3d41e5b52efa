// The fast path's hand-written gradients, op by op: each custom op's value and gradients equal
// plain autodiff of its textbook formula on random inputs (≤ 1e-5 relative to the largest
// entry; float32 with a different summation order), on the test backend (wasm by default).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { scaledDotProductAttention } from '../../shared/model/attention.ts';
import { frozenLinear, loraBranch, makeFrozenLinear, VOCABULARY_SIZED } from '../../shared/model/linear-ops.ts';
import { geluNew, layerNorm, rmsNorm, swiglu } from '../../shared/model/norm-ops.ts';
import { Rng } from '../../shared/rng.ts';
import { tokenLossSum } from '../../shared/train/gradients.ts';

const TOLERANCE = 1e-5;
const rng = new Rng(5);
const random = (shape: number[], scale = 1) =>
  tf.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => scale * rng.normal()),
    shape,
  );

/** Asserts a ≈ b within TOLERANCE · max(1, max |b|). */
function assertClose(a: tf.Tensor, b: tf.Tensor, what: string): void {
  assert.deepEqual(a.shape, b.shape, `${what}: shape`);
  const x = a.dataSync();
  const y = b.dataSync();
  let scale = 1;
  let diff = 0;
  for (let i = 0; i < y.length; i++) {
    scale = Math.max(scale, Math.abs(y[i]));
    diff = Math.max(diff, Math.abs(x[i] - y[i]));
  }
  assert.ok(diff <= TOLERANCE * scale, `${what}: differs by ${diff} (scale ${scale})`);
}

/**
 * Compares f (fast) and g (reference) on the same inputs: values, and the gradients of
 * Σ value·weights (random weights, so every output entry matters) for every input.
 */
function assertSameOp(
  what: string,
  inputs: tf.Tensor[],
  fast: (...xs: tf.Tensor[]) => tf.Tensor,
  reference: (...xs: tf.Tensor[]) => tf.Tensor,
): void {
  tf.tidy(() => {
    const outWeights = random(reference(...inputs).shape);
    const loss =
      (f: (...xs: tf.Tensor[]) => tf.Tensor) =>
      (...xs: tf.Tensor[]) =>
        tf.sum(tf.mul(f(...xs), outWeights)) as tf.Scalar;
    assertClose(fast(...inputs), reference(...inputs), `${what} value`);
    const fastGrads = tf.grads(loss(fast))(inputs);
    const referenceGrads = tf.grads(loss(reference))(inputs);
    fastGrads.forEach((g, i) => assertClose(g, referenceGrads[i], `${what} gradient of input ${i}`));
  });
}

test(
  'frozenLinear: value and dx equal autodiff of x·Wᵀ for both storage layouts and an LM head, ' +
    'W on either side of the products',
  () => {
    const x = random([6, 5]);
    const w = random([4, 5]) as tf.Tensor2D; // (d_out, d_in)
    const reference = (xs: tf.Tensor) => tf.matMul(xs as tf.Tensor2D, w, false, true);
    for (const onTheLeft of [false, true]) {
      const linear = makeFrozenLinear(w, false, onTheLeft);
      assertSameOp(
        `nn.Linear layout, W on the left: ${onTheLeft}`,
        [x],
        (xs) => frozenLinear(xs as tf.Tensor2D, linear),
        reference,
      );
      const conv = makeFrozenLinear(tf.transpose(w) as tf.Tensor2D, true, onTheLeft);
      assertSameOp(
        `Conv1D layout, W on the left: ${onTheLeft}`,
        [x],
        (xs) => frozenLinear(xs as tf.Tensor2D, conv),
        reference,
      );
    }
    // a vocabulary-sized head: W on the left forward, on the right backward
    const head = random([VOCABULARY_SIZED, 3], 0.1) as tf.Tensor2D;
    const h = random([4, 3]);
    for (const onTheLeft of [false, true]) {
      const layer = makeFrozenLinear(head, false, onTheLeft);
      assert.equal(layer.owned === undefined, onTheLeft, 'an LM head multiplied on the left needs no transposed copy');
      assertSameOp(
        `LM head, W on the left: ${onTheLeft}`,
        [h],
        (xs) => frozenLinear(xs as tf.Tensor2D, layer),
        (xs) => tf.matMul(xs as tf.Tensor2D, head, false, true),
      );
    }
  },
);

test('loraBranch: value and dx, dA, dB equal autodiff of scaling·(x Aᵀ) Bᵀ', () => {
  const scaling = 1.7;
  assertSameOp(
    'lora',
    [random([7, 5]), random([3, 5]), random([4, 3])],
    (x, a, b) => loraBranch(x as tf.Tensor2D, a as tf.Tensor2D, b as tf.Tensor2D, scaling),
    (x, a, b) => tf.mul(tf.matMul(tf.matMul(x, a, false, true), b, false, true), scaling),
  );
});

test('attention: value and dq, dk, dv equal autodiff of softmax(q kᵀ·s + mask) v', () => {
  const [heads, m, s, hs] = [3, 8, 4, 5]; // M = 2·S: two query groups share each key head, as with GQA
  const mask = tf.tensor2d(
    Float32Array.from({ length: m * s }, (_, i) => (i % s > Math.floor(i / s) % s ? -1e9 : 0)),
    [m, s],
  );
  const scale = 1 / Math.sqrt(hs);
  const reference = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) =>
    tf.matMul(
      tf.softmax(tf.add(tf.mul(tf.matMul(q as tf.Tensor3D, k as tf.Tensor3D, false, true), scale), mask)),
      v as tf.Tensor3D,
    );
  const inputs = [random([heads, m, hs]), random([heads, s, hs]), random([heads, s, hs])];
  assertSameOp(
    'attention',
    inputs,
    (q, k, v) => scaledDotProductAttention(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D, mask, scale),
    reference,
  );
});

test('layerNorm and rmsNorm with frozen weights: dx equals autodiff of the textbook formula', () => {
  const w = random([6]);
  const b = random([6]);
  assertSameOp(
    'layerNorm',
    [random([5, 6], 3)],
    (x) => layerNorm(x as tf.Tensor2D, w, b, 1e-5, true),
    (x) => {
      const { mean, variance } = tf.moments(x, -1, true);
      return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, 1e-5))), w), b);
    },
  );
  assertSameOp(
    'rmsNorm',
    [random([5, 6], 3)],
    (x) => rmsNorm(x as tf.Tensor2D, w, 1e-6, true),
    (x) => tf.mul(tf.div(x, tf.sqrt(tf.add(tf.mean(tf.square(x), -1, true), 1e-6))), w),
  );
});

test('geluNew and swiglu: value and gradients equal autodiff of the textbook formulas', () => {
  assertSameOp(
    'gelu_new',
    [random([4, 9], 2)],
    (x) => geluNew(x as tf.Tensor2D),
    (x) =>
      tf.mul(
        tf.mul(x, 0.5),
        tf.add(1, tf.tanh(tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3)))))),
      ),
  );
  assertSameOp(
    'swiglu',
    [random([4, 9], 2), random([4, 9])],
    (g, u) => swiglu(g as tf.Tensor2D, u as tf.Tensor2D),
    (g, u) => tf.mul(tf.mul(g, tf.sigmoid(g)), u),
  );
});

test('tokenLossSum: value and dlogits equal autodiff of −Σ mask·log_softmax(logits)[target]', () => {
  const [rows, vocab] = [6, 11];
  const targets = tf.tensor1d([3, 0, 10, 7, 7, 2], 'int32');
  const mask = tf.tensor1d([1, 0, 1, 1, 0.5, 1]);
  assertSameOp(
    'token loss',
    [random([rows, vocab], 4)],
    (z) => tokenLossSum(z as tf.Tensor2D, targets, mask),
    (z) => tf.neg(tf.sum(tf.mul(tf.sum(tf.mul(tf.logSoftmax(z), tf.oneHot(targets, vocab)), -1), mask))),
  );
});
