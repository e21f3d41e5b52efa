// The independent reference (scripts/reference/gen_quant_fixture.py: its own NF4 table, its own packing,
// exact rational arithmetic) against shared/quant bit for bit: packed bytes, scales, double-quantization
// fields, byte counts and dequantized values, for every format on a 5 × 150 matrix with ties, zeros,
// negative zeros, subnormals and huge values.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  type BaseFormatSpec,
  int32Words,
  matrixLayout,
  packedBytes,
  packedSize,
} from '../../../shared/quant/formats.ts';
import { NF4_LEVEL_BITS } from '../../../shared/quant/nf4.ts';
import { dequantizeMatrix, dequantizeRows, quantizeMatrix } from '../../../shared/quant/quantize.ts';

interface FixtureCase {
  name: string;
  spec: BaseFormatSpec;
  input: string;
  packedBytes: number;
  data: string;
  scales: string[];
  dequantized: string[];
  codes?: number[];
  doubleQuant?: { codes: string; scales: string[]; offset: string };
}
const fixture = JSON.parse(readFileSync(new URL('../../fixtures/quant/formats.json', import.meta.url), 'utf8')) as {
  rows: number;
  cols: number;
  nf4Levels: string[];
  inputs: Record<string, string[]>;
  cases: FixtureCase[];
};
const { rows, cols } = fixture;

const floats = (hex: string[]) => new Float32Array(Uint32Array.from(hex, (h) => Number.parseInt(h, 16)).buffer);
const hexOf = (a: Float32Array) =>
  Array.from(new Uint32Array(Float32Array.from(a).buffer), (b) => b.toString(16).padStart(8, '0'));
const bytesHex = (u: Uint8Array) => Buffer.from(u.buffer, u.byteOffset, u.byteLength).toString('hex');

/** Equal arrays of bit patterns, or a failure naming the first difference (not a 750-line diff). */
function sameBits(actual: string[], expected: string[], what: string, perRow = cols): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const i = actual.findIndex((a, k) => a !== expected[k]);
  if (i >= 0)
    assert.fail(
      `${what}: first difference at ${i} ([${Math.floor(i / perRow)}, ${i % perRow}]): ` +
        `got ${actual[i]}, reference ${expected[i]}`,
    );
}

test('the reference has its own NF4 table, equal to ours', () => {
  assert.deepEqual(
    fixture.nf4Levels.map((h) => Number.parseInt(h, 16)),
    NF4_LEVEL_BITS,
  );
});

test('the fixture covers every format and double quantization', () => {
  const names = fixture.cases.map((c) => c.name);
  for (const f of ['f32', 'f16', 'bf16', 'int8/64', 'nf4/64', 'nf4/64+dq256']) assert.ok(names.includes(f), f);
});

for (const c of fixture.cases) {
  test(`${c.name} (${c.input} input) equals the reference bit for bit`, () => {
    const input = floats(fixture.inputs[c.input]);
    const p = quantizeMatrix(input, rows, cols, c.spec);
    assert.equal(packedBytes(c.spec, rows, cols), c.packedBytes, 'packedBytes');
    assert.equal(packedSize(p), c.packedBytes, 'packedSize');
    if (bytesHex(p.data) !== c.data) {
      const got = bytesHex(p.data);
      const i = [...got].findIndex((ch, k) => ch !== c.data[k]);
      assert.fail(
        `data: first different byte ${i >> 1}: got ${got.slice(i & ~1, (i & ~1) + 8)}…, ` +
          `reference ${c.data.slice(i & ~1, (i & ~1) + 8)}…`,
      );
    }
    sameBits(hexOf(p.scales), c.scales, 'scales', Math.max(1, p.scales.length / rows));
    if (c.doubleQuant) {
      assert.ok(p.doubleQuant, 'carries doubleQuant');
      assert.equal(bytesHex(p.doubleQuant.codes), c.doubleQuant.codes, 'doubleQuant.codes');
      sameBits(hexOf(p.doubleQuant.scales), c.doubleQuant.scales, 'doubleQuant.scales');
      sameBits(hexOf(Float32Array.of(p.doubleQuant.offset)), [c.doubleQuant.offset], 'doubleQuant.offset');
    } else assert.equal(p.doubleQuant, undefined);
    const all = dequantizeMatrix(p);
    sameBits(hexOf(all), c.dequantized, 'dequantized');
    // Rows gathered out of order and repeated are the same bits as the whole matrix's rows.
    const order = [4, 0, 2, 2, 1, 3];
    const gathered = dequantizeRows(p, order);
    sameBits(
      hexOf(gathered),
      order.flatMap((r) => c.dequantized.slice(r * cols, (r + 1) * cols)),
      'dequantizeRows',
    );
  });

  if (c.codes) {
    const codes = c.codes;
    test(`${c.name}: the reference's codes sit in the int32 words where formats.ts says`, () => {
      const p = quantizeMatrix(floats(fixture.inputs[c.input]), rows, cols, c.spec);
      const layout = matrixLayout(c.spec, rows, cols);
      assert.equal(codes.length, rows * layout.rowStride);
      const words = int32Words(p.data);
      const bitsPer = c.spec.format === 'int8' ? 8 : 4;
      for (let t = 0; t < codes.length; t++) {
        const word = words[Math.floor((t * bitsPer) / 32)];
        // int8: bit 8·(t mod 4), sign-extended; nf4: bit 4·((t mod 8) XOR 1) (even t in the high nibble)
        const code = bitsPer === 8 ? (word << (24 - 8 * (t % 4))) >> 24 : (word >>> (4 * ((t % 8) ^ 1))) & 0xf;
        if (code !== codes[t]) assert.fail(`element ${t}: word holds ${code}, reference code ${codes[t]}`);
      }
    });
  }
}
