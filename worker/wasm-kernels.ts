/**
 * Replacements for four tfjs-backend-wasm 4.22 kernels that copy more than they must; the numbers
 * they produce are the same bits, only the copies go. Installed by the Node and browser backend
 * pickers right after the wasm backend starts.
 *
 * - Identity copies its input. The engine clones every tensor it saves for the backward pass
 *   with Identity, so a training step copied each saved activation once more (4% of a GPT-2 step).
 *   Tensors are immutable, so sharing the buffer (a reference count, as the cpu backend does) is
 *   enough.
 * - Slice, SplitV and Unpack read the WHOLE input into a fresh JS array (readSync) before copying
 *   the slice out, once per output: splitting a tensor into n parts copied it n times. These read
 *   a view of the wasm heap instead.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

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

function replaceKernel(name: string, kernelFunc: (args: KernelArgs) => Info | Info[]): void {
  if (!tf.getKernel(name, 'wasm')) throw new Error(`tfjs-backend-wasm has no ${name} kernel to replace`);
  tf.unregisterKernel(name, 'wasm');
  tf.registerKernel({ kernelName: name, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
}

let installed = false;

/** Installs the replacements once; string tensors (never used by loramesh) keep the original kernels. */
export function installWasmKernels(): void {
  if (installed) return;
  installed = true;
  const original = (name: string) => tf.getKernel(name, 'wasm')!.kernelFunc as unknown as (args: KernelArgs) => Info | Info[];
  const [identity, slice, splitV, unpack] = ['Identity', 'Slice', 'SplitV', 'Unpack'].map(original);

  replaceKernel('Identity', (args) => {
    const { x } = args.inputs;
    if (x.dtype === 'string') return identity(args);
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
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
