// The default defence's pure parts: the overflow bound keeps any float32 sum of a step's results
// finite, the reference norm is the lower median over workers (a fast liar that won most
// micro-batches cannot move it), outliers are the unverified results over K × the reference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  l2Norm,
  NormHistory,
  outliers,
  overflowBound,
  referenceNorm,
  relativeL2,
  type ScreenedResult,
} from '../../../coordinator/engine/defence.ts';

test('results within the overflow bound add up to a finite float32 sum, at the bound and for any order', () => {
  for (const slots of [1, 2, 3, 16, 1000]) {
    const bound = overflowBound(slots);
    const worst = Math.fround(bound); // one value per result carrying the whole norm
    const acc = new Float32Array(1);
    for (let i = 0; i < slots; i++) acc[0] += worst;
    assert.ok(Number.isFinite(acc[0]), `slots ${slots}: ${acc[0]}`);
  }
  // Three times the bound per result for 2 slots already overflows: the bound is not loose by orders.
  const acc = new Float32Array(1);
  acc[0] = Math.fround(3 * overflowBound(2));
  acc[0] += Math.fround(3 * overflowBound(2));
  assert.equal(acc[0], Infinity);
});

test('l2Norm is finite and exact in float64 for values near FLT_MAX, for every length mod 4', () => {
  for (const n of [1, 2, 3, 4, 5, 7, 8, 1001]) {
    const x = new Float32Array(n).fill(3e38);
    const expected = Math.fround(3e38) * Math.sqrt(n);
    assert.ok(Math.abs(l2Norm(x) - expected) <= 1e-12 * expected, `n=${n}`);
  }
});

const r = (index: number, workerId: string, norm: number, verified = false): ScreenedResult => ({
  index,
  workerId,
  norm,
  verified,
});

test('reference norm: the lower median over workers of each worker’s median', () => {
  // a liar that won 14 of 16 micro-batches with huge norms, 2 honest workers with one each
  const step = [...Array.from({ length: 14 }, (_, i) => r(i, 'liar', 1e31)), r(14, 'a', 2), r(15, 'b', 3)];
  assert.equal(referenceNorm(step), 3);
  assert.deepEqual(
    outliers(step, 10),
    Array.from({ length: 14 }, (_, i) => i),
  );
  // one honest and one lying worker: the lower of the two
  assert.equal(referenceNorm([r(0, 'liar', 1e31), r(1, 'liar', 1e31), r(2, 'a', 2)]), 2);
  assert.equal(referenceNorm([]), null);
});

test('outliers: only unverified results over K × the reference; K = 0 switches the screen off', () => {
  const step = [r(0, 'a', 1), r(1, 'b', 1.2), r(2, 'c', 0.9), r(3, 'c', 50), r(4, 'a', 11, true), r(5, 'b', 10.5)];
  // per-worker medians: a (1, 11) → 6, b (1.2, 10.5) → 5.85, c (0.9, 50) → 25.45; lower median 6
  assert.equal(referenceNorm(step), 6);
  assert.deepEqual(outliers(step, 2), [3]); // 50 > 12; 11 is verified; 10.5 < 12
  assert.deepEqual(outliers(step, 0), []);
  assert.deepEqual(outliers(step, 10), []);
});

test('relativeL2: 0 for equal gradients, Infinity for a missing or resized tensor', () => {
  const a = new Map([['x', new Float32Array([3, 4])]]);
  assert.equal(relativeL2(a, new Map([['x', new Float32Array([3, 4])]])), 0);
  assert.ok(Math.abs(relativeL2(a, new Map([['x', new Float32Array([3, 5])]])) - 0.2) < 1e-12);
  assert.equal(relativeL2(a, new Map()), Infinity);
  assert.equal(relativeL2(a, new Map([['x', new Float32Array(3)]])), Infinity);
});

test(
  'history: a step one worker computed alone is judged against recent trusted norms, ' +
    'or has its largest result confirmed',
  () => {
    // (and once a history exists it is the reference: a near-zero liar among two workers cannot lower it)
    const alone = [r(0, 'liar', 1e31), r(1, 'liar', 2e31), r(2, 'liar', 1e31)];
    // nothing known yet: the largest result is recomputed before the step counts
    const history = new NormHistory(4);
    assert.deepEqual(outliers(alone, 10, history), [1]);
    assert.deepEqual(
      outliers(
        alone.map((x) => ({ ...x, verified: x.index === 1 })),
        10,
        history,
      ),
      [],
    );
    // a step two workers computed does not enter it (one of two could be a near-zero liar)…
    history.step([r(0, 'a', 2), r(1, 'b', 4), r(2, 'b', 4)]);
    assert.equal(history.reference(), null);
    // …one three workers computed does: its lower median, 2
    history.step([r(0, 'a', 2), r(1, 'b', 4), r(2, 'c', 0)]);
    assert.equal(history.reference(), 2);
    assert.deepEqual(outliers(alone, 10, history), [0, 1, 2]);
    // a lone liar cannot raise the history: steps of one worker do not enter it
    history.step(alone);
    assert.equal(history.reference(), 2);
    // trusted norms enter it; the window keeps the last 4
    for (const n of [3, 3, 3, 3]) history.trusted(n);
    assert.equal(history.reference(), 3);
    // an honest lone step near the history passes
    assert.deepEqual(outliers([r(0, 'a', 5), r(1, 'a', 25)], 10, history), []);
  },
);

test('a near-zero liar cannot drag the reference down once trusted norms exist: honest results are not flagged', () => {
  const history = new NormHistory(4);
  for (const n of [3, 4, 5]) history.trusted(n);
  assert.deepEqual(outliers([r(0, 'zero', 0), r(1, 'zero', 0), r(2, 'a', 4), r(3, 'a', 6)], 10, history), []);
  assert.deepEqual(outliers([r(0, 'huge', 400), r(1, 'a', 4)], 10, history), [0]);
});
