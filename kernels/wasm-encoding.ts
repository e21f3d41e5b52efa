/**
 * The few pieces of the WebAssembly binary format the hand-encoded kernel needs (wasm-small-matmul.ts):
 * LEB128 numbers, sections, the instructions it uses, and a module that imports tfjs's memory and
 * exports one function; and withMemoryImport for the modules built from C (compact-gemm.ts). Opcodes are those of the WebAssembly 2.0 spec
 * (SIMD128 included).
 */

export const I32 = 0x7f;
export const F32 = 0x7d;
export const V128 = 0x7b;

export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

export function sleb(n: number): number[] {
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

export const get = (l: number) => [0x20, ...uleb(l)];
export const set = (l: number) => [0x21, ...uleb(l)];
export const i32 = (v: number) => [0x41, ...sleb(v)];
export const [ADD, MUL, AND, SHL, LT_S, GE_S] = [[0x6a], [0x6c], [0x71], [0x74], [0x48], [0x4e]];
/** memarg: alignment 4 (a hint: unaligned addresses are fine), then a constant byte offset */
const memarg = (offset = 0) => [0x02, ...uleb(offset)];
export const F32_LOAD = [0x2a, ...memarg()];
export const F32_STORE = [0x38, ...memarg()];
export const v128Load = (offset = 0) => [0xfd, 0x00, ...memarg(offset)];
export const v128Store = (offset = 0) => [0xfd, 0x0b, ...memarg(offset)];
/** one float32 from memory into all 4 lanes (the same value f32.load then f32x4.splat gives) */
export const v128Load32Splat = (offset = 0) => [0xfd, 0x09, ...memarg(offset)];
export const V128_LOAD = v128Load();
export const V128_STORE = v128Store();
export const V128_ZERO = [0xfd, 0x0c, ...new Array<number>(16).fill(0)];
export const F32X4_SPLAT = [0xfd, 0x13];
export const F32X4_ADD = [0xfd, ...uleb(0xe4)];
export const F32X4_MUL = [0xfd, ...uleb(0xe6)];
/**
 * Relaxed SIMD (not in 2.0; Chrome 114+, Node 20 behind --experimental-wasm-relaxed-simd):
 * (a, b, c) → a·b + c, fused or not as the engine and CPU choose.
 */
export const F32X4_RELAXED_MADD = [0xfd, ...uleb(0x105)];
export const [F32_ADD, F32_MUL] = [[0x92], [0x94]];
export const [BLOCK, LOOP, IF, ELSE, END, BR, BR_IF] = [
  [0x02, 0x40],
  [0x03, 0x40],
  [0x04, 0x40],
  [0x05],
  [0x0b],
  [0x0c],
  [0x0d],
];
export const increment = (l: number, by = 1) => [...get(l), ...i32(by), ...ADD, ...set(l)];

/** do { body; l++ } while (l < limit): runs at least once */
export const doLoop = (l: number, limit: number, body: number[]) => [
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

/** while (l < limit) { body; l += step }, l not reset */
export const whileLoop = (l: number, limit: number, step: number, body: number[]) => [
  ...BLOCK,
  ...LOOP,
  ...get(l),
  ...get(limit),
  ...GE_S,
  ...BR_IF,
  1,
  ...body,
  ...increment(l, step),
  ...BR,
  0,
  ...END,
  ...END,
];

/**
 * A module importing env.memory (shared when the tfjs build's memory is, as its threaded build's
 * is) and exporting `exportName`: a function of `params` i32 parameters returning nothing, with
 * the given locals (a count per type) and body.
 */
export function kernelModule(
  exportName: string,
  params: number,
  locals: [count: number, type: number][],
  body: number[],
  shared: boolean,
): Uint8Array<ArrayBuffer> {
  const code = [...vec(locals.map(([count, type]) => [...uleb(count), type])), ...body, ...END];
  const memoryLimits = shared ? [0x03, ...uleb(1), ...uleb(65536)] : [0x00, ...uleb(1)];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec([[0x60, ...vec(Array.from({ length: params }, () => [I32])), ...vec([])]])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, ...memoryLimits]])),
    ...section(3, vec([uleb(0)])),
    ...section(7, vec([[...name(exportName), 0x00, ...uleb(0)]])),
    ...section(10, vec([[...uleb(code.length), ...code]])),
  ]);
}

/** Whether `memory` is a shared one (tfjs's threaded build): the imported memory must say so. */
export function isShared(memory: WebAssembly.Memory): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
}

/** The module's exported function bound to `memory`, or null where the engine rejects the module (no SIMD). */
export function instantiateKernel<F>(
  bytes: Uint8Array<ArrayBuffer>,
  exportName: string,
  memory: WebAssembly.Memory,
): F | null {
  if (!WebAssembly.validate(bytes)) return null;
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  return instance.exports[exportName] as F;
}

/**
 * A module whose one import is env.memory, with that import redeclared shared (the threaded tfjs
 * build's memory) or not: a module that uses no atomics is otherwise the same for both.
 */
export function withMemoryImport(bytes: Uint8Array, shared: boolean): Uint8Array<ArrayBuffer> {
  const readUleb = (at: number): [value: number, next: number] => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[at++];
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return [value, at];
    }
  };
  const memoryLimits = shared ? [0x03, ...uleb(1), ...uleb(65536)] : [0x00, ...uleb(1)];
  const imports = section(2, vec([[...name('env'), ...name('memory'), 0x02, ...memoryLimits]]));
  const parts: number[][] = [[...bytes.subarray(0, 8)]];
  for (let at = 8; at < bytes.length; ) {
    const [size, body] = readUleb(at + 1);
    parts.push(bytes[at] === 2 ? imports : [...bytes.subarray(at, body + size)]);
    at = body + size;
  }
  return new Uint8Array(parts.flat());
}
