// The fused LM head + loss (shared/train/gradients.ts fusedHeadLoss) gives the same bits as the
// unfused path (full logits through the head's custom gradient, then tokenLossSum), loss and
// dhidden, whatever the chunk of rows, for a float32 head (both ways of multiplying) and a compact one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../../helpers/backend.ts';
import { CompactWeight, compactLinear, compactProducts } from '../../../shared/model/compact-linear.ts';
import { frozenLinear, frozenProducts, makeFrozenLinear } from '../../../shared/model/linear-ops.ts';
import type { FrozenProducts } from '../../../shared/model/causal-lm.ts';
import { quantizeMatrix } from '../../../shared/quant/quantize.ts';
import { Rng } from '../../../shared/rng.ts';
import { fusedHeadLoss, headChunkRows, tokenLossSum } from '../../../shared/train/gradients.ts';

const [rows, d, vocab] = [11, 24, 70];
const rng = new Rng(4);
const values = (n: number, s = 1) => Float32Array.from({ length: n }, () => s * rng.normal());
const hidden = tf.tensor2d(values(rows * d), [rows, d]);
const weight = values(vocab * d, 0.5);
const targets = tf.tensor1d(
  Int32Array.from({ length: rows }, () => Math.floor(rng.next() * vocab)),
  'int32',
);
const mask = tf.tensor1d(Float32Array.from({ length: rows }, (_, i) => (i % 4 === 3 ? 0 : 1)));

function check(label: string, linear: (h: tf.Tensor2D) => tf.Tensor2D, head: FrozenProducts) {
  const unfused = tf.valueAndGrad((h: tf.Tensor) => tokenLossSum(linear(h as tf.Tensor2D), targets, mask))(hidden);
  const loss = unfused.value.dataSync()[0];
  const grad = unfused.grad.dataSync();
  assert.ok(Number.isFinite(loss) && loss > 0);
  for (const chunk of [1, 3, rows]) {
    const fused = tf.valueAndGrad((h: tf.Tensor) => fusedHeadLoss(h as tf.Tensor2D, head, vocab, targets, mask, chunk))(
      hidden,
    );
    assert.equal(fused.value.dataSync()[0], loss, `${label}, ${chunk} rows per chunk: loss bits`);
    assert.deepEqual(fused.grad.dataSync(), grad, `${label}, ${chunk} rows per chunk: dhidden bits`);
    const evalOnly = fusedHeadLoss(hidden, head, vocab, targets, mask, chunk, false);
    assert.equal(evalOnly.dataSync()[0], loss, `${label}, ${chunk} rows per chunk: the forward-only loss bits`);
  }
}

test('fused head + loss == full logits + tokenLossSum, bit for bit, for any chunk of rows', () => {
  const w = tf.tensor2d(weight, [vocab, d]);
  for (const left of [false, true]) {
    const layer = makeFrozenLinear(w, false, left);
    check(`float32 head, W on the ${left ? 'left' : 'right'}`, (h) => frozenLinear(h, layer), frozenProducts(layer));
  }
  const compact = new CompactWeight(quantizeMatrix(weight, vocab, d, { format: 'nf4', blockSize: 8 }));
  check('nf4 head', (h) => compactLinear(h, compact), compactProducts(compact));
});

test('rows per chunk follow the logits budget', () => {
  assert.equal(headChunkRows(256, 151936), 110);
  assert.equal(headChunkRows(1024, 50257), 333);
  assert.equal(headChunkRows(64, 40), 64);
  assert.equal(headChunkRows(64, 1e9), 1);
});
