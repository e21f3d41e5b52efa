// Wire codecs: each round trip within its stated bound; error feedback keeps the running sum of
// decoded messages within one message's error of the true sum over 1,000 messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  codecBytes,
  decodeFloats,
  encodeFloats,
  ErrorFeedback,
  payloadBytes,
  type CodecSpec,
} from '../../../shared/protocol/wire-codec.ts';
import { Rng } from '../../../shared/rng.ts';

/** Values over many magnitudes, with zeros, signs, subnormal-range and a few large ones. */
function sample(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, (_, i) => (i % 97 === 0 ? 0 : rng.normal() * 10 ** (rng.int(12) - 8)));
}

test('f32 is exact', () => {
  const x = sample(5000, 1);
  assert.deepEqual(decodeFloats(encodeFloats(x, { name: 'f32' })), x);
});

test('f16: |err| ≤ 2^-11·|x| in the normal range, ≤ 2^-25 below it; beyond 65504 clamps', () => {
  const x = Float32Array.from([...sample(5000, 2), 1e5, -7e4, 65504, 6.1e-5, 3e-8]);
  const y = decodeFloats(encodeFloats(x, { name: 'f16' }));
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    const bound = a > 65504 ? a - 65504 : Math.max(2 ** -11 * a, 2 ** -25);
    assert.ok(Math.abs(y[i] - x[i]) <= bound, `x=${x[i]} → ${y[i]}`);
  }
});

test('bf16: |err| ≤ 2^-8·|x| at every magnitude', () => {
  const x = Float32Array.from([...sample(5000, 3), 3e38, -1e-38]);
  const y = decodeFloats(encodeFloats(x, { name: 'bf16' }));
  for (let i = 0; i < x.length; i++)
    assert.ok(Math.abs(y[i] - x[i]) <= 2 ** -8 * Math.abs(x[i]), `x=${x[i]} → ${y[i]}`);
});

test('int8: |err| ≤ scale/2 per block (scale = max|x|/127), for several block sizes and a ragged last block', () => {
  for (const blockSize of [1, 7, 64, 1000]) {
    const x = sample(4999, 4 + blockSize);
    const p = encodeFloats(x, { name: 'int8', blockSize });
    assert.equal(p.scales!.length, Math.ceil(4999 / blockSize));
    assert.equal(payloadBytes(p), codecBytes(x.length, { name: 'int8', blockSize }));
    const y = decodeFloats(p);
    for (let i = 0; i < x.length; i++) {
      const scale = p.scales![Math.floor(i / blockSize)];
      assert.ok(
        Math.abs(y[i] - x[i]) <= scale / 2 + 1e-6 * scale + 1e-45,
        `block ${blockSize}, x=${x[i]} → ${y[i]} (scale ${scale})`,
      );
    }
  }
  assert.deepEqual(
    [...decodeFloats(encodeFloats(new Float32Array(5), { name: 'int8', blockSize: 2 }))],
    [0, 0, 0, 0, 0],
  );
});

test('payload sizes: 4, 2, 2 and 1 + 4/block bytes per value', () => {
  const x = sample(1000, 5);
  for (const [spec, bytes] of [
    [{ name: 'f32' }, 4000],
    [{ name: 'f16' }, 2000],
    [{ name: 'bf16' }, 2000],
    [{ name: 'int8', blockSize: 64 }, 1000 + 4 * 16],
  ] as [CodecSpec, number][]) {
    assert.equal(payloadBytes(encodeFloats(x, spec)), bytes, spec.name);
    assert.equal(codecBytes(x.length, spec), bytes, spec.name);
  }
});

// A gradient-like stream: a persistent small bias (below int8 resolution next to the block's
// large entries, so it would vanish every time) plus noise.
function stream(seed: number, n: number) {
  const rng = new Rng(seed);
  return () =>
    Float32Array.from({ length: n }, (_, i) => (i % 16 === 0 ? 50 * rng.normal() : 0.02 + 0.01 * rng.normal()));
}

for (const spec of [{ name: 'int8', blockSize: 64 }, { name: 'bf16' }, { name: 'f16' }] as CodecSpec[]) {
  test(`error feedback (${spec.name}): Σ decoded tracks Σ true within one message's error over 1,000 messages`, () => {
    const n = 256;
    const next = stream(7, n);
    const withFeedback = new ErrorFeedback(spec);
    const trueSum = new Float64Array(n);
    const fedSum = new Float64Array(n);
    const plainSum = new Float64Array(n);
    let worstOneMessage = 0;
    for (let k = 0; k < 1000; k++) {
      const x = next();
      const fed = decodeFloats(withFeedback.encode(x));
      const plain = decodeFloats(encodeFloats(x, spec));
      for (let i = 0; i < n; i++) {
        trueSum[i] += x[i];
        fedSum[i] += fed[i];
        plainSum[i] += plain[i];
        worstOneMessage = Math.max(worstOneMessage, Math.abs(plain[i] - x[i]));
      }
    }
    // Telescoping: Σ decoded = Σ true − final residual, and the residual is one message's error
    // (of the value plus the previous residual, hence the factor 2 and float32 accumulation slack).
    const drift = Math.max(...trueSum.map((t, i) => Math.abs(fedSum[i] - t)));
    const plainDrift = Math.max(...trueSum.map((t, i) => Math.abs(plainSum[i] - t)));
    assert.ok(
      drift <= 2 * worstOneMessage + 1e-3,
      `${spec.name}: drift ${drift} vs one message's error ${worstOneMessage}`,
    );
    const pending = withFeedback.pending;
    for (let i = 0; i < n; i++)
      assert.ok(
        Math.abs(trueSum[i] - fedSum[i] - pending[i]) <= 1e-3 + 1e-6 * Math.abs(trueSum[i]),
        'Σ true − Σ decoded = residual',
      );
    if (spec.name === 'int8')
      assert.ok(plainDrift > 20 * drift, `without feedback the int8 drift grows: ${plainDrift} vs ${drift}`);
  });
}

test('f32 error feedback keeps no state and sends the values themselves', () => {
  const ef = new ErrorFeedback({ name: 'f32' });
  const x = sample(100, 9);
  assert.equal(ef.encode(x).values, x);
  assert.equal(ef.pending.length, 0);
});
