/**
 * The 16 NF4 (4-bit NormalFloat) levels of QLoRA (Dettmers et al. 2023, "QLoRA: Efficient
 * Finetuning of Quantized LLMs", arXiv:2305.14314, appendix E), as bitsandbytes ships them:
 * `get_4bit_type('nf4')` in bitsandbytes/functional.py and `nf4_dequantization_lut` in
 * csrc/kernels.cu (generated there by `create_normal_map(offset=0.9677083, use_extra_value=True)`:
 * quantiles of N(0, 1) scaled to [-1, 1], with an exact 0 and 8 levels above it, 7 below).
 *
 *   code  level (decimal as published)   float32 bits
 *    0    -1.0                             0xbf800000
 *    1    -0.6961928009986877              0xbf3239b1
 *    2    -0.5250730514526367              0xbf066b30
 *    3    -0.39491748809814453             0xbeca32a0
 *    4    -0.28444138169288635             0xbe91a24d
 *    5    -0.18477343022823334             0xbe3d353f
 *    6    -0.09105003625154495             0xbdba7871
 *    7     0.0                             0x00000000
 *    8     0.07958029955625534             0x3da2faff
 *    9     0.16093020141124725             0x3e24cae3
 *   10     0.24611230194568634             0x3e7c04dd
 *   11     0.33791524171829224             0x3ead033a
 *   12     0.44070982933044434             0x3ee1a4b8
 *   13     0.5626170039176941              0x3f1007ab
 *   14     0.7229568362236023              0x3f3913b3
 *   15     1.0                             0x3f800000
 *
 * Each published decimal is the shortest round-trip form of a float32, so the bits are exact, not
 * a re-rounding (test/shared/quant/nf4.test.ts checks both columns against each other).
 */

/** The levels' float32 bit patterns, by code (ascending, so code order is value order). */
export const NF4_LEVEL_BITS: readonly number[] = [
  0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff,
  0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];

// A Float32Array over a Uint32Array's buffer reads the same bits back on either endianness.
const levels = new Float32Array(Uint32Array.from(NF4_LEVEL_BITS).buffer);

/** The 16 levels as float32 values, by code. */
export const NF4_LEVELS: readonly number[] = Array.from(levels);

/** The code of the level 0.0 (what a zero, an all-zero block and row padding get). */
export const NF4_ZERO_CODE = 7;

/**
 * The 15 decision points between neighbouring levels, (L[i] + L[i+1]) / 2, as float64.
 * Neighbours are float32 whose exponents differ by at most 1 (or one of them is 0), so their sum
 * needs at most 26 significant bits: every midpoint is exact in float64, and comparing a float32
 * against it is an exact comparison with the true midpoint.
 */
export const NF4_MIDPOINTS: readonly number[] = NF4_LEVELS.slice(1).map((upper, i) => (NF4_LEVELS[i] + upper) / 2);

/**
 * The code of the level nearest to `normalized` (a float32, normally w / absmax in [-1, 1]).
 * A value exactly on a midpoint takes the lower code, the smaller level: bitsandbytes' CUDA
 * decision tree (`x > midpoint` picks the upper code) and its torch `bucketize` do the same. Six
 * midpoints are float32 numbers themselves, so such ties really occur. Values beyond ±1 (and ±Inf)
 * get code 15 or 0, the nearest end.
 */
export function nf4Code(normalized: number): number {
  // Binary search for the number of midpoints strictly below the value: 4 comparisons.
  let lo = 0;
  let hi = 15;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (normalized > NF4_MIDPOINTS[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
