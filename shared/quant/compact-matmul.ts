/**
 * Products with a frozen matrix W [rows, cols] held in a compact format (shared/quant/formats.ts),
 * dequantized on the fly a small tile at a time: the two a LoRA step needs,
 *   forward   y  = x · Wᵀ   x (n, cols) → y (n, rows)
 *   backward  dx = dy · W   dy (n, rows) → dx (n, cols)
 * and the embedding lookup (rows of W by index). W is never widened whole: a product walks the
 * inner dimension in chunks of PANEL_DEPTH and the output in panels of 8 columns, dequantizes each
 * (depth × 8) tile of W into a 32 KiB-at-most buffer (in the layout the micro-kernel reads: 8
 * consecutive floats per step along the inner dimension) and hands it to the micro-kernel, which adds
 * the tile's product into the output. The dequantized values are exactly dequantizeMatrix's.
 *
 * Summation order is fixed: each output element is a sum over the inner dimension in index order,
 * one float32 multiply and one float32 add per term (no FMA), whatever the tile sizes, the number of
 * rows n, and the kernel (the WebAssembly SIMD one, kernels/c/compact-gemm.c, or the JavaScript
 * one here): every backend that runs these kernels gives the same bits, and a row's result never
 * depends on the other rows.
 */
import { ErrorCodes, fail } from '../errors.ts';
import { bf16ToF32, f16ToF32 } from '../formats/half.ts';
import type { MatrixLayout, ResolvedBaseSpec } from './formats.ts';
import { NF4_LEVELS } from './nf4.ts';

/** Inner-dimension values per tile: a (256 × 8) float32 tile is 8 KiB, at home in L1. */
export const PANEL_DEPTH = 256;
/** Output columns per panel: the micro-kernel's register block is 4 rows × 8 columns. */
export const PANEL_WIDTH = 8;

/** A compact matrix as the kernels read it: views of its packed bytes and its block scales. */
export interface CompactView {
  readonly spec: ResolvedBaseSpec;
  readonly layout: MatrixLayout;
  /** the packed values or codes (formats.ts), 4-byte aligned */
  readonly data: Uint8Array;
  /** the float32 scale of each block, [rows, blocksPerRow] (blockScales); empty for f32/f16/bf16 */
  readonly scales: Float32Array;
}

/**
 * c[i·ldc + j] = (accumulate ? c[i·ldc + j] : 0) + Σ_p a[i·lda + p] · bp[p·8 + j], for i < m and
 * j < 8, offsets in floats into one memory; the sum over p in order, multiply then add.
 */
export type PanelKernel = (
  a: number,
  bp: number,
  c: number,
  m: number,
  k: number,
  lda: number,
  ldc: number,
  accumulate: boolean,
) => void;

/** The reference micro-kernel in JavaScript (the cpu backend's): each product and sum rounded to float32. */
export function panelKernelJs(f: Float32Array): PanelKernel {
  return (a, bp, c, m, k, lda, ldc, accumulate) => {
    for (let i = 0; i < m; i++)
      for (let j = 0; j < PANEL_WIDTH; j++) {
        let s = accumulate ? f[c + i * ldc + j] : 0;
        for (let p = 0; p < k; p++) s = Math.fround(s + Math.fround(f[a + i * lda + p] * f[bp + p * PANEL_WIDTH + j]));
        f[c + i * ldc + j] = s;
      }
  };
}

let f16Table: Float32Array | undefined;
let bf16Table: Float32Array | undefined;
/** Every 16-bit pattern widened (256 KiB each, made on first use): decoding is then one lookup. */
function halfTable(format: 'f16' | 'bf16'): Float32Array {
  const all = () => Uint16Array.from({ length: 65536 }, (_, i) => i);
  if (format === 'f16') return (f16Table ??= f16ToF32(all()));
  return (bf16Table ??= bf16ToF32(all()));
}

const NF4 = Float32Array.from(NF4_LEVELS);

/** out[at + e·stride] = W[row, col + e] for e < count: the decoder one tile row or column at a time. */
type RunDecoder = (row: number, col: number, count: number, out: Float32Array, at: number, stride: number) => void;

