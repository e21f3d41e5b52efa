/**
 * Formats for a frozen base weight matrix W [rows, cols] (Hugging Face layout [out, in]), for
 * workers that must hold the base model in little memory (QLoRA-style: the base stays compact and
 * frozen, only the LoRA factors train). This module fixes what each format stores and how many
 * bytes it takes; shared/quant/quantize.ts converts, exactly as written here.
 *
 *   format  stores per value       scales                                  bytes (rows r, cols c)
 *   f32     float32                —                                       4·r·c
 *   f16     IEEE binary16          —                                       2·r·c, rounded up to 4
 *   bf16    bfloat16               —                                       2·r·c, rounded up to 4
 *   int8    int8 code              float32 per block                       r·k·B + 4·r·k
 *   nf4     4-bit code             float32 absmax per block                r·k·B/2 + 4·r·k
 *   nf4+dq  4-bit code             int8 per block, float32 per dq block,   r·k·B/2 + ⌈r·k/4⌉·4
 *                                  one float32 offset                        + 4·⌈r·k/D⌉ + 4
 *   (B = blockSize, k = ⌈c/B⌉ blocks per row, D = doubleQuantBlockSize)
 *
 * Blocks run along a row and never cross rows: row i, block j covers columns [j·B, (j+1)·B), and
 * the last block of a row is padded to B values (int8 code 0, NF4 code 7, both decoding to 0), so
 * every row starts on a 32-bit word and has the same stride, and a block's scale is
 * scales[i·k + j]. Real models have c a multiple of 64, where padding costs nothing.
 *
 * f16 / bf16: round to nearest, ties to even, from the float32 value (shared/formats/half.ts);
 * dequantization widens exactly. A finite value that would round to ±Inf (|x| ≥ 65520 for f16,
 * ≥ 2^128·(1 − 2^-9) for bf16) is refused rather than stored as Inf.
 *
 * int8 (symmetric, per-block absmax): for each block, absmax = max|w| over its real values,
 *   scale = fl32(absmax / 127)
 *   code  = clamp(roundHalfEven(w / scale), −127, 127)       (0 for the whole block if scale = 0)
 *   w'    = fl32(code · scale)
 * The quotient w / scale is taken in float64; for float32 w and scale it is never on the wrong
 * side of a half-integer, so the code is the integer nearest the exact quotient, and a value
 * exactly halfway (w = (k + ½)·scale) goes to the even k on both signs (symmetric, unlike
 * Math.round). Hence |w − code·scale| ≤ scale/2 whenever scale is a normal float32 (absmax ≥
 * 127·2^-126); w' adds one float32 rounding of the product. Code −128 is never produced.
 *
 * nf4 (QLoRA / bitsandbytes NormalFloat, levels L in shared/quant/nf4.ts): for each block,
 * absmax = max|w| over its real values (a float32, exact), and with s the block's scale (absmax,
 * or its double-quantized reconstruction below)
 *   n    = fl32(w / s)
 *   code = the index of the level nearest n; exactly between two levels, the lower code
 *          (as bitsandbytes' `x > midpoint` tree); 7 (the level 0) for every value when s = 0
 *   w'   = fl32(L[code] · s)
 * So w' is the level nearest w/s, times s: |w − w'| ≤ s·(widest gap between levels)/2 ≈ 0.152·s
 * (between −1 and −0.696), plus the two float32 roundings.
 *
 * nf4 double quantization (QLoRA §3 "Double Quantization"; default off): the r·k block absmax
 * values a[b] (row-major, b = i·k + j) are themselves quantized, after centring on their mean:
 *   offset = fl32(fl64Σ a[b] / (r·k))       (float64 sum in order b = 0, 1, …; then one division)
 *   c[b]   = fl32(a[b] − offset)
 *   then c is quantized as int8 above, in blocks of D consecutive b (across rows; the last one
 *   may be short): scale2[g] = fl32(max|c| / 127), code2[b] = clamp(roundHalfEven(c[b]/scale2), ±127)
 *   s[b]   = fl32(fl32(code2[b] · scale2[⌊b/D⌋]) + offset)    (the scale the decoder uses)
 * and the 4-bit codes are chosen against s[b], not a[b], so w' is still the nearest level times the
 * scale the decoder actually has. This differs from bitsandbytes' nested quantization in two ways:
 * bitsandbytes quantizes c with its 8-bit dynamic (tree) map rather than linear int8, and keeps the
 * 4-bit codes it chose against a[b]. A pathological spread of absmax values can make s[b] small,
 * zero or negative; the formulas still hold (n may then exceed ±1 and takes the end code).
 *
 * Packed layout. `data` holds the values or codes as little-endian bytes, a whole number of 32-bit
 * words, so it can go into a tfjs int32 tensor as is (tfjs has no uint8 dtype): `int32Words(data)`.
 * Element e of row i sits at stream index t = i·stride + e (stride = c for f32/f16/bf16, k·B for
 * int8/nf4):
 *   f32          bytes 4t..4t+3: the float32, little-endian
 *   f16 / bf16   bytes 2t, 2t+1: the 16-bit pattern, little-endian; the last word may have 2 bytes of padding
 *   int8         byte t: the code as two's complement
 *   nf4          byte ⌊t/2⌋: even t in the high nibble, odd t in the low nibble (bitsandbytes' order:
 *                with c a multiple of B, a bitsandbytes NF4 weight without nested quantization has
 *                this very layout, bytes and absmax alike)
 * In int32 word w = ⌊t·bits/32⌋ the element sits at bit 8·(t mod 4) for int8, 16·(t mod 2) for
 * f16/bf16, and 4·((t mod 8) XOR 1) for nf4. The double-quantization codes are int8 bytes in
 * the same way, padded with zeros to a whole word.
 *
 * Determinism: every step is an IEEE operation on float32 or float64 values followed by at most one
 * rounding to float32 (fl32 = Math.fround). For +, −, ×, ÷ of two float32s, rounding the float64
 * result to float32 gives the correctly rounded float32 result (float64 has more than 2·24 + 2
 * bits), so JS, a C float or Python's struct.pack('<f', …) all produce the same bits; the one
 * float64-only step, the double-quantization mean, is a fixed sequence of float64 operations.
 * Every function is pure; outputs are fresh arrays except the word/byte views of int32Words and
 * wordBytes, which copy only where a view would read differently (big-endian) or cannot exist (unaligned).
 */
