/**
 * Replacements for six tfjs-backend-wasm 4.22 kernels. Installed by the Node and browser backend
 * pickers right after the wasm backend starts.
 *
 * - Identity copies its input. The engine clones every tensor it saves for the backward pass
 *   with Identity, so a training step copied each saved activation once more (a few % of a GPT-2
 *   step: bench/RESULTS.md, Compute, "Where the time went"). Tensors are immutable, so sharing the
 *   buffer (a reference count, as the cpu backend does) is enough.
 * - Slice, SplitV and Unpack read the WHOLE input into a fresh JS array (readSync) before copying
 *   the slice out, once per output: splitting a tensor into n parts copied it n times. These read
 *   a view of the wasm heap instead.
 * - Transpose: attention's head transposes ((B, T, H, hs) ↔ (B, H, T, hs)) are one copy of hs-float
 *   runs (kernels/c/fused.c lm_swap_axes); tfjs's general index loop was ~5× slower. Other
 *   permutations keep tfjs's kernel.
 * These five give the same bits as before, only the copies go (or get faster).
 * - The compact-base kernels (shared/model/compact-linear.ts) are added: products with a frozen
 *   matrix held as f16/bf16/int8/nf4 (or f32, held once), dequantized a tile at a time into tfjs's
 *   own memory and multiplied by a SIMD micro-kernel, all in kernels/c/compact-gemm.c (compact-gemm.ts).
 * - The fused kernels are added (kernels/c/fused.c): norm-ops.ts's norms and activations, attention.ts's
 *   masked softmax, and linear-ops.ts's adapted linear (its dA and dB through lm_gemm).
 * - BatchMatMul: products that XNNPACK does not take (batched, or transposed) ran in tfjs's scalar
 *   loop (its rate: bench/RESULTS.md, Compute, "Where the time went"); they now run in the same C
 *   module's lm_gemm, which reads A and B through strides (no transpose first). Plain 2-D products
 *   still go to XNNPACK.
 * The module comes in both arithmetic variants (shared/arithmetic.ts), instantiated once per backend
 * and variant on first use; every call runs the one kernels/arithmetic.ts has selected.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type BackendWasm, getThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import {
  COMPACT_GATHER,
  COMPACT_MATMUL,
  type CompactAttrs,
  compactView,
  productShape,
} from '../shared/model/compact-linear.ts';
import { compactGather } from '../shared/quant/compact-matmul.ts';
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import { selectedArithmetic } from './arithmetic.ts';
import {
  FUSED_GELU,
  FUSED_GELU_GRAD,
  FUSED_LAYER_NORM,
  FUSED_LAYER_NORM_GRAD,
  FUSED_RMS_NORM,
  FUSED_RMS_NORM_GRAD,
  FUSED_ROPE,
  FUSED_ROPE_GRAD,
  FUSED_SWIGLU,
  FUSED_SWIGLU_GRAD,
} from '../shared/model/norm-ops.ts';
import { FUSED_MASKED_SOFTMAX, FUSED_SOFTMAX_GRAD } from '../shared/model/attention.ts';
import { FUSED_LORA, FUSED_LORA_GRAD } from '../shared/model/linear-ops.ts';
import { type CompactGemm, type FusedKernels, instantiateCompactGemm } from './compact-gemm.ts';
import { gemmThreadCount } from './gemm-threads.ts';
import { isShared } from './wasm-encoding.ts';

type Info = tf.TensorInfo;
type KernelArgs = { inputs: Record<string, Info>; backend: BackendWasm; attrs: Record<string, unknown> };

/** out = x[begin : begin + size] on heap views, row by row along the last axis. */
function sliceFromHeap(backend: BackendWasm, x: Info, beginArg: number | number[], sizeArg: number | number[]): Info {
  const [begin, size] = tf.slice_util.parseSliceParams(x as tf.Tensor, beginArg, sizeArg);
  const out = backend.makeOutput(size, x.dtype);
  // Views only after makeOutput: allocating can grow the heap and detach earlier views.
  const xs = backend.typedArrayFromHeap(x);
  const outs = backend.typedArrayFromHeap(out);
  const strides = tf.util.computeStrides(x.shape);
  if (tf.slice_util.isSliceContinous(x.shape, begin, size)) {
    const offset = tf.slice_util.computeFlatOffset(begin, strides);
    outs.set(xs.subarray(offset, offset + outs.length));
    return out;
  }
  const rank = x.shape.length;
  const rowLength = size[rank - 1];
  const rows = outs.length / rowLength;
  const index = new Array<number>(rank - 1).fill(0); // position among the leading axes of out
  for (let row = 0; row < rows; row++) {
    let offset = begin[rank - 1];
    for (let axis = 0; axis < rank - 1; axis++) offset += (begin[axis] + index[axis]) * strides[axis];
    outs.set(xs.subarray(offset, offset + rowLength), row * rowLength);
    for (let axis = rank - 2; axis >= 0 && ++index[axis] === size[axis]; axis--) index[axis] = 0;
  }
  return out;
}

