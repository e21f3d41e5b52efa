// Wire codecs: each round trip within its stated bound; error feedback keeps the running sum of
// decoded messages within one message's error of the true sum over 1,000 messages; the held form
// (HeldCopy) holds what a receiver decoding its frames holds, bit for bit; both forms compute the
// same bits as the arithmetic they replaced; the tolerance floors are those of the codecs' bounds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeMessage, encodeMessage } from '../../../shared/protocol/codec.ts';
import { unpackFloats } from '../../../shared/protocol/messages.ts';
import {
  CODEC_TOLERANCE_FLOOR,
  codecBytes,
  decodeFloats,
  encodeFloats,
  ErrorFeedback,
  F32,
  HeldCopy,
  payloadBytes,
  type CodecSpec,
  type PackedFloats,
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
  test(
    `error feedback (${spec.name}): ` + "Σ decoded tracks Σ true within one message's error over 1,000 messages",
    () => {
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
    },
  );
}

test('f32 error feedback keeps no state and sends the values themselves', () => {
  const ef = new ErrorFeedback({ name: 'f32' });
  const x = sample(100, 9);
  assert.equal(ef.encode(x).values, x);
  assert.equal(ef.pending.length, 0);
});

const LOSSY: CodecSpec[] = [
  { name: 'f16' },
  { name: 'bf16' },
  { name: 'int8', blockSize: 64 },
  { name: 'int8', blockSize: 7 },
];
const bits = (x: Float32Array) => [...new Uint32Array(x.buffer, x.byteOffset, x.length)];

/** Parameters drifting by AdamW-sized steps: a new exact vector per version. */
function versions(n: number, count: number, seed: number): Float32Array[] {
  const rng = new Rng(seed);
  let x = Float32Array.from({ length: n }, () => 0.02 * rng.normal());
  return Array.from({ length: count }, () => (x = Float32Array.from(x, (v) => v + 1e-3 * rng.normal())));
}

/** A worker's copy: a full vector (always f32) replaces it, a delta (the down codec) is added in float32. */
class Receiver {
  flat = new Float32Array(0);
  constructor(private readonly length: number) {}
  take(frame: Uint8Array, down: CodecSpec): void {
    const m = decodeMessage(frame);
    assert.equal(m.type, 'params');
    if (m.type !== 'params') return;
    const values = unpackFloats(m.tensors, m.deltaFrom === undefined ? F32 : down, this.length, 'params');
    if (m.deltaFrom === undefined) this.flat = values.slice();
    else for (let i = 0; i < values.length; i++) this.flat[i] += values[i];
  }
}

const paramsFrame = (paramVersion: number, tensors: PackedFloats, deltaFrom?: number) =>
  encodeMessage({ type: 'params', paramVersion, tensors, ...(deltaFrom === undefined ? {} : { deltaFrom }) });

for (const spec of [F32, ...LOSSY]) {
  const name = spec.name === 'int8' ? `int8/${spec.blockSize}` : spec.name;
  test(`held copy (${name}): a receiver decoding the frames holds the sender's copy, bit for bit`, () => {
    const copy = new HeldCopy(spec);
    const receiver = new Receiver(300);
    const late = new Receiver(300);
    assert.equal(copy.held, null);
    for (const [v, exact] of versions(300, 60, 11).entries()) {
      const delta = copy.update(exact);
      if (v === 0 || spec.name === 'f32') {
        assert.equal(delta, null, 'the first message, and every f32 one, is the vector whole');
        assert.equal(copy.held, exact);
      } else assert.ok(delta && delta.codec === spec.name);
      const keyframe = () => paramsFrame(v, encodeFloats(copy.held!, F32));
      const frame = delta ? paramsFrame(v, delta, v - 1) : keyframe();
      receiver.take(frame, spec);
      if (v === 30)
        late.take(keyframe(), spec); // joins mid-run with the held copy whole
      else if (v > 30) late.take(frame, spec);
      assert.deepEqual(bits(receiver.flat), bits(copy.held!), `version ${v}`);
      if (v >= 30) assert.deepEqual(bits(late.flat), bits(copy.held!), `joiner, version ${v}`);
    }
  });
}

