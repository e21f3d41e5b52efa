// The coordinator's per-result passes in WebAssembly SIMD (shared/train/reduce-kernel.ts, kernels/c/reduce.c)
// give exactly the bits of their scalar JavaScript forms, and an independent float64 reference agrees with
// both: lengths around the 4-lane tail and the 16384-float chunk, values of very different magnitudes
// (so any change in the order of additions shows), subnormals, values near the float32 maximum, NaN and
// ±Infinity; and the defence's finiteness check still names the first bad index.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { finiteNorm, l2Norm } from '../../../coordinator/engine/defence.ts';
import { Rng } from '../../../shared/rng.ts';
import {
  adamw,
  adamwJs,
  addInto,
  addIntoJs,
  sumSquares,
  sumSquaresJs,
  sumSquaresSerial,
  sumSquaresSerialJs,
} from '../../../shared/train/reduce-kernel.ts';

const rng = new Rng(19);
const LENGTHS = [0, 1, 3, 5, 1023, 1024, 1027, 16383, 16384, 16385, 16384 * 2 + 7, 295_000];

/** Values spread over 16 decades and both signs, with a few subnormals and near-maximal ones. */
function values(n: number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = rng.next();
    x[i] =
      u < 0.01
        ? 1e-41 * rng.normal()
        : u < 0.011
          ? 3e38 * Math.sign(rng.normal())
          : 10 ** (rng.int(16) - 8) * rng.normal();
  }
  return x;
}

const sameBits = (a: Float32Array, b: Float32Array) => {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let differing = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) differing++;
  return differing;
};

test('addInto equals the scalar float32 loop bit for bit, and each element is the float32 rounding of the exact sum', () => {
  for (const n of LENGTHS) {
    const g = values(n);
    const start = values(n);
    const kernel = new Float32Array(start);
    const scalar = new Float32Array(start);
    for (let k = 0; k < 3; k++) {
      addInto(kernel, g);
      addIntoJs(scalar, g);
    }
    assert.equal(sameBits(kernel, scalar), 0, `n=${n}: elements differing from the scalar loop`);
    // one addition from the start, checked against Math.fround of the float64 sum (exact for two float32s)
    const once = new Float32Array(start);
    addInto(once, g);
    for (let i = 0; i < n; i += Math.max(1, n >> 6))
      assert.ok(
        Object.is(once[i], Math.fround(start[i] + g[i])),
        `n=${n}, i=${i}: ${once[i]} vs ${start[i]} + ${g[i]}`,
      );
  }
});

test('addInto works on views at any offset and refuses mismatched lengths', () => {
  const big = values(40_000);
  const acc = new Float32Array(big.buffer, 4 * 3, 20_001);
  const g = new Float32Array(big.buffer, 4 * 19_000, 20_001).slice();
  const expected = new Float32Array(acc);
  addIntoJs(expected, g);
  addInto(acc, g);
  assert.equal(sameBits(acc, expected), 0);
  assert.throws(() => addInto(new Float32Array(2048), new Float32Array(2047)), /cannot add 2047 values into 2048/);
});

test('sumSquares equals the scalar four-lane float64 loop bit for bit, within 1e-12 of a plain float64 sum', () => {
  for (const n of LENGTHS) {
    const x = values(n);
    const kernel = sumSquares(x);
    assert.ok(Object.is(kernel, sumSquaresJs(x)), `n=${n}: ${kernel} vs ${sumSquaresJs(x)}`);
    let plain = 0;
    for (let i = 0; i < n; i++) plain += x[i] * x[i];
    assert.ok(Math.abs(kernel - plain) <= 1e-12 * plain, `n=${n}: ${kernel} vs plain ${plain}`);
  }
});

test('a NaN or ±Infinity anywhere makes the norm non-finite, and finiteNorm names the first one', () => {
  for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    for (const at of [0, 2, 16383, 16384, 20_001, 29_999]) {
      const x = values(30_000);
      x[at] = bad;
      if (at + 7 < x.length) x[at + 7] = Number.NaN;
      assert.ok(!Number.isFinite(sumSquares(x)), `${bad} at ${at}`);
      assert.ok(Object.is(l2Norm(x), Math.sqrt(sumSquaresJs(x))));
      assert.throws(
        () => finiteNorm(x, 'result.grads'),
        (e: Error & { code?: string }) =>
          e.code === 'LM_ERR_NON_FINITE' && e.message.endsWith(`result.grads[${at}] is ${bad}`),
      );
    }
  }
});