/** The run decoder of a view, by format. Values equal quantize.ts's dequantizeMatrix bit for bit. */
export function runDecoder(v: CompactView): RunDecoder {
  const { cols, rowStride, blocksPerRow } = v.layout;
  const { data, scales, spec } = v;
  switch (spec.format) {
    case 'f32': {
      const floats = new Float32Array(data.buffer, data.byteOffset, v.layout.rows * cols);
      return (row, col, count, out, at, stride) => {
        const from = row * cols + col;
        if (stride === 1) out.set(floats.subarray(from, from + count), at);
        else for (let e = 0; e < count; e++) out[at + e * stride] = floats[from + e];
      };
    }
    case 'f16':
    case 'bf16': {
      const halves = new Uint16Array(data.buffer, data.byteOffset, v.layout.rows * cols);
      const table = halfTable(spec.format);
      return (row, col, count, out, at, stride) => {
        const from = row * cols + col;
        for (let e = 0; e < count; e++) out[at + e * stride] = table[halves[from + e]];
      };
    }
    case 'int8': {
      const codes = new Int8Array(data.buffer, data.byteOffset, data.byteLength);
      const block = spec.blockSize;
      return (row, col, count, out, at, stride) => {
        const end = col + count;
        for (let c = col; c < end; ) {
          const j = Math.floor(c / block);
          const scale = scales[row * blocksPerRow + j];
          const stop = Math.min(end, (j + 1) * block);
          const base = row * rowStride;
          for (; c < stop; c++) out[at + (c - col) * stride] = codes[base + c] * scale;
        }
      };
    }
    case 'nf4': {
      const block = spec.blockSize;
      return (row, col, count, out, at, stride) => {
        const end = col + count;
        for (let c = col; c < end; ) {
          const j = Math.floor(c / block);
          const scale = scales[row * blocksPerRow + j];
          const stop = Math.min(end, (j + 1) * block);
          const base = row * rowStride;
          for (; c < stop; c++) {
            const t = base + c;
            const byte = data[t >> 1];
            out[at + (c - col) * stride] = NF4[t & 1 ? byte & 0x0f : byte >> 4] * scale;
          }
        }
      };
    }
  }
}

/** Where the operands of one product sit, as float offsets into one memory `f`. */
export interface ProductArena {
  f: Float32Array;
  /** the left operand (n, inner), row-major */
  x: number;
  /** the result (n, outer), row-major */
  out: number;
  /** PANEL_DEPTH · PANEL_WIDTH floats for a tile */
  panel: number;
  /** n · PANEL_WIDTH floats for the last, narrower panel's result */
  tail: number;
}

/** Floats of scratch a product of n rows needs in its arena: the panel, then the tail. */
export const scratchFloats = (n: number) => PANEL_WIDTH * (PANEL_DEPTH + n);
/** Where the tail starts in the scratch (after the panel). */
export const TAIL_OFFSET = PANEL_DEPTH * PANEL_WIDTH;

/**
 * out = x·Wᵀ (transposed false: x (n, cols) → (n, rows)) or out = x·W (transposed true: x (n, rows)
 * → (n, cols)), W given by its view, through the micro-kernel.
 */
export function compactProduct(
  v: CompactView,
  transposed: boolean,
  n: number,
  arena: ProductArena,
  kernel: PanelKernel,
): void {
  const { rows, cols } = v.layout;
  const inner = transposed ? rows : cols;
  const outer = transposed ? cols : rows;
  if (n === 0) return;
  const decode = runDecoder(v);
  const { f, x, out, panel, tail } = arena;
  for (let k0 = 0; k0 < inner; k0 += PANEL_DEPTH) {
    const depth = Math.min(PANEL_DEPTH, inner - k0);
    const accumulate = k0 > 0;
    for (let j0 = 0; j0 < outer; j0 += PANEL_WIDTH) {
      const width = Math.min(PANEL_WIDTH, outer - j0);
      if (width < PANEL_WIDTH) f.fill(0, panel, panel + PANEL_DEPTH * PANEL_WIDTH);
      if (transposed) for (let p = 0; p < depth; p++) decode(k0 + p, j0, width, f, panel + p * PANEL_WIDTH, 1);
      else for (let j = 0; j < width; j++) decode(j0 + j, k0, depth, f, panel + j, PANEL_WIDTH);
      if (width === PANEL_WIDTH) {
        kernel(x + k0, panel, out + j0, n, depth, inner, outer, accumulate);
        continue;
      }
      // The last panel is narrower than the kernel writes: go through the tail buffer.
      for (let i = 0; i < n && accumulate; i++)
        f.copyWithin(tail + i * PANEL_WIDTH, out + i * outer + j0, out + i * outer + j0 + width);
      kernel(x + k0, panel, tail, n, depth, inner, PANEL_WIDTH, accumulate);
      for (let i = 0; i < n; i++)
        f.copyWithin(out + i * outer + j0, tail + i * PANEL_WIDTH, tail + i * PANEL_WIDTH + width);
    }
  }
}

/** out[at + i·cols …] = row ids[i] of W, dequantized (an embedding lookup). */
export function compactGather(v: CompactView, ids: ArrayLike<number>, out: Float32Array, at: number): void {
  const { rows, cols } = v.layout;
  const decode = runDecoder(v);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= rows)
      fail(ErrorCodes.SHAPE, `embedding index ${i} is ${id}, expected an integer in [0, ${rows - 1}]`);
    decode(id, 0, cols, out, at + i * cols, 1);
  }
}
