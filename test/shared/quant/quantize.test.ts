// quantizeMatrix / dequantizeMatrix / dequantizeRows: each format's error bound on random matrices,
// odd shapes, all-zero blocks, padding, rows against the whole matrix, double quantization and refusals.
// (Bit-exactness against an independent implementation is fixture.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../../shared/errors.ts';
import { type BaseFormatSpec, int32Words, matrixLayout } from '../../../shared/quant/formats.ts';
import { NF4_LEVELS, NF4_ZERO_CODE } from '../../../shared/quant/nf4.ts';
import { blockScales, dequantizeMatrix, dequantizeRows, quantizeMatrix } from '../../../shared/quant/quantize.ts';
import { Rng } from '../../../shared/rng.ts';
import { throwsCode } from '../../helpers/assert.ts';

/** A weight-like matrix: normal values of scale `sigma`, a few outliers, one all-zero stretch. */
function weights(rows: number, cols: number, seed: number, sigma = 0.02): Float32Array {
  const rng = new Rng(seed);
  const w = Float32Array.from({ length: rows * cols }, () => sigma * rng.normal());
  for (let k = 0; k < Math.ceil(w.length / 97); k++) w[Math.floor(rng.next() * w.length)] = 20 * sigma;
  w.fill(0, 0, Math.min(w.length, 70)); // the first block of row 0 (and more) is all zeros
  return w;
}

const SHAPES: [number, number][] = [
  [1, 1],
  [1, 150],
  [5, 150],
  [3, 64],
  [4, 65],
  [2, 7],
  [9, 200],
];

const hasNaN = (a: Float32Array) => a.some((v) => Number.isNaN(v));

test('f32 round-trips exactly, negative zero included', () => {
  const w = weights(5, 150, 1);
  w[3] = -0;
  const back = dequantizeMatrix(quantizeMatrix(w, 5, 150, { format: 'f32' }));
  assert.deepEqual(new Uint32Array(back.buffer), new Uint32Array(w.buffer));
});

test('f16 and bf16: relative error ≤ 2^-11 and ≤ 2^-8 (normal range), and they are the half.ts roundings', () => {
  for (const [format, bound, smallest] of [
    ['f16', 2 ** -11, 2 ** -14],
    ['bf16', 2 ** -8, 2 ** -126],
  ] as const)
    for (const [rows, cols] of SHAPES) {
      const w = weights(rows, cols, rows * 1000 + cols, 1);
      const p = quantizeMatrix(w, rows, cols, { format });
      const back = dequantizeMatrix(p);
      for (let i = 0; i < w.length; i++) {
        if (Math.abs(w[i]) < smallest) continue;
        assert.ok(Math.abs(back[i] - w[i]) <= bound * Math.abs(w[i]), `${format} [${rows}, ${cols}] element ${i}`);
      }
      // Re-quantizing the dequantized values changes nothing (the formats are closed).
      assert.deepEqual(quantizeMatrix(back, rows, cols, { format }).data, p.data);
    }
});

test('int8: every element within scale/2 of its value, the code the nearest integer, ties to even', () => {
  for (const blockSize of [4, 32, 64])
    for (const [rows, cols] of SHAPES) {
      const spec = { format: 'int8', blockSize } as const;
      const w = weights(rows, cols, 7 * cols + rows);
      const p = quantizeMatrix(w, rows, cols, spec);
      const back = dequantizeMatrix(p);
      const { blocksPerRow, rowStride } = matrixLayout(spec, rows, cols);
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < cols; c++) {
          const scale = p.scales[r * blocksPerRow + Math.floor(c / blockSize)];
          const code = (p.data[r * rowStride + c] << 24) >> 24;
          const x = w[r * cols + c];
          // code·scale is exact in float64 (≤ 31 bits); the stored value is it rounded to float32.
          assert.ok(Math.abs(x - code * scale) <= scale / 2, `[${r}, ${c}] error beyond scale/2`);
          assert.equal(back[r * cols + c], Math.fround(code * scale));
          assert.ok(code >= -127 && code <= 127);
        }
    }
  // Exact ties: absmax 127/128 makes scale 2^-7, so (k + ½)·2^-7 is halfway; both signs go to even k.
  const w = Float32Array.from([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 125.5], (k) => k / 128);
  const p = quantizeMatrix(w, 1, 8, { format: 'int8', blockSize: 8 });
  assert.equal(p.scales[0], 2 ** -7);
  assert.deepEqual(Array.from(new Int8Array(p.data.buffer)), [127, 0, 2, 2, 0, -2, -2, 126]);
});

