/**
 * The compact-base product on the wasm backend: kernels/c/compact-gemm.c (tile loops, SIMD
 * dequantization of every base format, a 4 × 8 micro-kernel), built by scripts/build-kernels.mjs into
 * compact-gemm.wasm.ts and instantiated here against tfjs's own memory, once per memory and arithmetic
 * variant. The module has no data and no stack of its own: it reads and writes tensors in place.
 * Its results equal shared/quant/compact-matmul.ts's JavaScript kernel bit for bit (simd128); the
 * relaxed-fma build differs only where the CPU fuses the multiply-add.
 */
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import type { CompactView } from '../shared/quant/compact-matmul.ts';
import { NF4_LEVELS } from '../shared/quant/nf4.ts';
import { COMPACT_GEMM_WASM } from './compact-gemm.wasm.ts';
import { isShared, withMemoryImport } from './wasm-encoding.ts';

const FORMAT_CODES = { f32: 0, f16: 1, bf16: 2, int8: 3, nf4: 4 } as const;

export interface CompactGemm {
  /** floats of scratch one call of product needs for n rows */
  scratchFloats(n: number): number;
  /**
   * out (n, outer) = x·Wᵀ (transposed false) or x·W, for output columns [jBegin, jEnd) (jBegin a
   * multiple of 8); x, out, scratch, data and scales are byte offsets into the memory.
   */
  product(
    view: Pick<CompactView, 'spec' | 'layout'>,
    transposed: boolean,
    at: { data: number; scales: number; x: number; out: number; scratch: number },
    n: number,
    jBegin: number,
    jEnd: number,
  ): void;
}

type Exports = {
  lm_scratch_floats(n: number): number;
  lm_product(...args: number[]): void;
};

const fromBase64 = (text: string): Uint8Array =>
  typeof Buffer !== 'undefined'
    ? new Uint8Array(Buffer.from(text, 'base64'))
    : Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

/** The kernel bound to `memory`, or null where the engine cannot run the variant (no SIMD, no relaxed SIMD). */
export function instantiateCompactGemm(memory: WebAssembly.Memory, variant: ArithmeticVariant): CompactGemm | null {
  const bytes = withMemoryImport(fromBase64(COMPACT_GEMM_WASM[variant]), isShared(memory));
  if (!WebAssembly.validate(bytes)) return null;
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  const exports = instance.exports as unknown as Exports;
  return {
    scratchFloats: (n) => exports.lm_scratch_floats(n),
    product(view, transposed, at, n, jBegin, jEnd) {
      const { spec, layout } = view;
      if (spec.format === 'nf4') {
        // The module has no data: NF4's levels travel in the scratch's last 16 floats.
        const levelsAt = at.scratch + 4 * (exports.lm_scratch_floats(n) - 16);
        new Float32Array(memory.buffer, levelsAt, 16).set(NF4_LEVELS);
      }
      exports.lm_product(
        FORMAT_CODES[spec.format],
        transposed ? 1 : 0,
        at.data,
        at.scales,
        layout.rows,
        layout.cols,
        layout.rowStride,
        layout.blocksPerRow,
        'blockSize' in spec ? spec.blockSize : 0,
        at.x,
        at.out,
        n,
        jBegin,
        jEnd,
        at.scratch,
      );
    },
  };
}
