// float32 ↔ float16 / bfloat16: exact round trips, the relative-error bound of each format,
// special values, and round-half-to-even on hand-computed bit patterns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16Bits, bf16ToF32, f16Bits, f16ToF32, f32ToBf16, f32ToF16 } from '../../../shared/formats/half.ts';
import { Rng } from '../../../shared/rng.ts';

/** A float32 from its bit pattern. */
const fromBits = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0];
const hex = (n: number) => `0x${n.toString(16)}`;
const isHalfNaN = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isBfloatNaN = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
const allPatterns = () => Uint16Array.from({ length: 65536 }, (_, i) => i);

test('every float16 pattern survives f16 → f32 → f16 unchanged (NaNs stay NaN)', () => {
  const patterns = allPatterns();
  const back = f32ToF16(f16ToF32(patterns));
  let nans = 0;
  for (let h = 0; h < 65536; h++) {
    if (isHalfNaN(h)) {
      assert.ok(isHalfNaN(back[h]), `NaN ${hex(h)} came back as ${hex(back[h])}`);
      nans++;
    } else {
      assert.equal(back[h], h, `pattern ${hex(h)} came back as ${hex(back[h])}`);
    }
  }
  assert.equal(nans, 2 * 1023); // both signs, every non-zero mantissa
});

test('every bfloat16 pattern survives bf16 → f32 → bf16 unchanged (NaNs stay NaN)', () => {
  const patterns = allPatterns();
  const back = f32ToBf16(bf16ToF32(patterns));
  for (let h = 0; h < 65536; h++) {
    if (isBfloatNaN(h)) assert.ok(isBfloatNaN(back[h]), `NaN ${hex(h)} came back as ${hex(back[h])}`);
    else assert.equal(back[h], h, `pattern ${hex(h)} came back as ${hex(back[h])}`);
  }
});

test('float16 relative error ≤ 2^-11 over the normal range', () => {
  const rng = new Rng(1);
  // log-uniform magnitudes from the smallest normal 2^-14 to the largest finite 65504, both signs
  const values = Float32Array.from(
    { length: 100_000 },
    () => (rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-14, Math.log2(65504)),
  );
  const back = f16ToF32(f32ToF16(values));
  let worst = 0;
  for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs(back[i] - values[i]) / Math.abs(values[i]));
  assert.ok(worst <= 2 ** -11, `worst relative error ${worst}`);
  assert.ok(worst > 2 ** -12, `worst relative error ${worst} is suspiciously small: is it rounding at all?`);
});

test('bfloat16 relative error ≤ 2^-8 over float32 normal magnitudes', () => {
  const rng = new Rng(2);
  const values = Float32Array.from(
    { length: 100_000 },
    () => (rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-126, 127),
  );
  const back = bf16ToF32(f32ToBf16(values));
  let worst = 0;
  for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs(back[i] - values[i]) / Math.abs(values[i]));
  assert.ok(worst <= 2 ** -8, `worst relative error ${worst}`);
  assert.ok(worst > 2 ** -9, `worst relative error ${worst} is suspiciously small`);
});