test('nf4: every dequantized value is the level nearest w/absmax (as float32), times absmax', () => {
  for (const blockSize of [8, 64])
    for (const [rows, cols] of SHAPES) {
      const spec = { format: 'nf4', blockSize } as const;
      const w = weights(rows, cols, 13 * cols + rows);
      const p = quantizeMatrix(w, rows, cols, spec);
      const back = dequantizeMatrix(p);
      const { blocksPerRow } = matrixLayout(spec, rows, cols);
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < cols; c++) {
          const absmax = p.scales[r * blocksPerRow + Math.floor(c / blockSize)];
          const x = w[r * cols + c];
          if (absmax === 0) {
            assert.equal(back[r * cols + c], 0);
            continue;
          }
          const n = Math.fround(x / absmax);
          const distances = NF4_LEVELS.map((level) => Math.abs(n - level));
          const got = back[r * cols + c];
          const code = NF4_LEVELS.findIndex((level) => Math.fround(level * absmax) === got);
          assert.ok(code >= 0, `[${r}, ${c}] ${got} is no level times ${absmax}`);
          assert.equal(distances[code], Math.min(...distances), `[${r}, ${c}] not the nearest level`);
          // The largest gap between levels is 1 − 0.696…, so no value is further than 0.152·absmax away.
          assert.ok(Math.abs(got - x) <= 0.152 * absmax + 2 ** -23 * absmax);
        }
    }
});

test('absmax is the block maximum over real values only; rows never share a block', () => {
  // Row 0 ends in a short block holding only 0.25; row 1 starts with a 4: they must not mix.
  const w = new Float32Array(2 * 10);
  w[9] = 0.25;
  w[10] = 4;
  for (const format of ['int8', 'nf4'] as const) {
    const p = quantizeMatrix(w, 2, 10, { format, blockSize: 8 });
    const scales = Array.from(blockScales(p));
    const expected = format === 'int8' ? [0, Math.fround(0.25 / 127), Math.fround(4 / 127), 0] : [0, 0.25, 4, 0];
    assert.deepEqual(scales, expected, format);
    assert.deepEqual(dequantizeMatrix(p), w, `${format} is exact here`);
  }
});

test('all-zero blocks and all-zero matrices dequantize to zeros, never NaN', () => {
  const specs: BaseFormatSpec[] = [
    { format: 'int8' },
    { format: 'nf4' },
    { format: 'nf4', doubleQuant: true },
    { format: 'f16' },
  ];
  for (const spec of specs) {
    const zeros = new Float32Array(3 * 100);
    zeros[5] = -0;
    const back = dequantizeMatrix(quantizeMatrix(zeros, 3, 100, spec));
    assert.ok(
      back.every((v) => v === 0),
      `${spec.format} zeros`,
    );
    const mixed = weights(3, 100, 5);
    assert.ok(!hasNaN(dequantizeMatrix(quantizeMatrix(mixed, 3, 100, spec))));
  }
});

test('tiny and subnormal values never give NaN', () => {
  const w = Float32Array.from({ length: 64 }, (_, i) => (i % 2 ? -1 : 1) * i * 2 ** -149);
  w[63] = 1e-30;
  for (const spec of [{ format: 'int8' }, { format: 'nf4' }, { format: 'nf4', doubleQuant: true }] as const) {
    const back = dequantizeMatrix(quantizeMatrix(w, 1, 64, { ...spec, blockSize: 8 }));
    assert.ok(!hasNaN(back) && back.every(Number.isFinite), spec.format);
  }
});

