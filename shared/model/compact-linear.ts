/**
 * Frozen matrices held in a compact format (shared/quant: f32, f16, bf16, int8, nf4) and used
 * without widening them: the linear layers' two products and the embedding lookup run tfjs kernels
 * that dequantize a small tile at a time (shared/quant/compact-matmul.ts). One stored copy per
 * matrix: its packed words (an int32 tensor; tfjs has no uint8 dtype) and its float32 block scales.
 *
 * The kernels exist for the cpu backend (here, JavaScript) and wasm (kernels/wasm-kernels.ts,
 * WebAssembly SIMD), which give the same bits, and for webgpu (kernels/webgpu-compact.ts, WGSL), which
 * sums in another order and agrees within float32 rounding. A backend without them (webgl,
 * tensorflow) dequantizes one layer at a time from a host copy, for that product only.
 */
import * as tf from '@tensorflow/tfjs-core';
import {
  describeBaseSpec,
  type MatrixLayout,
  matrixLayout,
  type PackedMatrix,
  type ResolvedBaseSpec,
} from '../quant/formats.ts';
import {
  type CompactView,
  compactGather,
  compactProduct,
  panelKernelJs,
  scratchFloats,
  TAIL_OFFSET,
} from '../quant/compact-matmul.ts';
import { blockScales, dequantizeMatrix } from '../quant/quantize.ts';
import { customOp } from './custom-op.ts';
import type { FrozenProducts } from './types.ts';

/** y = x·Wᵀ (n, rows), or with attrs.transposed dx = dy·W (n, cols). Inputs x, codes, scales. */
export const COMPACT_MATMUL = 'LoraMeshCompactMatMul';
/** rows `ids` of W as float32 (n, cols). Inputs ids (int32), codes, scales. */
export const COMPACT_GATHER = 'LoraMeshCompactGather';

/** What the kernels get as attributes: the format and the packed layout. */
export interface CompactAttrs {
  spec: ResolvedBaseSpec;
  layout: MatrixLayout;
  transposed?: boolean;
}

/** A frozen matrix W [rows, cols] (nn.Linear's (d_out, d_in)) in a compact format. */
export class CompactWeight {
  readonly spec: ResolvedBaseSpec;
  readonly layout: MatrixLayout;
  /** the packed words, on backends with the kernels */
  readonly codes?: tf.Tensor1D;
  /** the block scales (empty for f32/f16/bf16), on backends with the kernels */
  readonly scales?: tf.Tensor1D;
  /** the packed matrix itself, on backends without the kernels */
  readonly host?: PackedMatrix;

  /**
   * storedShape: the checkpoint tensor's shape, [cols, rows] for GPT-2's Conv1D (which stores
   * (d_in, d_out)); the compact matrix is always (d_out, d_in), blocks along d_in.
   */
  constructor(
    packed: PackedMatrix,
    readonly storedShape: readonly number[] = [packed.rows, packed.cols],
  ) {
    this.spec = packed.spec;
    this.layout = matrixLayout(packed.spec, packed.rows, packed.cols);
    if (hasCompactKernels()) {
      const words = new Int32Array(packed.data.buffer, packed.data.byteOffset, packed.data.byteLength / 4);
      this.codes = tf.keep(tf.tensor1d(words, 'int32'));
      this.scales = tf.keep(tf.tensor1d(blockScales(packed), 'float32'));
    } else {
      this.host = packed;
    }
  }

  /** The checkpoint's shape (what checkWeights compares). */
  get shape(): number[] {
    return [...this.storedShape];
  }

  get rows(): number {
    return this.layout.rows;
  }

  get cols(): number {
    return this.layout.cols;
  }

  /** Bytes held: packed words and float32 block scales (the double quantization is decoded at load). */
  get heldBytes(): number {
    return this.layout.dataBytes + 4 * this.layout.rows * this.layout.blocksPerRow;
  }

  describe(): string {
    return `${describeBaseSpec(this.spec)} [${this.rows}, ${this.cols}]`;
  }

  dispose(): void {
    this.codes?.dispose();
    this.scales?.dispose();
  }

  attrs(transposed = false): CompactAttrs {
    return { spec: this.spec, layout: this.layout, transposed };
  }
}

/** Whether the backend in use runs the compact kernels (else products dequantize a layer at a time). */
export function hasCompactKernels(backend = tf.getBackend()): boolean {
  return tf.getKernel(COMPACT_MATMUL, backend) !== undefined;
}

