/**
 * The two passes the coordinator (and every relay and ingestion thread) makes over each arriving
 * result, and its optimizer step, in WebAssembly SIMD (kernels/c/reduce.c, built into reduce.wasm.ts):
 * - `addInto(acc, g)`: acc += g, the in-order float32 sum of results (aggregate.ts);
 * - `sumSquares(x)`: the float64 sum of squares behind each result's norm and finiteness check
 *   (coordinator/engine/defence.ts l2Norm, protocol/messages.ts firstNonFinite);
 * - `adamw(p, g, m, v, k)`: one AdamW step (optimizer.ts adamwStep), and `sumSquaresSerial` for its clipping's
 *   global norm (one float64 sum in order, as optimizer.ts globalNorm has always summed).
 * Both give exactly the bits of their JavaScript forms (`addIntoJs`, `sumSquaresJs`, kept as the
 * reference and the fallback; the tests compare them): the C does the same float operations in the
 * same order, only four at a time. The arrays stay where they are (JavaScript memory, often a view of
 * a received frame): they pass through the module's own small memory a chunk at a time, which costs a
 * copy from cache and still runs the sum about 1.7× and the norm about 1.4× faster than V8's scalar
 * loops (bench:scale, "Aggregation on one core").
 */
import { REDUCE_WASM } from './reduce.wasm.ts';

/** Floats per chunk: four regions of a chunk each (acc, g; or AdamW's p, g, m, v), then the four float64 lanes. */
const CHUNK = 16384;
const ACC_AT = 0;
const G_AT = CHUNK * 4;
const STATE_AT = 4 * CHUNK * 4;
/** AdamW's regions */
const [P_AT, M_AT, V_AT] = [0, 2 * CHUNK * 4, 3 * CHUNK * 4];
/** Below this many floats the JavaScript loop is as fast (no copies, no call). */
const MIN_KERNEL = 1024;

interface ReduceModule {
  add(accAt: number, gAt: number, n: number): void;
  sumSquares(xAt: number, n: number, stateAt: number): void;
  sumSquaresSerial(xAt: number, n: number, stateAt: number): void;
  adamw(...args: number[]): void;
  floats: Float32Array;
  state: Float64Array;
}

let loaded: ReduceModule | null | undefined;
let enabled = true;

/**
 * Turns the kernel off (the scalar loops then run everywhere in this thread) or back on; returns the previous
 * setting. For side-by-side measurements (bench:scale) and tests: the bits are the same either way.
 */
export function useReduceKernel(on: boolean): boolean {
  const was = enabled;
  enabled = on;
  return was;
}

function decodeBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The module, instantiated once per thread on first use; null where WebAssembly SIMD is missing. */
function reduceModule(): ReduceModule | null {
  if (!enabled) return null;
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (typeof WebAssembly !== 'object') return loaded;
  const bytes = decodeBase64(REDUCE_WASM);
  if (!WebAssembly.validate(bytes)) return loaded;
  // fixed size (initial = maximum): the views below never detach
  const memory = new WebAssembly.Memory({ initial: 5, maximum: 5 });
  let instance: WebAssembly.Instance;
  try {
    instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  } catch {
    return loaded; // compiling refused (a page whose CSP allows no WebAssembly): the scalar loops
  }
  const exports = instance.exports as {
    lm_add: (acc: number, g: number, n: number) => void;
    lm_sum_squares: (x: number, n: number, state: number) => void;
    lm_adamw: (...args: number[]) => void;
    lm_sum_squares_serial: (x: number, n: number, state: number) => void;
  };
  loaded = {
    add: exports.lm_add,
    sumSquares: exports.lm_sum_squares,
    adamw: exports.lm_adamw,
    sumSquaresSerial: exports.lm_sum_squares_serial,
    floats: new Float32Array(memory.buffer, 0, 4 * CHUNK),
    state: new Float64Array(memory.buffer, STATE_AT, 4),
  };
  return loaded;
}

/**
 * acc += g elementwise, one float32 addition each (the bits of addIntoJs). Lengths must match. Overlapping arrays
 * (never the case in a sum) take the scalar loop, whose element-by-element order the chunks would not keep.
 */
export function addInto(acc: Float32Array, g: Float32Array): void {
  if (acc.length !== g.length) throw new RangeError(`cannot add ${g.length} values into ${acc.length}`);
  const m = g.length >= MIN_KERNEL && !overlap(acc, g) ? reduceModule() : null;
  if (!m) return addIntoJs(acc, g);
  const { floats } = m;
  for (let at = 0; at < g.length; at += CHUNK) {
    const n = Math.min(CHUNK, g.length - at);
    floats.set(acc.subarray(at, at + n), ACC_AT / 4);
    floats.set(g.subarray(at, at + n), G_AT / 4);
    m.add(ACC_AT, G_AT, n);
    acc.set(floats.subarray(ACC_AT / 4, ACC_AT / 4 + n), at);
  }
}

const overlap = (a: Float32Array, b: Float32Array) =>
  a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;