test('padding holds the zero code: int8 0, nf4 7 (both nibbles)', () => {
  const w = Float32Array.from({ length: 2 * 10 }, (_, i) => i + 1);
  const int8 = quantizeMatrix(w, 2, 10, { format: 'int8', blockSize: 8 });
  assert.deepEqual(Array.from(int8.data.subarray(10, 16)), [0, 0, 0, 0, 0, 0]);
  const nf4 = quantizeMatrix(w, 2, 10, { format: 'nf4', blockSize: 8 });
  // Row 0 is stream elements 0-15: 10 real, then 6 of padding in bytes 5-7.
  assert.deepEqual(Array.from(nf4.data.subarray(5, 8)), [0x77, 0x77, 0x77]);
  assert.equal(NF4_ZERO_CODE, 7);
  // Row 0, block 0 has absmax 8: w = 1 → n = 0.125 → code 9 (0.1609 is nearer than 0.0796); w = 2 → code 10.
  assert.equal(nf4.data[0], 0x9a, 'element 0 in the high nibble');
  // The word rule of formats.ts: stream element t at bit 4·((t mod 8) XOR 1) of word ⌊t/8⌋.
  const words = int32Words(nf4.data);
  assert.equal((words[0] >>> 4) & 0xf, 9);
  assert.equal(words[0] & 0xf, 10);
});

test('dequantizeRows equals the same rows of dequantizeMatrix, in any order, with repeats', () => {
  const specs: BaseFormatSpec[] = [
    { format: 'f32' },
    { format: 'f16' },
    { format: 'bf16' },
    { format: 'int8' },
    { format: 'nf4' },
    { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 5 },
  ];
  for (const spec of specs)
    for (const [rows, cols] of SHAPES) {
      const p = quantizeMatrix(weights(rows, cols, rows + cols, 0.1), rows, cols, spec);
      const all = dequantizeMatrix(p);
      const order = Array.from({ length: 2 * rows + 1 }, (_, k) => (k * 7 + 3) % rows);
      const some = dequantizeRows(p, Int32Array.from(order));
      order.forEach((r, k) =>
        assert.deepEqual(some.subarray(k * cols, (k + 1) * cols), all.subarray(r * cols, (r + 1) * cols)),
      );
      assert.equal(dequantizeRows(p, []).length, 0);
    }
  const p = quantizeMatrix(new Float32Array(6), 2, 3, { format: 'int8' });
  for (const bad of [2, -1, 0.5, Number.NaN])
    throwsCode(() => dequantizeRows(p, [0, bad]), ErrorCodes.SHAPE, /row index 1 should be an integer in \[0, 1\]/);
});

test('nf4 double quantization: codes are the nearest level for the reconstructed scale, within int8 error', () => {
  const [rows, cols] = [9, 200];
  const w = weights(rows, cols, 99);
  const plain = quantizeMatrix(w, rows, cols, { format: 'nf4' });
  const spec = { format: 'nf4', doubleQuant: true, doubleQuantBlockSize: 7 } as const;
  const p = quantizeMatrix(w, rows, cols, spec);
  assert.equal(p.scales.length, 0);
  const dq = p.doubleQuant!;
  const absmax = plain.scales;
  const restored = blockScales(p);
  assert.equal(restored.length, absmax.length);
  // offset = the float32 mean; each reconstructed scale within half a second-level step of its absmax.
  assert.equal(dq.offset, Math.fround(absmax.reduce((s, a) => s + a, 0) / absmax.length));
  for (let b = 0; b < absmax.length; b++) {
    const step = dq.scales[Math.floor(b / 7)];
    // step/2 from the int8 code, plus three float32 roundings of values no larger than absmax + offset
    const slack = 2 ** -22 * (absmax[b] + dq.offset);
    assert.ok(Math.abs(restored[b] - absmax[b]) <= step / 2 + slack, `block ${b}`);
  }
  const back = dequantizeMatrix(p);
  const { blocksPerRow } = matrixLayout(spec, rows, cols);
  for (let i = 0; i < w.length; i++) {
    const s = restored[Math.floor(i / cols) * blocksPerRow + Math.floor((i % cols) / 64)];
    if (s === 0) continue;
    const n = Math.fround(w[i] / s);
    const best = Math.min(...NF4_LEVELS.map((level) => Math.abs(n - level)));
    const got = NF4_LEVELS.findIndex((level) => Math.fround(level * s) === back[i]);
    assert.ok(got >= 0 && Math.abs(n - NF4_LEVELS[got]) === best, `element ${i}`);
  }
  // The point of it: a byte per block instead of four (here plus a float32 per 7 blocks).
  assert.ok(dq.codes.byteLength + 4 * dq.scales.length + 4 < absmax.byteLength / 2);
});