import { describe, ErrorCodes, fail } from '../errors.ts';

export const BASE_FORMATS = ['f32', 'f16', 'bf16', 'int8', 'nf4'] as const;
export type BaseFormat = (typeof BASE_FORMATS)[number];

/** A base format and its options as a caller or a config file gives them (defaults below). */
export interface BaseFormatSpec {
  format: BaseFormat;
  /** int8 and nf4 only: values per scale along a row; a multiple of 4 (int8) or 8 (nf4); default 64 */
  blockSize?: number;
  /** nf4 only: quantize the block absmax values to int8 as well (QLoRA double quantization); default false */
  doubleQuant?: boolean;
  /** nf4 with doubleQuant only: block absmax values per second-level scale; default 256 */
  doubleQuantBlockSize?: number;
}

/** A checked spec with every default filled in. */
export type ResolvedBaseSpec =
  | { readonly format: 'f32' | 'f16' | 'bf16' }
  | { readonly format: 'int8'; readonly blockSize: number }
  | { readonly format: 'nf4'; readonly blockSize: number; readonly doubleQuant: false }
  | {
      readonly format: 'nf4';
      readonly blockSize: number;
      readonly doubleQuant: true;
      readonly doubleQuantBlockSize: number;
    };

/** QLoRA's and bitsandbytes' block size for NF4; the same for int8 (the wire codec's default too). */
export const DEFAULT_BASE_BLOCK = 64;
/** QLoRA's second-level block size. */
export const DEFAULT_DOUBLE_QUANT_BLOCK = 256;
/** Larger blocks save almost nothing (4 bytes per block) and cost accuracy. */
export const MAX_BASE_BLOCK = 1 << 16;

