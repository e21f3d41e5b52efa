/**
 * Quantize and dequantize a base weight matrix in the formats of shared/quant/formats.ts, exactly
 * as its header defines them (scripts/reference/gen_quant_fixture.py recomputes the same bits
 * independently in exact rational arithmetic; test/shared/quant/fixture.test.ts compares).
 * Dequantizing a row always runs the same code, so dequantizeRows' rows are bit-identical to
 * dequantizeMatrix's.
 */
import { describe, ErrorCodes, fail } from '../errors.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../formats/half.ts';
import {
  type BaseFormatSpec,
  checkMatrixShape,
  checkPacked,
  type DoubleQuantScales,
  LITTLE_ENDIAN,
  type MatrixLayout,
  matrixLayout,
  type PackedMatrix,
  type ResolvedBaseSpec,
  resolveBaseSpec,
} from './formats.ts';
import { NF4_LEVELS, NF4_ZERO_CODE, nf4Code } from './nf4.ts';

/** Both nibbles NF4_ZERO_CODE: what padding holds. */
const NF4_ZERO_PAIR = (NF4_ZERO_CODE << 4) | NF4_ZERO_CODE;

/**
 * W [rows, cols] (row-major float32, every value finite) in its compact form. Refuses a bad spec
 * (CONFIG), a shape or length that does not match (SHAPE), a non-finite value, or one that would
 * become non-finite in the format (NON_FINITE: f16 beyond ±65504, bf16 beyond its range, int8 with
 * absmax = the largest float32).
 */
export function quantizeMatrix(
  values: Float32Array,
  rows: number,
  cols: number,
  spec: BaseFormatSpec | ResolvedBaseSpec,
): PackedMatrix {
  const s = resolveBaseSpec(spec);
  checkMatrixShape(rows, cols);
  if (!(values instanceof Float32Array) || values.length !== rows * cols)
    fail(
      ErrorCodes.SHAPE,
      `matrix values should be a Float32Array of rows·cols = ${rows}·${cols} = ${rows * cols}, ` +
        `got ${describe(values)}`,
    );
  for (let i = 0; i < values.length; i++)
    if (!Number.isFinite(values[i])) fail(ErrorCodes.NON_FINITE, `matrix value ${at(i, cols)} is ${values[i]}`);
  const layout = matrixLayout(s, rows, cols);
  const empty = new Float32Array(0);
  switch (s.format) {
    case 'f32':
      return { spec: s, rows, cols, data: f32Bytes(values), scales: empty };
    case 'f16':
    case 'bf16':
      return { spec: s, rows, cols, data: halfBytes(values, layout, s.format), scales: empty };
    case 'int8':
      return { spec: s, rows, cols, ...quantizeInt8(values, layout, s.blockSize) };
    case 'nf4':
      return { spec: s, rows, cols, ...quantizeNf4(values, layout, s) };
  }
}

/** W back as float32 [rows, cols], row-major. */
export function dequantizeMatrix(p: PackedMatrix): Float32Array {
  const decodeRow = rowDecoder(p, checkPacked(p));
  const out = new Float32Array(p.rows * p.cols);
  for (let r = 0; r < p.rows; r++) decodeRow(r, out, r * p.cols);
  return out;
}

/**
 * Only the given rows, dequantized, as float32 [rowIndices.length, cols] in the order given
 * (repeats allowed): an embedding lookup gathers its token rows without unpacking the table.
 */
export function dequantizeRows(p: PackedMatrix, rowIndices: ArrayLike<number>): Float32Array {
  const decodeRow = rowDecoder(p, checkPacked(p));
  const out = new Float32Array(rowIndices.length * p.cols);
  for (let k = 0; k < rowIndices.length; k++) {
    const r = rowIndices[k];
    if (!Number.isInteger(r) || r < 0 || r >= p.rows)
      fail(ErrorCodes.SHAPE, `row index ${k} should be an integer in [0, ${p.rows - 1}], got ${describe(r)}`);
    decodeRow(r, out, k * p.cols);
  }
  return out;
}

/**
 * The float32 scale each block is dequantized with, [rows, blocksPerRow] row-major: int8 scales,
 * nf4 absmax, or for nf4 with double quantization their reconstruction (a GPU path uploads these).
 * Empty for f32/f16/bf16.
 */
export function blockScales(p: PackedMatrix): Float32Array {
  const layout = checkPacked(p);
  const dq = p.doubleQuant;
  if (!dq || p.spec.format !== 'nf4' || !p.spec.doubleQuant) return p.scales.slice();
  const out = new Float32Array(p.rows * layout.blocksPerRow);
  for (let b = 0; b < out.length; b++) out[b] = restoredScale(dq, p.spec.doubleQuantBlockSize, b);
  return out;
}