test('quantizing is deterministic and leaves the input alone', () => {
  const w = weights(4, 150, 3);
  const copy = w.slice();
  for (const spec of [{ format: 'int8' }, { format: 'nf4', doubleQuant: true }, { format: 'bf16' }] as const) {
    const a = quantizeMatrix(w, 4, 150, spec);
    const b = quantizeMatrix(w, 4, 150, spec);
    assert.deepEqual(a, b);
    assert.deepEqual(w, copy);
  }
});

test('refusals: shape and length (SHAPE), non-finite values and values the format cannot hold (NON_FINITE)', () => {
  throwsCode(
    () => quantizeMatrix(new Float32Array(5), 2, 3, { format: 'nf4' }),
    ErrorCodes.SHAPE,
    /Float32Array of rows·cols = 2·3 = 6, got Float32Array\(5\)/,
  );
  throwsCode(
    () => quantizeMatrix(new Float64Array(6) as never, 2, 3, { format: 'nf4' }),
    ErrorCodes.SHAPE,
    /got Float64Array\(6\)/,
  );
  throwsCode(() => quantizeMatrix(new Float32Array(6), 0, 6, { format: 'f32' }), ErrorCodes.SHAPE);
  throwsCode(() => quantizeMatrix(new Float32Array(6), 2, 3, { format: 'nf5' } as never), ErrorCodes.CONFIG);
  for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
    const w = new Float32Array(6);
    w[4] = bad;
    throwsCode(() => quantizeMatrix(w, 2, 3, { format: 'int8' }), ErrorCodes.NON_FINITE, /value \[1, 1\] is/);
  }
  const big = Float32Array.of(1, 65519, 65520);
  assert.equal(dequantizeMatrix(quantizeMatrix(big.subarray(0, 2), 1, 2, { format: 'f16' }))[1], 65504);
  throwsCode(
    () => quantizeMatrix(big, 1, 3, { format: 'f16' }),
    ErrorCodes.NON_FINITE,
    /value \[0, 2\] = 65520 rounds to ±Inf in f16 \(largest finite 65504\)/,
  );
  const huge = Float32Array.of(3.4e38, -3.4028234663852886e38);
  throwsCode(
    () => quantizeMatrix(huge, 1, 2, { format: 'bf16' }),
    ErrorCodes.NON_FINITE,
    /\[0, 0\] = 3.39999.*rounds to ±Inf in bf16/,
  );
  throwsCode(() => quantizeMatrix(huge, 1, 2, { format: 'int8' }), ErrorCodes.NON_FINITE, /would dequantize to ±Inf/);
  // nf4 scales by absmax itself, so even the largest float32 is fine.
  const back = dequantizeMatrix(quantizeMatrix(huge, 1, 2, { format: 'nf4' }));
  assert.deepEqual(Array.from(back), [3.4028234663852886e38, -3.4028234663852886e38]);
});