/**
 * Registers kernelFunc in place of tfjs's; the original's setup (its C++ bindings) stays, for a backend started
 * later.
 */
function replaceKernel(name: string, kernelFunc: (args: KernelArgs) => Info | Info[]): void {
  const original = tf.getKernel(name, 'wasm');
  if (!original) throw new Error(`tfjs-backend-wasm has no ${name} kernel to replace`);
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ ...original, kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

/** The selected variant's register-only multiply-add rate on this thread (GFLOP/s), or null without the module. */
export function wasmPeakGflops(): number | null {
  return compactGemmFor(tf.backend() as BackendWasm)?.peakGflops() ?? null;
}

/** Whether the wasm backend in use runs on shared memory (tfjs's threaded build): helper threads can join it. */
export function wasmMemoryShared(): boolean {
  const memory = moduleMemory(tf.backend() as BackendWasm);
  return memory !== null && isShared(memory);
}

/** The tfjs module's memory: exported by the single-threaded builds, created in JS by the threaded one. */
function moduleMemory(backend: BackendWasm): WebAssembly.Memory | null {
  const module = backend.wasm as unknown as { asm?: { memory?: WebAssembly.Memory }; wasmMemory?: WebAssembly.Memory };
  return module.wasmMemory ?? module.asm?.memory ?? null;
}

/**
 * The kernel of the selected arithmetic variant bound to the backend's memory, made once per (backend,
 * variant); null where the engine cannot run it (no SIMD).
 */
function perVariant<F>(
  instantiate: (memory: WebAssembly.Memory, variant: ArithmeticVariant, threads: number) => F | null,
): (backend: BackendWasm) => F | null {
  const made = new WeakMap<BackendWasm, Map<ArithmeticVariant, F | null>>();
  return (backend) => {
    const variant = selectedArithmetic();
    let byVariant = made.get(backend);
    if (!byVariant) made.set(backend, (byVariant = new Map()));
    if (!byVariant.has(variant)) {
      const memory = moduleMemory(backend);
      byVariant.set(variant, memory && instantiate(memory, variant, gemmThreadCount() ?? getThreadsCount()));
    }
    return byVariant.get(variant) ?? null;
  };
}

/** The C GEMM (compact-gemm.ts) of the selected variant, one per backend and variant. */
const compactGemmFor = perVariant<CompactGemm>(instantiateCompactGemm);

/** out = A·B per batch with the C GEMM (lm_gemm); null when the shapes are not ones it takes. */
function batchMatMulGemm(gemm: CompactGemm, args: KernelArgs): Info | null {
  const { a, b } = args.inputs;
  const transposeA = Boolean(args.attrs.transposeA);
  const transposeB = Boolean(args.attrs.transposeB);
  const [ra, rb] = [a.shape.length, b.shape.length];
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || ra < 2 || rb < 2) return null;
  const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
  // plain 2-D products are XNNPACK's; other broadcasts are left to tfjs
  if (
    (batchA === 1 && batchB === 1 && !transposeA && !transposeB) ||
    (batchA !== batchB && batchA !== 1 && batchB !== 1)
  )
    return null;
  const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  const batch = Math.max(batchA, batchB);
  const outShape = [...tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2)), m, n];
  const out = args.backend.makeOutput(outShape, 'float32');
  if (m * n * batch === 0) return out;
  if (k === 0) {
    args.backend.typedArrayFromHeap(out).fill(0);
    return out;
  }
  const offset = (t: Info) => args.backend.dataIdMap.get(t.dataId)!.memoryOffset as number;
  const left = { at: offset(a), row: transposeA ? 1 : k, col: transposeA ? m : 1, batch: batchA === 1 ? 0 : m * k };
  const right = { at: offset(b), row: transposeB ? 1 : n, col: transposeB ? k : 1, batch: batchB === 1 ? 0 : k * n };
  // Few rows and many columns (LoRA's dA, dB: r × d): the panels would be re-packed for a handful of rows.
  // Cᵀ = Bᵀ·Aᵀ instead, written transposed: each element is the same products summed in the same order.
  const flip = m <= 16 && n >= 2 * m;
  const scratch = args.backend.makeOutput([gemm.gemmScratchFloats(flip ? n : m)], 'float32');
  const swap = (o: typeof left) => ({ at: o.at, row: o.col, col: o.row, batch: o.batch });
  const c = { at: offset(out), row: n, col: 1, batch: m * n };
  if (flip) gemm.gemm(swap(right), swap(left), swap(c), { batch, m: n, k, n: m }, offset(scratch));
  else gemm.gemm(left, right, c, { batch, m, k, n }, offset(scratch));
  args.backend.disposeData(scratch.dataId);
  return out;
}