test('adamw equals the scalar AdamW loop bit for bit over many steps, at every tail and chunk boundary', () => {
  for (const n of [1, 2, 3, 1023, 1025, 16383, 16385, 16384 * 2 + 5]) {
    const p = values(n).map((x) => Math.fround(Math.max(-1e3, Math.min(1e3, x))));
    const kernel = { p: new Float32Array(p), m: new Float32Array(n), v: new Float32Array(n) };
    const scalar = { p: new Float32Array(p), m: new Float32Array(n), v: new Float32Array(n) };
    for (let step = 1; step <= 5; step++) {
      // gradients over many magnitudes, a few exact zeros (v stays 0: the update is m / eps)
      const g = values(n).map((x, i) => (i % 97 === 0 ? 0 : Math.fround(Math.max(-1e6, Math.min(1e6, x)))));
      const k = {
        beta1: 0.9,
        beta2: 0.999,
        c1: 1 - 0.9 ** step,
        c2: 1 - 0.999 ** step,
        eps: 1e-8,
        lr: 1e-3 * step,
        weightDecay: 0.01,
      };
      adamw(kernel.p, g, kernel.m, kernel.v, k);
      adamwJs(scalar.p, g, scalar.m, scalar.v, k);
    }
    for (const part of ['p', 'm', 'v'] as const)
      assert.equal(sameBits(kernel[part], scalar[part]), 0, `n=${n}: ${part} elements differing from the scalar loop`);
    assert.ok(kernel.p.every(Number.isFinite));
  }
});

test("sumSquaresSerial equals one float64 sum in index order bit for bit, carried across arrays (globalNorm's order)", () => {
  let kernel = 0;
  let scalar = 0;
  for (const n of LENGTHS) {
    const x = values(n).map((v) => Math.fround(Math.max(-1e30, Math.min(1e30, v))));
    kernel = sumSquaresSerial(x, kernel);
    for (let i = 0; i < n; i++) scalar += x[i] * x[i];
    assert.ok(Object.is(kernel, scalar), `after n=${n}: ${kernel} vs ${scalar}`);
  }
  // one array alone, from 0
  const x = values(295_000).map((v) => Math.fround(Math.max(-1e30, Math.min(1e30, v))));
  assert.ok(Object.is(sumSquaresSerial(x), sumSquaresSerialJs(x)));
});

test('NaN and ±Infinity pass through addInto and adamw as in the scalar loops; overlapping arrays keep its order', () => {
  const n = 20_000;
  const specials = [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 3.4e38, -3.4e38, 0, -0];
  const withSpecials = () => values(n).map((x, i) => (i % 13 === 0 ? specials[(i / 13) % specials.length] : x));
  const isNaNs = (a: Float32Array) => Array.from(a, (x) => Number.isNaN(x));
  const same = (a: Float32Array, b: Float32Array) => {
    // NaN payloads may differ between the engines' float paths: NaN where NaN, the bits elsewhere
    assert.deepEqual(isNaNs(a), isNaNs(b));
    for (let i = 0; i < a.length; i++)
      if (!Number.isNaN(a[i])) assert.ok(Object.is(a[i], b[i]), `[${i}] ${a[i]} vs ${b[i]}`);
  };
  const g = withSpecials();
  const acc = withSpecials();
  const [kernel, scalar] = [new Float32Array(acc), new Float32Array(acc)];
  addInto(kernel, g);
  addIntoJs(scalar, g);
  same(kernel, scalar);
  const k = { beta1: 0.9, beta2: 0.999, c1: 0.1, c2: 0.001, eps: 1e-8, lr: 1e-3, weightDecay: 0.01 };
  const state = () => ({ p: withSpecials(), m: withSpecials().map(Math.abs), v: withSpecials().map(Math.abs) });
  const a = state();
  const b = { p: new Float32Array(a.p), m: new Float32Array(a.m), v: new Float32Array(a.v) };
  adamw(a.p, g, a.m, a.v, k);
  adamwJs(b.p, g, b.m, b.v, k);
  for (const part of ['p', 'm', 'v'] as const) same(a[part], b[part]);
  // g a view of acc's own buffer, before it: the scalar loop's element order (each add sees earlier results)
  const buffer = values(n + 3);
  const [x, y] = [new Float32Array(buffer), new Float32Array(buffer)];
  addInto(x.subarray(3), x.subarray(0, n));
  addIntoJs(y.subarray(3), y.subarray(0, n));
  same(x, y);
});