const SPEC_FIELDS = ['format', 'blockSize', 'doubleQuant', 'doubleQuantBlockSize'];

/**
 * Checks a spec and fills its defaults. Each bad field fails with ErrorCodes.CONFIG, naming the
 * field (as `${what}.field`), the value and what was expected. A field that does not apply to the
 * format (blockSize for f16, doubleQuant for int8) is refused too, so a typo'd or misplaced option
 * never silently does nothing.
 */
export function resolveBaseSpec(spec: unknown, what = 'base format'): ResolvedBaseSpec {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec))
    fail(ErrorCodes.CONFIG, `${what} should be an object like { format: 'nf4' }, got ${describe(spec)}`);
  const raw = spec as Record<string, unknown>;
  for (const key of Object.keys(raw))
    if (!SPEC_FIELDS.includes(key))
      fail(
        ErrorCodes.CONFIG,
        `${what} has an unknown field ${JSON.stringify(key)}; expected ${SPEC_FIELDS.join(', ')}`,
      );
  if (typeof raw.format !== 'string' || !(BASE_FORMATS as readonly string[]).includes(raw.format))
    fail(ErrorCodes.CONFIG, `${what}.format should be one of ${BASE_FORMATS.join(', ')}, got ${describe(raw.format)}`);
  const format = raw.format as BaseFormat;
  const notFor = (field: string, applies: string) => {
    if (raw[field] !== undefined)
      fail(ErrorCodes.CONFIG, `${what}.${field} applies only to ${applies}, got ${describe(raw[field])} for ${format}`);
  };
  if (format !== 'nf4') {
    notFor('doubleQuant', 'nf4');
    notFor('doubleQuantBlockSize', 'nf4 with doubleQuant: true');
  }
  if (format === 'f32' || format === 'f16' || format === 'bf16') {
    notFor('blockSize', 'int8 and nf4');
    return { format };
  }
  // A block of whole 32-bit words: 4 int8 codes or 8 NF4 codes per word.
  const multiple = format === 'int8' ? 4 : 8;
  const blockSize = raw.blockSize ?? DEFAULT_BASE_BLOCK;
  if (!isIntegerIn(blockSize, multiple, MAX_BASE_BLOCK) || blockSize % multiple !== 0)
    fail(
      ErrorCodes.CONFIG,
      `${what}.blockSize should be a multiple of ${multiple} in [${multiple}, ${MAX_BASE_BLOCK}] for ${format}, ` +
        `got ${describe(blockSize)}`,
    );
  if (format === 'int8') return { format, blockSize };
  const doubleQuant = raw.doubleQuant ?? false;
  if (typeof doubleQuant !== 'boolean')
    fail(ErrorCodes.CONFIG, `${what}.doubleQuant should be true or false, got ${describe(doubleQuant)}`);
  if (!doubleQuant) {
    notFor('doubleQuantBlockSize', 'nf4 with doubleQuant: true');
    return { format, blockSize, doubleQuant };
  }
  const doubleQuantBlockSize = raw.doubleQuantBlockSize ?? DEFAULT_DOUBLE_QUANT_BLOCK;
  if (!isIntegerIn(doubleQuantBlockSize, 1, MAX_BASE_BLOCK))
    fail(
      ErrorCodes.CONFIG,
      `${what}.doubleQuantBlockSize should be an integer in [1, ${MAX_BASE_BLOCK}], ` +
        `got ${describe(doubleQuantBlockSize)}`,
    );
  return { format, blockSize, doubleQuant, doubleQuantBlockSize };
}

function isIntegerIn(value: unknown, min: number, max: number): value is number {
  return Number.isInteger(value) && (value as number) >= min && (value as number) <= max;
}