const at = (i: number, cols: number) => `[${Math.floor(i / cols)}, ${i % cols}]`;

function f32Bytes(values: Float32Array): Uint8Array {
  const out = new Uint8Array(4 * values.length);
  if (LITTLE_ENDIAN) new Float32Array(out.buffer).set(values);
  else {
    const view = new DataView(out.buffer);
    for (let i = 0; i < values.length; i++) view.setFloat32(4 * i, values[i], true);
  }
  return out;
}

const HALF = {
  f16: { narrow: f32ToF16, widen: f16ToF32, infinity: 0x7c00, largest: '65504' },
  bf16: { narrow: f32ToBf16, widen: bf16ToF32, infinity: 0x7f80, largest: '3.3895e38' },
};

function halfBytes(values: Float32Array, layout: MatrixLayout, format: 'f16' | 'bf16'): Uint8Array {
  const { rows, cols } = layout;
  const { narrow, infinity, largest } = HALF[format];
  const out = new Uint8Array(layout.dataBytes);
  const halves = LITTLE_ENDIAN ? new Uint16Array(out.buffer, 0, rows * cols) : new Uint16Array(rows * cols);
  // A row at a time, so converting a large matrix needs one extra row, not a second copy of it.
  for (let r = 0; r < rows; r++) {
    const row = narrow(values.subarray(r * cols, (r + 1) * cols));
    for (let c = 0; c < cols; c++)
      if ((row[c] & 0x7fff) === infinity)
        fail(
          ErrorCodes.NON_FINITE,
          `matrix value ${at(r * cols + c, cols)} = ${values[r * cols + c]} rounds to ±Inf in ${format} ` +
            `(largest finite ${largest}); use a wider format`,
        );
    halves.set(row, r * cols);
  }
  if (!LITTLE_ENDIAN) {
    const view = new DataView(out.buffer);
    for (let i = 0; i < halves.length; i++) view.setUint16(2 * i, halves[i], true);
  }
  return out;
}

/** x rounded to the nearest integer, ties to even (Math.round sends ties up, which is asymmetric). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Quantizes src[start, end) as one symmetric int8 block into out[to…] (two's complement bytes;
 * the caller's zeros stand for an all-zero block) and returns the block's float32 scale.
 */
function int8Block(src: Float32Array, start: number, end: number, out: Uint8Array, to: number): number {
  let absmax = 0;
  for (let i = start; i < end; i++) absmax = Math.max(absmax, Math.abs(src[i]));
  const scale = Math.fround(absmax / 127);
  if (scale === 0) return scale;
  for (let i = start; i < end; i++) {
    // Clamping before rounding equals clamping after, as the bounds are integers.
    const q = Math.max(-127, Math.min(127, src[i] / scale));
    out[to + i - start] = roundHalfEven(q) & 0xff;
  }
  return scale;
}

function quantizeInt8(values: Float32Array, layout: MatrixLayout, blockSize: number) {
  const { rows, cols, rowStride, blocksPerRow } = layout;
  const data = new Uint8Array(layout.dataBytes);
  const scales = new Float32Array(rows * blocksPerRow);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < blocksPerRow; j++) {
      const start = r * cols + j * blockSize;
      const end = r * cols + Math.min(cols, (j + 1) * blockSize);
      const scale = int8Block(values, start, end, data, r * rowStride + j * blockSize);
      // Only absmax = the largest float32 gets here: 127·scale then rounds past it.
      if (!Number.isFinite(Math.fround(127 * scale)))
        fail(ErrorCodes.NON_FINITE, `int8 block ${j} of row ${r} would dequantize to ±Inf (absmax ${scale * 127})`);
      scales[r * blocksPerRow + j] = scale;
    }
  return { data, scales };
}

