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
 * All sizes must be ≥ 1.
 */

const I32 = 0x7f;
const F32 = 0x7d;
const V128 = 0x7b;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const name = (s: string) => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];

// Parameters then locals, by index.
const [A, B, OUT, BATCH, M, K, N, A_BATCH, A_ROW, A_COL, B_BATCH] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
const [T, I, P, J, N4, A_BASE, B_BASE, O_ROW, B_ROW, A_VAL, A_VEC] = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21];

const get = (l: number) => [0x20, ...uleb(l)];
const set = (l: number) => [0x21, ...uleb(l)];
const i32 = (v: number) => [0x41, ...sleb(v)];
const [ADD, MUL, AND, SHL, LT_S, GE_S] = [[0x6a], [0x6c], [0x71], [0x74], [0x48], [0x4e]];
const MEM32 = [0x02, 0x00]; // align 4, offset 0
const F32_LOAD = [0x2a, ...MEM32];
const F32_STORE = [0x38, ...MEM32];
const V128_LOAD = [0xfd, 0x00, ...MEM32]; // alignment is a hint: unaligned rows are fine
const V128_STORE = [0xfd, 0x0b, ...MEM32];
const F32X4_SPLAT = [0xfd, 0x13];
const F32X4_ADD = [0xfd, ...uleb(0xe4)];
const F32X4_MUL = [0xfd, ...uleb(0xe6)];
const [F32_ADD, F32_MUL] = [[0x92], [0x94]];
const [BLOCK, LOOP, END, BR, BR_IF] = [[0x02, 0x40], [0x03, 0x40], [0x0b], [0x0c], [0x0d]];
const increment = (l: number, by = 1) => [...get(l), ...i32(by), ...ADD, ...set(l)];
/** byte address base + (index << 2) */
const addr = (base: number, index: number) => [...get(base), ...get(index), ...i32(2), ...SHL, ...ADD];
/** do { body; l++ } while (l < limit) */
const doLoop = (l: number, limit: number, body: number[]) => [
  ...i32(0),
  ...set(l),
  ...LOOP,
  ...body,
  ...increment(l),
  ...get(l),
  ...get(limit),
  ...LT_S,
  ...BR_IF,
  0,
  ...END,
];
/** while (j < limit) { body; j += step } */
const whileLoop = (limit: number, step: number, body: number[]) => [
  ...BLOCK,
  ...LOOP,
  ...get(J),
  ...get(limit),
  ...GE_S,
  ...BR_IF,
  1,
  ...body,
  ...increment(J, step),
  ...BR,
  0,
  ...END,
  ...END,
];

const body = [
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
        ...whileLoop(N4, 4, [
          ...addr(O_ROW, J),
          ...addr(O_ROW, J),
          ...V128_LOAD,
          ...get(A_VEC),
          ...addr(B_ROW, J),
          ...V128_LOAD,
          ...F32X4_MUL,
          ...F32X4_ADD,
          ...V128_STORE,
        ]),
        ...whileLoop(N, 1, [
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
  ...END,
];

/** The module's bytes; `shared` must match the imported memory (tfjs's threaded build shares it). */
function smallMatMulModule(shared: boolean): Uint8Array<ArrayBuffer> {
  const locals = [
    [...uleb(9), I32],
    [...uleb(1), F32],
    [...uleb(1), V128],
  ];
  const code = [...vec(locals), ...body];
  const memoryLimits = shared ? [0x03, ...uleb(1), ...uleb(65536)] : [0x00, ...uleb(1)];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, vec([[0x60, ...vec(Array.from({ length: 11 }, () => [I32])), ...vec([])]])), // (i32 × 11) → ()
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, ...memoryLimits]])),
    ...section(3, vec([uleb(0)])),
    ...section(7, vec([[...name('smallMatMul'), 0x00, ...uleb(0)]])),
    ...section(10, vec([[...uleb(code.length), ...code]])),
  ]);
}

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

/** The kernel bound to `memory`, or null where the engine lacks wasm SIMD. */
export function instantiateSmallMatMul(memory: WebAssembly.Memory): SmallMatMul | null {
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  const bytes = smallMatMulModule(shared);
  if (!WebAssembly.validate(bytes)) return null;
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  return instance.exports.smallMatMul as SmallMatMul;
}
