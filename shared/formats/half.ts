/**
 * float32 ↔ float16 (IEEE binary16) and float32 ↔ bfloat16, on typed arrays of 16-bit patterns.
 * Narrowing rounds to nearest, ties to even; ±0, ±Inf and subnormals come out exact, finite values
 * too large for the narrow type become ±Inf, and NaN stays a quiet NaN.
 *
 *   float32:  sign 1 | exponent 8 (bias 127) | mantissa 23
 *   float16:  sign 1 | exponent 5 (bias 15)  | mantissa 10
 *   bfloat16: the top 16 bits of a float32 (same exponent, 7-bit mantissa)
 */

// One scratch float seen as its bits, so converting a single value allocates nothing.
const scratchFloat = new Float32Array(1);
const scratchBits = new Uint32Array(scratchFloat.buffer);

/** `value >>> shift`, rounded to nearest even on the bits shifted out (1 ≤ shift ≤ 24). */
function shiftRoundEven(value: number, shift: number): number {
  const kept = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

/** float32 bit pattern → float16 bit pattern. */
function halfFromFloatBits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) {
    // Inf stays Inf; NaN keeps its top payload bits and gets the quiet bit, so it never becomes Inf.
    return mantissa === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mantissa >>> 13);
  }
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent <= 0) {
    // Subnormal half: value = m · 2^-24. |x| < 2^-25 (half the smallest subnormal, which is also
    // where float32 zeros and subnormals land) rounds to ±0; 2^-25 itself ties to even, i.e. 0.
    if (halfExponent < -10) return sign;
    // x = (2^23 + mantissa) · 2^(exponent - 150), so m = (2^23 + mantissa) >> (14 - halfExponent).
    // A carry out of the top (m = 0x400) is exactly the smallest normal half: still correct.
    return sign | shiftRoundEven(mantissa | 0x800000, 14 - halfExponent);
  }
  // Adding (not or-ing) the rounded mantissa lets a carry roll into the exponent, up to Inf (0x7c00).
  return sign | ((halfExponent << 10) + shiftRoundEven(mantissa, 13));
}

export function f32ToF16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) out[i] = halfFromFloatBits(bits[i]);
  return out;
}

export function f16ToF32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = (h & 0x8000) << 16;
    const exponent = (h >>> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0)
      out[i] = (sign ? -mantissa : mantissa) * 2 ** -24; // ±0 and subnormals, exact
    else if (exponent === 0x1f)
      outBits[i] = sign | 0x7f800000 | (mantissa << 13); // Inf or NaN (payload kept)
    else outBits[i] = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  return out;
}

/** float32 bit pattern → bfloat16 bit pattern. */
function bfloatFromFloatBits(bits: number): number {
  // NaN: force the quiet bit so dropping the low mantissa bits cannot leave Inf.
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  // Round to nearest even on the low 16 bits. bits ≤ 0xff800000 here, so the sum stays below 2^32;
  // a carry into the exponent is correct, including the largest finite values rounding to Inf.
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

export function f32ToBf16(values: Float32Array): Uint16Array {
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) out[i] = bfloatFromFloatBits(bits[i]);
  return out;
}

export function bf16ToF32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) outBits[i] = halves[i] << 16;
  return out;
}

/** One float32 → its float16 bit pattern (for single values; use f32ToF16 for arrays). */
export function f16Bits(value: number): number {
  scratchFloat[0] = value;
  return halfFromFloatBits(scratchBits[0]);
}

/** One float32 → its bfloat16 bit pattern (for single values; use f32ToBf16 for arrays). */
export function bf16Bits(value: number): number {
  scratchFloat[0] = value;
  return bfloatFromFloatBits(scratchBits[0]);
}