/** The compact-base kernels for the wasm backend, on views of its heap. */
function registerCompactKernels(): void {
  const heapView = (backend: BackendWasm, args: KernelArgs) => {
    const attrs = args.attrs as unknown as CompactAttrs;
    const { codes, scales } = args.inputs;
    return compactView(
      attrs,
      backend.typedArrayFromHeap(codes) as Int32Array,
      backend.typedArrayFromHeap(scales) as Float32Array,
    );
  };
  tf.registerKernel({
    kernelName: COMPACT_MATMUL,
    backendName: 'wasm',
    kernelFunc: ((args: KernelArgs) => {
      const { backend } = args;
      const attrs = args.attrs as unknown as CompactAttrs;
      const gemm = compactGemmFor(backend);
      if (!gemm) throw new Error('the compact-base kernels need WebAssembly SIMD, which this engine lacks');
      const { x, codes, scales } = args.inputs;
      const [n, outer] = productShape(x, attrs);
      const out = backend.makeOutput([n, outer], 'float32');
      const scratch = backend.makeOutput([gemm.scratchFloats(n)], 'float32');
      // Offsets only after the allocations: growing the heap moves nothing, but views detach.
      const offset = (t: Info) => (t.shape.includes(0) ? 0 : (backend.dataIdMap.get(t.dataId)!.memoryOffset as number));
      const at = {
        data: offset(codes),
        scales: offset(scales),
        x: offset(x),
        out: offset(out),
        scratch: offset(scratch),
      };
      gemm.product(attrs, attrs.transposed ?? false, at, n);
      backend.disposeData(scratch.dataId);
      return out;
    }) as unknown as tf.KernelFunc,
  });
  tf.registerKernel({
    kernelName: COMPACT_GATHER,
    backendName: 'wasm',
    kernelFunc: ((args: KernelArgs) => {
      const { backend } = args;
      const attrs = args.attrs as unknown as CompactAttrs;
      const { ids } = args.inputs;
      const out = backend.makeOutput([ids.shape[0], attrs.layout.cols], 'float32');
      const idValues = backend.typedArrayFromHeap(ids) as Int32Array;
      compactGather(heapView(backend, args), idValues, backend.typedArrayFromHeap(out) as Float32Array, 0);
      return out;
    }) as unknown as tf.KernelFunc,
  });
}