/** x·Wᵀ, or x·W when transposed; x (n, cols) or (n, rows). */
function product(x: tf.Tensor2D, w: CompactWeight, transposed: boolean): tf.Tensor2D {
  if (w.codes && w.scales)
    return tf
      .engine()
      .runKernel(
        COMPACT_MATMUL,
        { x, codes: w.codes, scales: w.scales },
        w.attrs(transposed) as unknown as tf.NamedAttrMap,
      ) as tf.Tensor2D;
  return tf.tidy(() => tf.matMul(x, tf.tensor2d(dequantizeMatrix(w.host!), [w.rows, w.cols]), false, !transposed));
}

/**
 * y = x·Wᵀ for a compact frozen W: the gradient flows to x only (dx = dy·W, the same kernel).
 * x (n, cols) → (n, rows).
 */
export function compactLinear(x: tf.Tensor2D, w: CompactWeight): tf.Tensor2D {
  const op = customOp(([input]) => ({
    value: product(input as tf.Tensor2D, w, false),
    gradFunc: (dy) => [product(dy as tf.Tensor2D, w, true)],
  }));
  return op(x) as tf.Tensor2D;
}

/** The two products of compactLinear, outside autodiff. */
export function compactProducts(w: CompactWeight): FrozenProducts {
  return { forward: (x) => product(x, w, false), backward: (dy) => product(dy, w, true) };
}

/** Rows ids of W, dequantized: (n, cols). No gradient (the table is frozen). */
export function compactEmbed(ids: tf.Tensor1D, w: CompactWeight): tf.Tensor2D {
  if (w.codes && w.scales)
    return tf
      .engine()
      .runKernel(
        COMPACT_GATHER,
        { ids, codes: w.codes, scales: w.scales },
        w.attrs() as unknown as tf.NamedAttrMap,
      ) as tf.Tensor2D;
  // No synchronous read of ids (WebGPU in Node cannot): the table is widened for this lookup only.
  return tf.tidy(() => tf.gather(tf.tensor2d(dequantizeMatrix(w.host!), [w.rows, w.cols]), ids));
}

/** A kernel's view of W from its packed words and block scales, wherever those live. */
export function compactView(attrs: CompactAttrs, words: Int32Array, scales: Float32Array): CompactView {
  return {
    spec: attrs.spec,
    layout: attrs.layout,
    data: new Uint8Array(words.buffer, words.byteOffset, attrs.layout.dataBytes),
    scales,
  };
}

/** The output shape of a compact product. */
export function productShape(x: tf.TensorInfo, attrs: CompactAttrs): [number, number] {
  return [x.shape[0], attrs.transposed ? attrs.layout.cols : attrs.layout.rows];
}

type CpuBackend = {
  data: { get(id: unknown): { values: unknown } };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values: tf.backend_util.BackendValues): tf.TensorInfo;
};
type CpuArgs = { inputs: Record<string, tf.TensorInfo>; backend: CpuBackend; attrs: CompactAttrs };

/** The cpu backend's kernels: the JavaScript micro-kernel over one arena holding x, the result and scratch. */
function registerCpuKernels(): void {
  if (tf.getKernel(COMPACT_MATMUL, 'cpu')) return;
  const values = (b: CpuBackend, t: tf.TensorInfo) => b.data.get(t.dataId).values;
  tf.registerKernel({
    kernelName: COMPACT_MATMUL,
    backendName: 'cpu',
    kernelFunc: (({ inputs, backend, attrs }: CpuArgs) => {
      const { x, codes, scales } = inputs;
      const view = compactView(attrs, values(backend, codes) as Int32Array, values(backend, scales) as Float32Array);
      const [n, outer] = productShape(x, attrs);
      const inner = x.shape[1];
      const f = new Float32Array(n * inner + n * outer + scratchFloats(n));
      f.set(values(backend, x) as Float32Array);
      const panel = n * (inner + outer);
      const arena = { f, x: 0, out: n * inner, panel, tail: panel + TAIL_OFFSET };
      compactProduct(view, attrs.transposed ?? false, n, arena, panelKernelJs(f));
      return backend.makeTensorInfo([n, outer], 'float32', f.slice(arena.out, arena.out + n * outer));
    }) as unknown as tf.KernelFunc,
  });
  tf.registerKernel({
    kernelName: COMPACT_GATHER,
    backendName: 'cpu',
    kernelFunc: (({ inputs, backend, attrs }: CpuArgs) => {
      const { ids, codes, scales } = inputs;
      const view = compactView(attrs, values(backend, codes) as Int32Array, values(backend, scales) as Float32Array);
      const out = new Float32Array(ids.shape[0] * attrs.layout.cols);
      compactGather(view, values(backend, ids) as Int32Array, out, 0);
      return backend.makeTensorInfo([ids.shape[0], attrs.layout.cols], 'float32', out);
    }) as unknown as tf.KernelFunc,
  });
}

registerCpuKernels();