function quantizeNf4(values: Float32Array, layout: MatrixLayout, spec: Extract<ResolvedBaseSpec, { format: 'nf4' }>) {
  const { rows, cols, rowStride, blocksPerRow } = layout;
  const blockSize = spec.blockSize;
  const absmax = new Float32Array(rows * blocksPerRow);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < blocksPerRow; j++) {
      let max = 0;
      const end = r * cols + Math.min(cols, (j + 1) * blockSize);
      for (let i = r * cols + j * blockSize; i < end; i++) max = Math.max(max, Math.abs(values[i]));
      absmax[r * blocksPerRow + j] = max;
    }
  const doubleQuant = spec.doubleQuant ? doubleQuantize(absmax, spec.doubleQuantBlockSize) : undefined;
  const data = new Uint8Array(layout.dataBytes).fill(NF4_ZERO_PAIR);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < blocksPerRow; j++) {
      const b = r * blocksPerRow + j;
      // The codes are chosen against the scale the decoder will multiply by.
      const scale =
        doubleQuant && spec.doubleQuant ? restoredScale(doubleQuant, spec.doubleQuantBlockSize, b) : absmax[b];
      if (!Number.isFinite(scale))
        fail(ErrorCodes.NON_FINITE, `nf4 block ${j} of row ${r}: its double-quantized absmax overflows float32`);
      if (scale === 0) continue; // every code stays NF4_ZERO_CODE
      const end = Math.min(cols, (j + 1) * blockSize);
      for (let c = j * blockSize; c < end; c++) {
        const code = nf4Code(Math.fround(values[r * cols + c] / scale));
        const t = r * rowStride + c;
        const byte = t >> 1;
        data[byte] = t & 1 ? (data[byte] & 0xf0) | code : (data[byte] & 0x0f) | (code << 4);
      }
    }
  return doubleQuant ? { data, scales: new Float32Array(0), doubleQuant } : { data, scales: absmax };
}

function doubleQuantize(absmax: Float32Array, groupSize: number): DoubleQuantScales {
  const n = absmax.length;
  let sum = 0;
  for (let b = 0; b < n; b++) sum += absmax[b];
  const offset = Math.fround(sum / n);
  const centered = new Float32Array(n);
  for (let b = 0; b < n; b++) centered[b] = absmax[b] - offset; // the store rounds to float32
  const codes = new Uint8Array(Math.ceil(n / 4) * 4);
  const scales = new Float32Array(Math.ceil(n / groupSize));
  for (let g = 0; g < scales.length; g++)
    scales[g] = int8Block(centered, g * groupSize, Math.min(n, (g + 1) * groupSize), codes, g * groupSize);
  return { codes, scales, offset };
}

function restoredScale(dq: DoubleQuantScales, groupSize: number, b: number): number {
  const code = (dq.codes[b] << 24) >> 24;
  return Math.fround(Math.fround(code * dq.scales[Math.floor(b / groupSize)]) + dq.offset);
}

type RowDecoder = (row: number, out: Float32Array, at: number) => void;

/** One function that writes row r's float32 values to out[at, at + cols). */
function rowDecoder(p: PackedMatrix, layout: MatrixLayout): RowDecoder {
  const { cols, rowStride, blocksPerRow } = layout;
  const data = p.data;
  const spec = p.spec;
  switch (spec.format) {
    case 'f32': {
      if (LITTLE_ENDIAN && data.byteOffset % 4 === 0) {
        const floats = new Float32Array(data.buffer, data.byteOffset, p.rows * cols);
        return (r, out, to) => out.set(floats.subarray(r * cols, (r + 1) * cols), to);
      }
      const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
      return (r, out, to) => {
        for (let c = 0; c < cols; c++) out[to + c] = view.getFloat32(4 * (r * cols + c), true);
      };
    }
    case 'f16':
    case 'bf16': {
      const widen = HALF[spec.format].widen;
      if (LITTLE_ENDIAN && data.byteOffset % 2 === 0) {
        const halves = new Uint16Array(data.buffer, data.byteOffset, p.rows * cols);
        return (r, out, to) => out.set(widen(halves.subarray(r * cols, (r + 1) * cols)), to);
      }
      const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
      return (r, out, to) => {
        const row = Uint16Array.from({ length: cols }, (_, c) => view.getUint16(2 * (r * cols + c), true));
        out.set(widen(row), to);
      };
    }
    case 'int8': {
      const { blockSize } = spec;
      return (r, out, to) => {
        for (let j = 0; j < blocksPerRow; j++) {
          const scale = p.scales[r * blocksPerRow + j];
          const end = Math.min(cols, (j + 1) * blockSize);
          for (let c = j * blockSize; c < end; c++) out[to + c] = ((data[r * rowStride + c] << 24) >> 24) * scale;
        }
      };
    }
    case 'nf4': {
      const { blockSize } = spec;
      const dq = p.doubleQuant;
      const dqBlock = spec.doubleQuant ? spec.doubleQuantBlockSize : 0;
      return (r, out, to) => {
        for (let j = 0; j < blocksPerRow; j++) {
          const b = r * blocksPerRow + j;
          const scale = dq ? restoredScale(dq, dqBlock, b) : p.scales[b];
          const end = Math.min(cols, (j + 1) * blockSize);
          for (let c = j * blockSize; c < end; c++) {
            const t = r * rowStride + c;
            const byte = data[t >> 1];
            out[to + c] = NF4_LEVELS[t & 1 ? byte & 0x0f : byte >> 4] * scale;
          }
        }
      };
    }
  }
}