/** Σ x[i]² in float64, in sumSquaresJs's order (so the same bits). */
export function sumSquares(x: Float32Array): number {
  const m = x.length >= MIN_KERNEL ? reduceModule() : null;
  if (!m) return sumSquaresJs(x);
  const { floats, state } = m;
  state.fill(0);
  // every chunk but the last is a multiple of 4 long, so each value stays in its lane
  for (let at = 0; at < x.length; at += CHUNK) {
    const n = Math.min(CHUNK, x.length - at);
    floats.set(x.subarray(at, at + n), G_AT / 4);
    m.sumSquares(G_AT, n, STATE_AT);
  }
  return state[0] + state[1] + state[2] + state[3];
}

/**
 * from + Σ x[i]² in float64, one sum in index order (no lanes): the bits of `let s = from; for (…) s += x[i] * x[i]`,
 * which a chain of sums over several arrays continues (optimizer.ts globalNorm).
 */
export function sumSquaresSerial(x: Float32Array, from = 0): number {
  const m = x.length >= MIN_KERNEL ? reduceModule() : null;
  if (!m) return sumSquaresSerialJs(x, from);
  const { floats, state } = m;
  state[0] = from;
  for (let at = 0; at < x.length; at += CHUNK) {
    const n = Math.min(CHUNK, x.length - at);
    floats.set(x.subarray(at, at + n), G_AT / 4);
    m.sumSquaresSerial(G_AT, n, STATE_AT);
  }
  return state[0];
}

/** sumSquaresSerial in JavaScript (the reference and the fallback). */
export function sumSquaresSerialJs(x: Float32Array, from = 0): number {
  let s = from;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}

/** AdamW's coefficients for one step (shared/train/optimizer.ts adamwStep). */
export interface AdamwStep {
  beta1: number;
  beta2: number;
  /** bias corrections 1 − β1^t and 1 − β2^t */
  c1: number;
  c2: number;
  eps: number;
  lr: number;
  weightDecay: number;
}

/**
 * One AdamW step over p (in place) with gradient g and moments m, v (in place): the bits of adamwJs, the float64
 * divisions and square root done two at a time (kernels/c/reduce.c lm_adamw). Lengths must match.
 */
export function adamw(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, k: AdamwStep): void {
  if (g.length !== p.length || m.length !== p.length || v.length !== p.length)
    throw new RangeError(`adamw: lengths ${p.length}, ${g.length}, ${m.length}, ${v.length} differ`);
  const distinct =
    !overlap(p, g) && !overlap(p, m) && !overlap(p, v) && !overlap(g, m) && !overlap(g, v) && !overlap(m, v);
  const mod = p.length >= MIN_KERNEL && distinct ? reduceModule() : null;
  if (!mod) return adamwJs(p, g, m, v, k);
  const { floats } = mod;
  for (let at = 0; at < p.length; at += CHUNK) {
    const n = Math.min(CHUNK, p.length - at);
    const end = at + n;
    floats.set(p.subarray(at, end), P_AT / 4);
    floats.set(g.subarray(at, end), G_AT / 4);
    floats.set(m.subarray(at, end), M_AT / 4);
    floats.set(v.subarray(at, end), V_AT / 4);
    mod.adamw(P_AT, G_AT, M_AT, V_AT, n, k.beta1, k.beta2, k.c1, k.c2, k.eps, k.lr, k.weightDecay);
    p.set(floats.subarray(P_AT / 4, P_AT / 4 + n), at);
    m.set(floats.subarray(M_AT / 4, M_AT / 4 + n), at);
    v.set(floats.subarray(V_AT / 4, V_AT / 4 + n), at);
  }
}

/** One AdamW step in JavaScript (the reference and the fallback): float64 arithmetic, float32 storage. */
export function adamwJs(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, k: AdamwStep): void {
  const { beta1, beta2, c1, c2, eps, lr, weightDecay } = k;
  for (let i = 0; i < p.length; i++) {
    m[i] = beta1 * m[i] + (1 - beta1) * g[i];
    v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
    const update = m[i] / c1 / (Math.sqrt(v[i] / c2) + eps);
    p[i] -= lr * (update + weightDecay * p[i]);
  }
}

/**
 * acc += g elementwise in JavaScript: each element is one float32 addition (formed in float64,
 * rounded once to float32: the same value). Unrolled by 4, which V8 runs faster than the plain loop.
 */
export function addIntoJs(acc: Float32Array, g: Float32Array): void {
  const n4 = g.length & ~3;
  for (let i = 0; i < n4; i += 4) {
    acc[i] += g[i];
    acc[i + 1] += g[i + 1];
    acc[i + 2] += g[i + 2];
    acc[i + 3] += g[i + 3];
  }
  for (let i = n4; i < g.length; i++) acc[i] += g[i];
}

/** Σ x[i]² in float64 over four lanes (lane k: x[4j + k] in order; the tail into lane 0), then the lanes in order. */
export function sumSquaresJs(x: Float32Array): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const n = x.length - (x.length % 4);
  for (let i = 0; i < n; i += 4) {
    s0 += x[i] * x[i];
    s1 += x[i + 1] * x[i + 1];
    s2 += x[i + 2] * x[i + 2];
    s3 += x[i + 3] * x[i + 3];
  }
  for (let i = n; i < x.length; i++) s0 += x[i] * x[i];
  return s0 + s1 + s2 + s3;
}