for (const spec of LOSSY.slice(0, 3)) {
  test(`held copy (${spec.name}): the receiver stays within one message's rounding; plain deltas drift`, () => {
    const copy = new HeldCopy(spec);
    const all = versions(256, 300, 12);
    let plain: Float32Array | null = null;
    let worstMessage = 0;
    for (const [v, exact] of all.entries()) {
      copy.update(exact.slice());
      if (!plain) {
        plain = exact.slice();
        continue;
      }
      // Without the held copy: each version's change from the last, rounded, and added up.
      const change = Float32Array.from(exact, (x, i) => x - all[v - 1][i]);
      const arrived = decodeFloats(encodeFloats(change, spec));
      for (let i = 0; i < change.length; i++) {
        plain[i] += arrived[i];
        worstMessage = Math.max(worstMessage, Math.abs(arrived[i] - change[i]));
      }
    }
    const last = all.at(-1)!;
    const held = Math.max(...last.map((x, i) => Math.abs(copy.held![i] - x)));
    const drift = Math.max(...last.map((x, i) => Math.abs(plain![i] - x)));
    assert.ok(held <= 2 * worstMessage, `held copy off by ${held}; one message rounds by up to ${worstMessage}`);
    assert.ok(drift > 4 * held, `plain deltas drift ${drift}, the held copy ${held}`);
  });
}

// The arithmetic both forms had before they shared sendCarrying, restated: the bits must not move.
function formerResidual(spec: CodecSpec) {
  let residual: Float32Array | null = null;
  return (x: Float32Array): PackedFloats => {
    if (!residual) residual = new Float32Array(x.length);
    const target = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) target[i] = x[i] + residual[i];
    const packed = encodeFloats(target, spec);
    const decoded = decodeFloats(packed);
    for (let i = 0; i < x.length; i++) residual[i] = target[i] - decoded[i];
    return packed;
  };
}
function formerShadow(spec: CodecSpec) {
  let shadow: Float32Array | null = null;
  const send = (exact: Float32Array): PackedFloats | null => {
    if (!shadow) {
      shadow = exact;
      return null;
    }
    const delta = new Float32Array(exact.length);
    for (let i = 0; i < delta.length; i++) delta[i] = exact[i] - shadow[i];
    const tensors = encodeFloats(delta, spec);
    const decoded = decodeFloats(tensors);
    for (let i = 0; i < decoded.length; i++) shadow[i] += decoded[i];
    return tensors;
  };
  return { send, held: () => shadow };
}
const packedBits = (p: PackedFloats) => ({
  values: [...new Uint8Array(p.values.buffer, p.values.byteOffset, p.values.byteLength)],
  scales: p.scales ? bits(p.scales) : null,
});

for (const spec of LOSSY) {
  const name = spec.name === 'int8' ? `int8/${spec.blockSize}` : spec.name;
  test(`both forms send the same bits as their former arithmetic (${name})`, () => {
    const feedback = new ErrorFeedback(spec);
    const former = formerResidual(spec);
    const next = stream(13, 200);
    for (let k = 0; k < 50; k++) {
      const x = next();
      assert.deepEqual(packedBits(feedback.encode(x)), packedBits(former(x)), `gradient message ${k}`);
    }
    const copy = new HeldCopy(spec);
    const shadow = formerShadow(spec);
    for (const [v, exact] of versions(200, 50, 14).entries()) {
      const [ours, theirs] = [copy.update(exact.slice()), shadow.send(exact.slice())];
      assert.deepEqual(ours && packedBits(ours), theirs && packedBits(theirs), `parameter message ${v}`);
      assert.deepEqual(bits(copy.held!), bits(shadow.held()!), `held copy after version ${v}`);
    }
  });
}

test('tolerance floors: 0 for f32; for a lossy codec above two roundings of its bound (per value, relative)', () => {
  assert.deepEqual(CODEC_TOLERANCE_FLOOR, { f32: 0, f16: 0.002, bf16: 0.02, int8: 0.05 });
  assert.ok(CODEC_TOLERANCE_FLOOR.f16 >= 2 * 2 ** -11);
  assert.ok(CODEC_TOLERANCE_FLOOR.bf16 >= 2 * 2 ** -8);
  // int8: what a worker sends of Gaussian gradients (max ≈ 3× rms per block of 64) errs by two
  // roundings, well below the floor.
  const spec: CodecSpec = { name: 'int8', blockSize: 64 };
  const ef = new ErrorFeedback(spec);
  const rng = new Rng(15);
  let worst = 0;
  for (let k = 0; k < 20; k++) {
    const g = Float32Array.from({ length: 4096 }, () => 1e-3 * rng.normal());
    const sent = decodeFloats(ef.encode(g));
    let d = 0;
    let n = 0;
    for (let i = 0; i < g.length; i++) {
      d += (sent[i] - g[i]) ** 2;
      n += g[i] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(d / n));
  }
  assert.ok(worst < CODEC_TOLERANCE_FLOOR.int8 / 2, `int8 with error feedback errs ${worst} in relative L2`);
});
