/**
 * The compact-base product on the wasm backend: kernels/c/compact-gemm.c (tile loops, SIMD
 * dequantization of every base format, a 4 × 8 micro-kernel), built by scripts/build-kernels.mjs into
 * compact-gemm.wasm.ts and instantiated here against tfjs's own memory, once per memory and arithmetic
 * variant. The module has no data and no stack of its own: it reads and writes tensors in place.
 * Its results equal shared/quant/compact-matmul.ts's JavaScript kernel bit for bit (simd128); the
 * relaxed-fma build differs only where the CPU fuses the multiply-add.
 */
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import { type CompactView, PANEL_WIDTH } from '../shared/quant/compact-matmul.ts';
import { NF4_LEVELS } from '../shared/quant/nf4.ts';
import { COMPACT_GEMM_WASM } from './compact-gemm.wasm.ts';
import { type GemmThreads, startGemmThreads } from './gemm-threads.ts';
import { isShared, withMemoryImport } from './wasm-encoding.ts';

const FORMAT_CODES = { f32: 0, f16: 1, bf16: 2, int8: 3, nf4: 4 } as const;

/** A float32 operand on the heap: its byte offset and its strides in floats. */
export interface Strided {
  at: number;
  row: number;
  col: number;
  batch: number;
}

export interface CompactGemm {
  /** floats of scratch one product of n rows needs (one share per thread) */
  scratchFloats(n: number): number;
  /**
   * out (n, outer) = x·Wᵀ (transposed false) or x·W; x, out, scratch, data and scales are byte offsets
   * into the memory. Split over the threads by output columns when the product is large enough.
   */
  product(
    view: Pick<CompactView, 'spec' | 'layout'>,
    transposed: boolean,
    at: { data: number; scales: number; x: number; out: number; scratch: number },
    n: number,
  ): void;
  /** floats of scratch gemm needs for m rows */
  gemmScratchFloats(m: number): number;
  /**
   * c[t·cBatch + i·cRow + j·cCol] = Σ_p a[t·aBatch + i·aRow + p·aCol] · b[t·bBatch + p·bRow + j·bCol]
   * (float32 tensors, byte offsets; strides in floats); all sizes ≥ 1. One thread.
   */
  gemm(
    a: Strided,
    b: Strided,
    c: Strided,
    shape: { batch: number; m: number; k: number; n: number },
    scratch: number,
  ): void;
  /** this variant's register-only multiply-add rate on this thread, GFLOP/s (best of a few 10⁷-flop runs) */
  peakGflops(): number;
  /** the fused row-wise kernels of kernels/c/fused.c (byte offsets; one thread) */
  readonly fused: FusedKernels;
}

/** kernels/c/fused.c's exports, by name: pointers are byte offsets, then sizes and constants. */
export interface FusedKernels {
  lm_rms_norm(x: number, w: number, y: number, rstd: number, rows: number, d: number, eps: number): void;
  lm_rms_norm_grad(
    dy: number,
    x: number,
    w: number,
    rstd: number,
    dx: number,
    rows: number,
    d: number,
    scratch: number,
  ): void;
  lm_layer_norm(
    x: number,
    w: number,
    b: number,
    y: number,
    mean: number,
    rstd: number,
    rows: number,
    d: number,
    eps: number,
  ): void;
  lm_layer_norm_grad(
    dy: number,
    x: number,
    w: number,
    mean: number,
    rstd: number,
    dx: number,
    rows: number,
    d: number,
    scratch: number,
  ): void;
  lm_swiglu(g: number, u: number, out: number, count: number): void;
  lm_swiglu_grad(dy: number, g: number, u: number, dg: number, du: number, count: number): void;
  lm_gelu(x: number, out: number, count: number): void;
  lm_gelu_grad(dy: number, x: number, dx: number, count: number): void;
  lm_rope(
    x: number,
    cos: number,
    sin: number,
    out: number,
    rows: number,
    heads: number,
    hs: number,
    backward: number,
  ): void;
  lm_swap_axes(input: number, out: number, outer: number, b: number, c: number, inner: number): void;
  lm_masked_softmax(
    scores: number,
    mask: number,
    p: number,
    rows: number,
    maskRows: number,
    s: number,
    scale: number,
  ): void;
  lm_lora_forward(
    x: number,
    a: number,
    b: number,
    y: number,
    out: number,
    u: number,
    n: number,
    dIn: number,
    dOut: number,
    r: number,
    scale: number,
    scratch: number,
  ): void;
  lm_lora_backward(
    dy: number,
    a: number,
    b: number,
    dxFrozen: number,
    dx: number,
    du: number,
    n: number,
    dIn: number,
    dOut: number,
    r: number,
    scale: number,
    scratch: number,
  ): void;
  lm_softmax_grad(dp: number, p: number, ds: number, rows: number, s: number, scale: number): void;
}