/** A short name for logs and reports: f16, int8/64, nf4/64, nf4/64+dq256. */
export function describeBaseSpec(spec: BaseFormatSpec | ResolvedBaseSpec): string {
  const s = resolveBaseSpec(spec);
  if (s.format === 'int8') return `int8/${s.blockSize}`;
  if (s.format === 'nf4') return `nf4/${s.blockSize}${s.doubleQuant ? `+dq${s.doubleQuantBlockSize}` : ''}`;
  return s.format;
}

/** Where everything of one packed matrix lives, and how big it is (the table at the top). */
export interface MatrixLayout {
  readonly rows: number;
  readonly cols: number;
  /** values stored per row: cols for f32/f16/bf16, blocksPerRow · blockSize for int8/nf4 */
  readonly rowStride: number;
  /** 0 for f32/f16/bf16 */
  readonly blocksPerRow: number;
  /** bytes of `data` (a multiple of 4) */
  readonly dataBytes: number;
  /** float32 scales in `scales`: rows · blocksPerRow for int8 and nf4 without double quantization, else 0 */
  readonly scaleCount: number;
  /** nf4 with double quantization: bytes of its int8 codes (rows · blocksPerRow, rounded up to 4), else 0 */
  readonly dqCodeBytes: number;
  /** nf4 with double quantization: its float32 scales, else 0 */
  readonly dqScaleCount: number;
  /** every byte of the compact form: data, scales, and the double quantization's codes, scales and offset */
  readonly totalBytes: number;
}

const roundUp4 = (n: number) => Math.ceil(n / 4) * 4;

/** Checks a matrix shape (ErrorCodes.SHAPE): both dimensions positive integers. */
export function checkMatrixShape(rows: unknown, cols: unknown): void {
  for (const [name, value] of [
    ['rows', rows],
    ['cols', cols],
  ] as const)
    if (!Number.isSafeInteger(value) || (value as number) < 1)
      fail(ErrorCodes.SHAPE, `matrix ${name} should be a positive integer, got ${describe(value)}`);
}

export function matrixLayout(spec: BaseFormatSpec | ResolvedBaseSpec, rows: number, cols: number): MatrixLayout {
  const s = resolveBaseSpec(spec);
  checkMatrixShape(rows, cols);
  const base = { rows, cols, dqCodeBytes: 0, dqScaleCount: 0 };
  if (s.format !== 'int8' && s.format !== 'nf4') {
    const dataBytes = s.format === 'f32' ? 4 * rows * cols : roundUp4(2 * rows * cols);
    return { ...base, rowStride: cols, blocksPerRow: 0, dataBytes, scaleCount: 0, totalBytes: dataBytes };
  }
  const blocksPerRow = Math.ceil(cols / s.blockSize);
  const rowStride = blocksPerRow * s.blockSize;
  const blocks = rows * blocksPerRow;
  const dataBytes = s.format === 'int8' ? rows * rowStride : (rows * rowStride) / 2;
  if (s.format === 'nf4' && s.doubleQuant) {
    const dqCodeBytes = roundUp4(blocks);
    const dqScaleCount = Math.ceil(blocks / s.doubleQuantBlockSize);
    const totalBytes = dataBytes + dqCodeBytes + 4 * dqScaleCount + 4;
    return { ...base, rowStride, blocksPerRow, dataBytes, scaleCount: 0, dqCodeBytes, dqScaleCount, totalBytes };
  }
  return { ...base, rowStride, blocksPerRow, dataBytes, scaleCount: blocks, totalBytes: dataBytes + 4 * blocks };
}

/**
 * Exact bytes of a [rows, cols] matrix in this format: what it occupies in memory packed and what
 * a download of it carries (padding included; object and header overhead not).
 */
export function packedBytes(spec: BaseFormatSpec | ResolvedBaseSpec, rows: number, cols: number): number {
  return matrixLayout(spec, rows, cols).totalBytes;
}