/** Registers a wasm kernel that runs the selected variant's C module (kernels/compact-gemm.ts). */
function registerWithModule(name: string, kernelFunc: (args: KernelArgs, gemm: CompactGemm) => Info | Info[]): void {
  tf.registerKernel({
    kernelName: name,
    backendName: 'wasm',
    kernelFunc: ((args: KernelArgs) => {
      const gemm = compactGemmFor(args.backend);
      if (!gemm) throw new Error(`${name} needs WebAssembly SIMD, which this engine lacks`);
      return kernelFunc(args, gemm);
    }) as unknown as tf.KernelFunc,
  });
}

/** A tensor's byte offset in the wasm heap. */
const at = (backend: BackendWasm, t: Info) => backend.dataIdMap.get(t.dataId)!.memoryOffset as number;

/**
 * The fused row-wise kernels (shared/model/norm-ops.ts names them; kernels/c/fused.c computes them):
 * x (rows, d) and per-row statistics (rows), weights (d), all float32 on the heap.
 */
function registerFusedKernels(): void {
  const register = (name: string, kernelFunc: (args: KernelArgs, fused: FusedKernels) => Info | Info[]) =>
    registerWithModule(name, (args, gemm) => kernelFunc(args, gemm.fused));
  const rowsOf = (x: Info) => {
    const d = x.shape[x.shape.length - 1];
    return [tf.util.sizeFromShape(x.shape) / d, d];
  };
  register(FUSED_RMS_NORM, ({ inputs: { x, w }, backend, attrs }, f) => {
    const [rows, d] = rowsOf(x);
    const [y, rstd] = [backend.makeOutput(x.shape, 'float32'), backend.makeOutput([rows], 'float32')];
    f.lm_rms_norm(at(backend, x), at(backend, w), at(backend, y), at(backend, rstd), rows, d, attrs.eps as number);
    return [y, rstd];
  });
  register(FUSED_RMS_NORM_GRAD, ({ inputs: { dy, x, w, rstd }, backend }, f) => {
    const [rows, d] = rowsOf(x);
    const [dx, scratch] = [backend.makeOutput(x.shape, 'float32'), backend.makeOutput([d], 'float32')];
    const ats = [dy, x, w, rstd, dx].map((t) => at(backend, t)) as [number, number, number, number, number];
    f.lm_rms_norm_grad(...ats, rows, d, at(backend, scratch));
    backend.disposeData(scratch.dataId);
    return dx;
  });
  register(FUSED_LAYER_NORM, ({ inputs: { x, w, b }, backend, attrs }, f) => {
    const [rows, d] = rowsOf(x);
    const outs = [backend.makeOutput(x.shape, 'float32'), ...[0, 1].map(() => backend.makeOutput([rows], 'float32'))];
    const ats = [x, w, b, ...outs].map((t) => at(backend, t)) as [number, number, number, number, number, number];
    f.lm_layer_norm(...ats, rows, d, attrs.eps as number);
    return outs;
  });
  register(FUSED_LAYER_NORM_GRAD, ({ inputs: { dy, x, w, mean, rstd }, backend }, f) => {
    const [rows, d] = rowsOf(x);
    const [dx, scratch] = [backend.makeOutput(x.shape, 'float32'), backend.makeOutput([d], 'float32')];
    const ats = [dy, x, w, mean, rstd, dx].map((t) => at(backend, t)) as [
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    f.lm_layer_norm_grad(...ats, rows, d, at(backend, scratch));
    backend.disposeData(scratch.dataId);
    return dx;
  });
  register(FUSED_SWIGLU, ({ inputs: { g, u }, backend }, f) => {
    const out = backend.makeOutput(g.shape, 'float32');
    f.lm_swiglu(at(backend, g), at(backend, u), at(backend, out), tf.util.sizeFromShape(g.shape));
    return out;
  });
  register(FUSED_SWIGLU_GRAD, ({ inputs: { dy, g, u }, backend }, f) => {
    const [dg, du] = [backend.makeOutput(g.shape, 'float32'), backend.makeOutput(g.shape, 'float32')];
    const ats = [dy, g, u, dg, du].map((t) => at(backend, t)) as [number, number, number, number, number];
    f.lm_swiglu_grad(...ats, tf.util.sizeFromShape(g.shape));
    return [dg, du];
  });
  register(FUSED_GELU, ({ inputs: { x }, backend }, f) => {
    const out = backend.makeOutput(x.shape, 'float32');
    f.lm_gelu(at(backend, x), at(backend, out), tf.util.sizeFromShape(x.shape));
    return out;
  });
  const rope =
    (backward: number) =>
    ({ inputs, backend }: KernelArgs, f: FusedKernels) => {
      const x = backward ? inputs.dy : inputs.x;
      const { cos, sin } = inputs;
      const [rows, hs] = cos.shape;
      const out = backend.makeOutput(x.shape, 'float32');
      const ats = [x, cos, sin, out].map((t) => at(backend, t)) as [number, number, number, number];
      f.lm_rope(...ats, rows, x.shape[1] / hs, hs, backward);
      return out;
    };
  register(FUSED_ROPE, rope(0));
  register(FUSED_ROPE_GRAD, rope(1));
  register(FUSED_MASKED_SOFTMAX, ({ inputs: { scores, mask }, backend, attrs }, f) => {
    const s = scores.shape[scores.shape.length - 1];
    const p = backend.makeOutput(scores.shape, 'float32');
    const rows = tf.util.sizeFromShape(scores.shape) / s;
    f.lm_masked_softmax(
      at(backend, scores),
      at(backend, mask),
      at(backend, p),
      rows,
      mask.shape[0],
      s,
      attrs.scale as number,
    );
    return p;
  });
  register(FUSED_SOFTMAX_GRAD, ({ inputs: { dp, p }, backend, attrs }, f) => {
    const s = p.shape[p.shape.length - 1];
    const ds = backend.makeOutput(p.shape, 'float32');
    f.lm_softmax_grad(
      at(backend, dp),
      at(backend, p),
      at(backend, ds),
      tf.util.sizeFromShape(p.shape) / s,
      s,
      attrs.scale as number,
    );
    return ds;
  });
  register(FUSED_GELU_GRAD, ({ inputs: { dy, x }, backend }, f) => {
    const dx = backend.makeOutput(x.shape, 'float32');
    f.lm_gelu_grad(at(backend, dy), at(backend, x), at(backend, dx), tf.util.sizeFromShape(x.shape));
    return dx;
  });
}

/**
 * The adapted-linear kernels (shared/model/linear-ops.ts fusedLoraLinear): kernels/c/fused.c's row passes,
 * and dA = duᵀ x, dB = dyᵀ u through lm_gemm as BatchMatMul runs them.
 */
function registerLoraKernels(): void {
  const register = registerWithModule;
  register(FUSED_LORA, ({ inputs: { y, x, a, b }, backend, attrs }, gemm) => {
    const [n, dIn] = x.shape;
    const [dOut, r] = b.shape;
    const out = backend.makeOutput([n, dOut], 'float32');
    const u = backend.makeOutput([n, r], 'float32');
    const scratch = backend.makeOutput([r * dOut], 'float32');
    const [xa, aa, ba, ya, oa, ua, sa] = [x, a, b, y, out, u, scratch].map((t) => at(backend, t));
    gemm.fused.lm_lora_forward(xa, aa, ba, ya, oa, ua, n, dIn, dOut, r, attrs.scale as number, sa);
    backend.disposeData(scratch.dataId);
    return [out, u];
  });
  register(FUSED_LORA_GRAD, ({ inputs: { dy, x, a, b, u, dxFrozen }, backend, attrs }, gemm) => {
    const [n, dIn] = x.shape;
    const [dOut, r] = b.shape;
    const dx = backend.makeOutput([n, dIn], 'float32');
    const du = backend.makeOutput([n, r], 'float32');
    const scratch = backend.makeOutput([r * dOut], 'float32');
    const frozen = dxFrozen ? at(backend, dxFrozen) : 0;
    const [dya, aa, ba, dxa, dua, sa] = [dy, a, b, dx, du, scratch].map((t) => at(backend, t));
    gemm.fused.lm_lora_backward(dya, aa, ba, frozen, dxa, dua, n, dIn, dOut, r, attrs.scale as number, sa);
    backend.disposeData(scratch.dataId);
    const product = (left: Info, right: Info) =>
      batchMatMulGemm(gemm, {
        inputs: { a: left, b: right },
        backend,
        attrs: { transposeA: true, transposeB: false },
      })!;
    const dA = product(du, x); // (r, d_in)
    const dB = product(dy, u); // (d_out, r)
    backend.disposeData(du.dataId);
    return [dx, dA, dB];
  });
}

let installed = false;

/** Installs the replacements once; string tensors (never used by loramesh) keep the original kernels. */
export function installWasmKernels(): void {
  if (installed) return;
  installed = true;
  registerCompactKernels();
  registerFusedKernels();
  registerLoraKernels();
  const original = (name: string) =>
    tf.getKernel(name, 'wasm')!.kernelFunc as unknown as (args: KernelArgs) => Info | Info[];
  const [identity, slice, splitV, unpack, batchMatMul, transpose] = [
    'Identity',
    'Slice',
    'SplitV',
    'Unpack',
    'BatchMatMul',
    'Transpose',
  ].map(original);

  replaceKernel('Identity', (args) => {
    const { x } = args.inputs;
    if (x.dtype === 'string') return identity(args);
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  });

  replaceKernel('BatchMatMul', (args) => {
    const gemm = compactGemmFor(args.backend);
    return (gemm && batchMatMulGemm(gemm, args)) ?? batchMatMul(args);
  });

  // Attention's head transposes, (B, T, H, hs) ↔ (B, H, T, hs): tfjs's general loop took ~50 µs each for the
  // demo's 40,960 floats. A copy of hs-float runs, so the same bits.
  replaceKernel('Transpose', (args) => {
    const { x } = args.inputs;
    const perm = args.attrs.perm as number[];
    const fused = compactGemmFor(args.backend)?.fused;
    const swap =
      perm.length === 4 && perm[0] === 0 && perm[1] === 2 && perm[2] === 1 && perm[3] === 3
        ? x.shape
        : perm.length === 3 && perm[0] === 1 && perm[1] === 0 && perm[2] === 2
          ? [1, ...x.shape]
          : null;
    if (!fused || !swap || x.dtype !== 'float32') return transpose(args);
    const out = args.backend.makeOutput(
      perm.map((axis) => x.shape[axis]),
      'float32',
    );
    if (out.shape.includes(0)) return out;
    const offset = (t: Info) => args.backend.dataIdMap.get(t.dataId)!.memoryOffset as number;
    fused.lm_swap_axes(offset(x), offset(out), swap[0], swap[1], swap[2], swap[3]);
    return out;
  });

  replaceKernel('Slice', (args) => {
    const { x } = args.inputs;
    if (x.dtype === 'string') return slice(args);
    return sliceFromHeap(args.backend, x, args.attrs.begin as number[], args.attrs.size as number[]);
  });

  replaceKernel('SplitV', (args) => {
    const { x } = args.inputs;
    if (x.dtype === 'string') return splitV(args);
    const axis = tf.util.parseAxisParam(args.attrs.axis as number, x.shape)[0];
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, args.attrs.numOrSizeSplits as number[], axis);
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((s) => {
      const size = [...x.shape];
      size[axis] = s;
      const part = sliceFromHeap(args.backend, x, [...begin], size);
      begin[axis] += s;
      return part;
    });
  });

  replaceKernel('Unpack', (args) => {
    const { value } = args.inputs;
    if (value.dtype === 'string') return unpack(args);
    const rank = value.shape.length;
    const axis = (args.attrs.axis as number) < 0 ? (args.attrs.axis as number) + rank : (args.attrs.axis as number);
    const outShape = value.shape.filter((_, i) => i !== axis);
    const size = [...value.shape];
    size[axis] = 1;
    return Array.from({ length: value.shape[axis] }, (_, i) => {
      const begin = new Array<number>(rank).fill(0);
      begin[axis] = i;
      const part = sliceFromHeap(args.backend, value, begin, size);
      return { ...part, shape: outShape };
    });
  });
}