test('float16 special values', () => {
  assert.equal(f16Bits(0), 0x0000);
  assert.equal(f16Bits(-0), 0x8000);
  assert.equal(f16Bits(Infinity), 0x7c00);
  assert.equal(f16Bits(-Infinity), 0xfc00);
  assert.ok(isHalfNaN(f16Bits(NaN)));
  // A NaN whose only payload bit is the lowest one: naive truncation would give Inf.
  assert.ok(isHalfNaN(f32ToF16(new Float32Array([fromBits(0x7f800001)]))[0]));
  assert.equal(f16Bits(65504), 0x7bff); // largest finite
  assert.equal(f16Bits(65519), 0x7bff); // below the 65504/65536 midpoint
  assert.equal(f16Bits(65520), 0x7c00); // the midpoint ties to even (0x7c00): overflow to Inf
  assert.equal(f16Bits(-1e6), 0xfc00);
  assert.equal(f16Bits(2 ** -14), 0x0400); // smallest normal
  assert.equal(f16Bits(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f16Bits(-(2 ** -24)), 0x8001);
  assert.equal(f16Bits(1e-10), 0x0000); // underflow to +0 ...
  assert.equal(f16Bits(-1e-10), 0x8000); // ... keeping the sign
  assert.equal(f16Bits(fromBits(0x00000001)), 0x0000); // float32 subnormals are far below float16's

  const decoded = f16ToF32(
    new Uint16Array([0x0000, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x8001]),
  );
  assert.ok(Object.is(decoded[0], 0) && Object.is(decoded[1], -0));
  assert.deepEqual([...decoded.slice(2, 4)], [Infinity, -Infinity]);
  assert.ok(Number.isNaN(decoded[4]));
  assert.deepEqual([...decoded.slice(5)], [65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, -(2 ** -24)]);
});

test('float16 rounds half to even (hand-computed patterns)', () => {
  // Normal range: float32 keeps 23 mantissa bits, float16 10, so 13 bits are dropped and the
  // midpoint is 0x1000 in the float32 mantissa.
  //   1 + 2^-11        = 0x3f801000: kept mantissa 0 (even), dropped 0x1000 = tie → 0x3c00 (1.0)
  //   1 + 3·2^-11      = 0x3f803000: kept mantissa 1 (odd),  dropped 0x1000 = tie → 0x3c02
  //   1 + 2^-11 + 2^-23 = 0x3f801001: just over the tie → up to 0x3c01
  //   2 - 2^-11        = 0x3ffff000: kept 0x3ff (odd), tie → carry into the exponent: 0x4000 (2.0)
  assert.equal(f16Bits(fromBits(0x3f801000)), 0x3c00);
  assert.equal(f16Bits(fromBits(0x3f803000)), 0x3c02);
  assert.equal(f16Bits(fromBits(0x3f801001)), 0x3c01);
  assert.equal(f16Bits(fromBits(0x3ffff000)), 0x4000);
  // Subnormal range, in units of the smallest subnormal u = 2^-24:
  //   0.5u (2^-25) ties between 0 and 1 → 0 (even);  1.5u → 2;  2.5u → 2;  0.75u → 1
  //   1023.5u = 2047·2^-25 ties between 0x03ff (odd) and 0x0400 → 0x0400, the smallest normal
  assert.equal(f16Bits(2 ** -25), 0x0000);
  assert.equal(f16Bits(3 * 2 ** -25), 0x0002);
  assert.equal(f16Bits(5 * 2 ** -25), 0x0002);
  assert.equal(f16Bits(3 * 2 ** -26), 0x0001);
  assert.equal(f16Bits(2047 * 2 ** -25), 0x0400);
});

test('bfloat16 special values and round half to even (hand-computed patterns)', () => {
  assert.equal(bf16Bits(0), 0x0000);
  assert.equal(bf16Bits(-0), 0x8000);
  assert.equal(bf16Bits(Infinity), 0x7f80);
  assert.equal(bf16Bits(-Infinity), 0xff80);
  assert.ok(isBfloatNaN(bf16Bits(NaN)));
  assert.ok(isBfloatNaN(f32ToBf16(new Float32Array([fromBits(0x7f800001)]))[0])); // truncation would give Inf
  assert.ok(isBfloatNaN(f32ToBf16(new Float32Array([fromBits(0xff800001)]))[0]));
  assert.equal(bf16Bits(1e6), 0x4974); // 1e6 = 0x49742400: dropped 0x2400 < 0x8000 → down
  // bfloat16 drops the low 16 bits; the midpoint is 0x8000.
  //   1 + 2^-8 = 0x3f808000: kept 0x3f80 (even), tie → 0x3f80
  //   1 + 3·2^-8 = 0x3f818000: kept 0x3f81 (odd), tie → 0x3f82
  //   0x3f808001: just over the tie → 0x3f81
  //   largest float32 0x7f7fffff: rounds up past the largest bfloat16 0x7f7f → Inf 0x7f80
  //   float32 subnormal 0x00018000: kept 0x0001 (odd), tie → 0x0002
  assert.equal(bf16Bits(fromBits(0x3f808000)), 0x3f80);
  assert.equal(bf16Bits(fromBits(0x3f818000)), 0x3f82);
  assert.equal(bf16Bits(fromBits(0x3f808001)), 0x3f81);
  assert.equal(bf16Bits(fromBits(0x7f7fffff)), 0x7f80);
  assert.equal(bf16Bits(fromBits(0xff7fffff)), 0xff80);
  assert.equal(bf16Bits(fromBits(0x00018000)), 0x0002);

  const decoded = bf16ToF32(new Uint16Array([0x8000, 0x7f80, 0x7fc0, 0x3f82, 0x0001]));
  assert.ok(Object.is(decoded[0], -0));
  assert.equal(decoded[1], Infinity);
  assert.ok(Number.isNaN(decoded[2]));
  assert.equal(decoded[3], 1 + 2 ** -6);
  assert.equal(decoded[4], 2 ** -133); // a float32 subnormal, exact
});

test('array conversions read views at an offset into a larger buffer', () => {
  const buffer = new Float32Array([99, 1.5, -2, 99]);
  const view = buffer.subarray(1, 3);
  assert.deepEqual([...f32ToF16(view)], [0x3e00, 0xc000]);
  assert.deepEqual([...f32ToBf16(view)], [0x3fc0, 0xc000]);
});