type Exports = FusedKernels & {
  lm_peak(iterations: number, seed: number): number;
  lm_scratch_floats(n: number): number;
  lm_product(...args: number[]): void;
  lm_gemm_scratch_floats(m: number): number;
  lm_gemm(...args: number[]): void;
};

const fromBase64 = (text: string): Uint8Array =>
  typeof Buffer !== 'undefined'
    ? new Uint8Array(Buffer.from(text, 'base64'))
    : Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

/** Below this many multiply-adds a product stays on one thread (waking helpers costs tens of µs). */
const THREADED_MIN_MADDS = 1 << 20;

/**
 * The kernel bound to `memory`, using up to `threads` threads (gemm-threads.ts), or null where the
 * engine cannot run the variant (no SIMD, no relaxed SIMD).
 */
export function instantiateCompactGemm(
  memory: WebAssembly.Memory,
  variant: ArithmeticVariant,
  threads = 1,
): CompactGemm | null {
  const bytes = withMemoryImport(fromBase64(COMPACT_GEMM_WASM[variant]), isShared(memory));
  if (!WebAssembly.validate(bytes)) return null;
  const module = new WebAssembly.Module(bytes);
  const exports = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Exports;
  let pool: GemmThreads | null | undefined; // started on the first product large enough
  const parts = () => (pool ??= startGemmThreads(memory, module, threads))?.count ?? 1;
  return {
    scratchFloats: (n) => Math.max(threads, 1) * exports.lm_scratch_floats(n),
    gemmScratchFloats: (m) => exports.lm_gemm_scratch_floats(m),
    fused: exports,
    peakGflops() {
      const iterations = 1 << 17; // 96 flops each: 12.6 MFLOP a run
      let best = Infinity;
      for (let run = 0; run < 12; run++) {
        const t0 = performance.now();
        exports.lm_peak(iterations, 1 + run);
        best = Math.min(best, performance.now() - t0);
      }
      return (96 * iterations) / best / 1e6;
    },
    gemm(a, b, c, { batch, m, k, n }, scratch) {
      const args = [a, b, c].flatMap((o) => [o.at, o.row, o.col, o.batch]);
      exports.lm_gemm(...args, batch, m, k, n, scratch);
    },
    product(view, transposed, at, n) {
      const { spec, layout } = view;
      const [inner, outer] = transposed ? [layout.rows, layout.cols] : [layout.cols, layout.rows];
      const share = 4 * exports.lm_scratch_floats(n);
      const panels = Math.ceil(outer / PANEL_WIDTH);
      const count = n * inner * outer >= THREADED_MIN_MADDS ? Math.min(parts(), panels) : 1;
      const jobs = Array.from({ length: count }, (_, t) => {
        const scratch = at.scratch + t * share;
        // The module has no data: NF4's levels travel in each share's last 16 floats.
        if (spec.format === 'nf4') new Float32Array(memory.buffer, scratch + share - 64, 16).set(NF4_LEVELS);
        // whole panels per thread; only the last share can end in a narrower one
        const [jBegin, jEnd] = [t, t + 1].map((e) => Math.min(outer, Math.floor((e * panels) / count) * PANEL_WIDTH));
        return [
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
          scratch,
        ];
      });
      const exec = (job: number[]) => exports.lm_product(...job);
      if (count === 1) exec(jobs[0]);
      else pool!.run(jobs, exec);
    },
  };
}
