/**
 * A WebAssembly SIMD kernel for the small batched matmuls of attention (per head: (T × hs)·(hs × T)
 * and back), which tfjs-backend-wasm runs in a scalar loop (XNNPACK only takes plain 2-D products;
 * both rates are in bench/RESULTS.md, Compute, "Where the time went"). It runs in the tfjs module's
 * own memory (imported), so it reads and writes tensors in place. The module is 200-odd bytes,
 * encoded below rather than shipped as a binary: one function, three nested loops and a 4-wide
 * inner loop.
 *
 *   smallMatMul(a, b, out, batch, m, k, n, aBatch, aRow, aCol, bBatch)
 *     out[t, i, j] = Σ_p a[t·aBatch + i·aRow + p·aCol] · b[t·bBatch + p·n + j]   (t < batch, i < m, j < n)
 * a, b, out are byte offsets; strides count floats (aCol ≠ 1 reads A transposed, a zero batch
 * stride broadcasts). out is contiguous (batch, m, n); b is contiguous (k, n) per batch. Sums run
 * over p in order with separate multiply and add (no FMA), so every platform gets the same bits.
 * All sizes must be ≥ 1. The relaxed-fma variant (shared/arithmetic.ts) does the 4-wide part with one
 * f32x4.relaxed_madd (fused where the CPU has FMA); the last n mod 4 columns stay a scalar multiply
 * then add (wasm has no scalar FMA). Same order, so its bits are the same from call to call.
 */
import type { ArithmeticVariant } from '../shared/arithmetic.ts';

import {
  ADD,
  AND,
  doLoop,
  whileLoop,
  F32_ADD,
  F32_LOAD,
  F32_MUL,
  F32_STORE,
  F32X4_ADD,
  F32X4_MUL,
  F32X4_RELAXED_MADD,
  F32X4_SPLAT,
  F32,
  get,
  I32,
  i32,
  instantiateKernel,
  isShared,
  kernelModule,
  MUL,
  set,
  SHL,
  V128,
  V128_LOAD,
  V128_STORE,
} from './wasm-encoding.ts';

// Parameters then locals, by index.
const [A, B, OUT, BATCH, M, K, N, A_BATCH, A_ROW, A_COL, B_BATCH] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const [T, I, P, J, N4, A_BASE, B_BASE, O_ROW, B_ROW, A_VAL, A_VEC] = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21];

/** byte address base + (index << 2) */
const addr = (base: number, index: number) => [...get(base), ...get(index), ...i32(2), ...SHL, ...ADD];
/** while (j < limit) { body; j += step } */
const whileJ = (limit: number, step: number, body: number[]) => whileLoop(J, limit, step, body);

/** the 4 lanes on the stack (the address, then out[j..j+3] + a(i, p) · b[p, j..j+3]), by variant */
const multiplyAdd4 = (variant: ArithmeticVariant) =>
  variant === 'simd128'
    ? [
        ...addr(O_ROW, J),
        ...addr(O_ROW, J),
        ...V128_LOAD,
        ...get(A_VEC),
        ...addr(B_ROW, J),
        ...V128_LOAD,
        ...F32X4_MUL,
        ...F32X4_ADD,
      ]
    : [
        ...addr(O_ROW, J),
        ...get(A_VEC),
        ...addr(B_ROW, J),
        ...V128_LOAD,
        ...addr(O_ROW, J),
        ...V128_LOAD,
        ...F32X4_RELAXED_MADD,
      ];

const body = (variant: ArithmeticVariant) => [
  ...get(N),
  ...i32(-4),
  ...AND,
  ...set(N4),
  ...doLoop(T, BATCH, [
    ...get(A),
    ...get(T),
    ...get(A_BATCH),
    ...MUL,
    ...i32(2),
    ...SHL,
    ...ADD,
    ...set(A_BASE),
    ...get(B),
    ...get(T),
    ...get(B_BATCH),
    ...MUL,
    ...i32(2),
    ...SHL,
    ...ADD,
    ...set(B_BASE),
    ...doLoop(I, M, [
      // out row (t, i) = 0
      ...get(OUT),
      ...get(T),
      ...get(M),
      ...MUL,
      ...get(I),
      ...ADD,
      ...get(N),
      ...MUL,
      ...i32(2),
      ...SHL,
      ...ADD,
      ...set(O_ROW),
      ...doLoop(J, N, [...addr(O_ROW, J), 0x43, 0, 0, 0, 0, ...F32_STORE]),
      ...doLoop(P, K, [
        // a(i, p) as a scalar and in all 4 lanes
        ...get(A_BASE),
        ...get(I),
        ...get(A_ROW),
        ...MUL,
        ...get(P),
        ...get(A_COL),
        ...MUL,
        ...ADD,
        ...i32(2),
        ...SHL,
        ...ADD,
        ...F32_LOAD,
        ...set(A_VAL),
        ...get(A_VAL),
        ...F32X4_SPLAT,
        ...set(A_VEC),
        ...get(B_BASE),
        ...get(P),
        ...get(N),
        ...MUL,
        ...i32(2),
        ...SHL,
        ...ADD,
        ...set(B_ROW),
        ...i32(0),
        ...set(J),
        // out[j..j+3] += a(i, p) · b[p, j..j+3]
        ...whileJ(N4, 4, [...multiplyAdd4(variant), ...V128_STORE]),
        ...whileJ(N, 1, [
          ...addr(O_ROW, J),
          ...addr(O_ROW, J),
          ...F32_LOAD,
          ...get(A_VAL),
          ...addr(B_ROW, J),
          ...F32_LOAD,
          ...F32_MUL,
          ...F32_ADD,
          ...F32_STORE,
        ]),
      ]),
    ]),
  ]),
];

/** The module's bytes; `shared` must match the imported memory (tfjs's threaded build shares it). */
const smallMatMulModule = (shared: boolean, variant: ArithmeticVariant) =>
  kernelModule(
    'smallMatMul',
    11,
    [
      [9, I32],
      [1, F32],
      [1, V128],
    ],
    body(variant),
    shared,
  );

export type SmallMatMul = (
  a: number,
  b: number,
  out: number,
  batch: number,
  m: number,
  k: number,
  n: number,
  aBatch: number,
  aRow: number,
  aCol: number,
  bBatch: number,
) => void;

/**
 * The kernel bound to `memory`, or null where the engine lacks wasm SIMD (or, for relaxed-fma, relaxed
 * SIMD).
 */
export function instantiateSmallMatMul(
  memory: WebAssembly.Memory,
  variant: ArithmeticVariant = 'simd128',
): SmallMatMul | null {
  return instantiateKernel<SmallMatMul>(smallMatMulModule(isShared(memory), variant), 'smallMatMul', memory);
}