/** A double-quantized set of NF4 block scales (see the top of this file). */
export interface DoubleQuantScales {
  /** one int8 code (two's complement byte) per block, row-major, zero-padded to a whole word */
  readonly codes: Uint8Array;
  /** one float32 scale per doubleQuantBlockSize codes */
  readonly scales: Float32Array;
  /** the float32 mean subtracted from the block absmax values before quantizing them */
  readonly offset: number;
}

/** A matrix in its compact form. */
export interface PackedMatrix {
  readonly spec: ResolvedBaseSpec;
  readonly rows: number;
  readonly cols: number;
  /** values or codes as little-endian bytes, a whole number of words (layout at the top) */
  readonly data: Uint8Array;
  /** int8 scales or nf4 absmax, [rows, blocksPerRow] row-major; empty for f32/f16/bf16 and nf4+dq */
  readonly scales: Float32Array;
  /** nf4 with double quantization only */
  readonly doubleQuant?: DoubleQuantScales;
}

/** Bytes a packed matrix holds (equals packedBytes(spec, rows, cols) for every valid one). */
export function packedSize(p: PackedMatrix): number {
  const dq = p.doubleQuant;
  return p.data.byteLength + p.scales.byteLength + (dq ? dq.codes.byteLength + dq.scales.byteLength + 4 : 0);
}

/**
 * Checks that a packed matrix (perhaps received or read from disk) is whole: its spec, shape and
 * every array's length agree with the layout (ErrorCodes.SHAPE otherwise). Returns its layout.
 */
export function checkPacked(p: PackedMatrix): MatrixLayout {
  const layout = matrixLayout(p.spec, p.rows, p.cols);
  const expect = (what: string, actual: unknown, length: number, type: string) => {
    const ok = type === 'Uint8Array' ? actual instanceof Uint8Array : actual instanceof Float32Array;
    if (!ok || (actual as Uint8Array | Float32Array).length !== length)
      fail(
        ErrorCodes.SHAPE,
        `packed ${describeBaseSpec(p.spec)} [${p.rows}, ${p.cols}] ${what} should be a ${type} of ${length}, ` +
          `got ${describe(actual)}`,
      );
  };
  expect('data', p.data, layout.dataBytes, 'Uint8Array');
  expect('scales', p.scales, layout.scaleCount, 'Float32Array');
  const dq = p.doubleQuant;
  const wantsDq = layout.dqCodeBytes > 0;
  if (wantsDq !== (dq !== undefined))
    fail(ErrorCodes.SHAPE, `packed ${describeBaseSpec(p.spec)} should ${wantsDq ? '' : 'not '}carry doubleQuant`);
  if (dq) {
    expect('doubleQuant.codes', dq.codes, layout.dqCodeBytes, 'Uint8Array');
    expect('doubleQuant.scales', dq.scales, layout.dqScaleCount, 'Float32Array');
    if (typeof dq.offset !== 'number' || Math.fround(dq.offset) !== dq.offset)
      fail(ErrorCodes.SHAPE, `packed doubleQuant.offset should be a float32 number, got ${describe(dq.offset)}`);
  }
  return layout;
}

/** Whether this platform stores typed-array elements little-endian (every mainstream one does). */
export const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * The bytes as little-endian int32 words, for a tfjs int32 tensor. A view sharing the bytes' memory
 * where possible (little-endian platform, 4-aligned offset); a copy otherwise.
 */
export function int32Words(bytes: Uint8Array): Int32Array {
  if (bytes.byteLength % 4 !== 0)
    fail(ErrorCodes.SHAPE, `int32 words need a multiple of 4 bytes, got ${bytes.byteLength}`);
  if (LITTLE_ENDIAN && bytes.byteOffset % 4 === 0)
    return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Int32Array.from({ length: bytes.byteLength / 4 }, (_, i) => view.getInt32(4 * i, true));
}

/** The inverse of int32Words: the words' little-endian bytes (a view where possible, else a copy). */
export function wordBytes(words: Int32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
  const out = new Uint8Array(words.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < words.length; i++) view.setInt32(4 * i, words[i], true);
  return out;
}
