/**
 * The WebAssembly SIMD micro-kernel of the compact-base products (shared/quant/compact-matmul.ts):
 * a block of rows of A times a panel of 8 columns, the panel dequantized just before into a small
 * buffer (see there). It runs in the tfjs module's own memory (imported), like wasm-small-matmul.ts.
 *
 *   panelMatMul(a, bp, c, m, k, lda, ldc, accumulate)
 *     c[i·ldc + j] = (accumulate ? c[i·ldc + j] : 0) + Σ_p a[i·lda + p] · bp[p·8 + j]   (i < m, j < 8)
 * a, bp, c are byte offsets, lda and ldc strides in floats; m ≥ 0, k ≥ 1. Rows go 4 at a time (8
 * vector accumulators: a 4 × 8 register block), the rest one at a time. Each sum runs over p in order
 * with a separate multiply and add (no FMA), exactly as the JavaScript kernel of compact-matmul.ts,
 * so every engine and both kernels give the same bits, whatever m.
 *
 * The relaxed-fma variant (shared/arithmetic.ts) is the same module with each multiply and add
 * replaced by one f32x4.relaxed_madd: fused where the CPU has FMA (one rounding per term), so its bits
 * differ from the JavaScript kernel's in the last places. The sum order is unchanged, and every row
 * goes through the same instruction whether it falls in a 4-row block or the rest, so a row's result
 * still does not depend on m or on the other rows.
 */
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import {
  ADD,
  AND,
  ELSE,
  END,
  F32X4_ADD,
  F32X4_MUL,
  F32X4_RELAXED_MADD,
  v128Load32Splat,
  get,
  I32,
  i32,
  IF,
  increment,
  instantiateKernel,
  isShared,
  kernelModule,
  LOOP,
  LT_S,
  MUL,
  set,
  SHL,
  V128,
  V128_ZERO,
  v128Load,
  v128Store,
  BR_IF,
  whileLoop,
} from './wasm-encoding.ts';

// Parameters, then locals, by index.
const [A, BP, C, M, K, LDA, LDC, ACCUMULATE] = [0, 1, 2, 3, 4, 5, 6, 7];
const [I, P, BPTR, K_BYTES, M4] = [8, 9, 10, 11, 12];
const ROW_A = [13, 14, 15, 16]; // byte address of row i + r of A
const ROW_C = [17, 18, 19, 20];
const ACC = [21, 22, 23, 24, 25, 26, 27, 28]; // row r, columns 0–3 and 4–7: ACC[2r], ACC[2r + 1]
const [B0, B1, S] = [29, 30, 31];
const I32_LOCALS = 13;
const V128_LOCALS = 11;

/** acc += s · b: a multiply then an add (simd128), or one relaxed multiply-add (relaxed-fma) */
const multiplyAdd = (variant: ArithmeticVariant, acc: number, b: number) =>
  variant === 'simd128'
    ? [...get(acc), ...get(S), ...get(b), ...F32X4_MUL, ...F32X4_ADD, ...set(acc)]
    : [...get(S), ...get(b), ...get(acc), ...F32X4_RELAXED_MADD, ...set(acc)];

/** The row addresses of `rows` rows from row I: base + (I + r) · stride · 4. */
function rowAddresses(base: number, stride: number, targets: number[]): number[] {
  return targets.flatMap((target, r) => [
    ...get(base),
    ...get(I),
    ...i32(r),
    ...ADD,
    ...get(stride),
    ...MUL,
    ...i32(2),
    ...SHL,
    ...ADD,
    ...set(target),
  ]);
}

/** The register block of `rows` rows: C rows (+)= A rows · panel. */
function block(variant: ArithmeticVariant, rows: number): number[] {
  const accs = ACC.slice(0, 2 * rows);
  const init = [
    ...get(ACCUMULATE),
    ...IF,
    ...accs.flatMap((acc, n) => [...get(ROW_C[n >> 1]), ...v128Load(16 * (n & 1)), ...set(acc)]),
    ...ELSE,
    ...accs.flatMap((acc) => [...V128_ZERO, ...set(acc)]),
    ...END,
  ];
  const step = [
    ...get(BPTR),
    ...v128Load(0),
    ...set(B0),
    ...get(BPTR),
    ...v128Load(16),
    ...set(B1),
    ...Array.from({ length: rows }, (_, r) => [
      ...get(ROW_A[r]),
      ...get(P),
      ...ADD,
      ...v128Load32Splat(),
      ...set(S),
      ...multiplyAdd(variant, ACC[2 * r], B0),
      ...multiplyAdd(variant, ACC[2 * r + 1], B1),
    ]).flat(),
    ...increment(BPTR, 32),
    ...increment(P, 4),
  ];
  return [
    ...rowAddresses(A, LDA, ROW_A.slice(0, rows)),
    ...rowAddresses(C, LDC, ROW_C.slice(0, rows)),
    ...init,
    ...get(BP),
    ...set(BPTR),
    ...i32(0),
    ...set(P),
    // do { … } while (p < k · 4)
    ...LOOP,
    ...step,
    ...get(P),
    ...get(K_BYTES),
    ...LT_S,
    ...BR_IF,
    0,
    ...END,
    ...accs.flatMap((acc, n) => [...get(ROW_C[n >> 1]), ...get(acc), ...v128Store(16 * (n & 1))]),
  ];
}

const body = (variant: ArithmeticVariant) => [
  ...get(K),
  ...i32(2),
  ...SHL,
  ...set(K_BYTES),
  ...get(M),
  ...i32(-4),
  ...AND,
  ...set(M4),
  ...i32(0),
  ...set(I),
  ...whileLoop(I, M4, 4, block(variant, 4)),
  ...whileLoop(I, M, 1, block(variant, 1)),
];

const panelMatMulModule = (shared: boolean, variant: ArithmeticVariant) =>
  kernelModule(
    'panelMatMul',
    8,
    [
      [I32_LOCALS, I32],
      [V128_LOCALS, V128],
    ],
    body(variant),
    shared,
  );

export type PanelMatMul = (
  a: number,
  bp: number,
  c: number,
  m: number,
  k: number,
  lda: number,
  ldc: number,
  accumulate: number,
) => void;

/**
 * The kernel bound to `memory`, or null where the engine lacks wasm SIMD (or, for relaxed-fma, relaxed
 * SIMD).
 */
export function instantiatePanelMatMul(
  memory: WebAssembly.Memory,
  variant: ArithmeticVariant = 'simd128',
): PanelMatMul | null {
  return instantiateKernel<PanelMatMul>(panelMatMulModule(isShared(memory), variant), 'panelMatMul', memory);
}
