// Run as a child by test/kernels/compact-gemm-threads.test.ts, with LORAMESH_WASM_THREADS set: compact
// products of every base format, large enough to be split over the threads (kernels/gemm-threads.ts),
// in the arithmetic variant of argv[2]. Prints one JSON line: the thread count, how many products
// were split over helper threads, and a sha256 of every output's bytes. BREAK_HELPERS=1 gives the helpers a
// module that cannot link (their failures must not change a byte).
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../node/backend.ts';
import { selectArithmetic } from '../../kernels/arithmetic.ts';
import { gemmSplitProducts, setGemmHelperSpawner } from '../../kernels/gemm-threads.ts';
import { Worker } from 'node:worker_threads';
import type { ArithmeticVariant } from '../../shared/arithmetic.ts';
import { CompactWeight, compactProducts } from '../../shared/model/compact-linear.ts';
import { quantizeMatrix } from '../../shared/quant/quantize.ts';
import { COMPACT_SPECS, gaussian } from './compact.ts';

const info = await initBackend('wasm', () => {});
if (process.env.BREAK_HELPERS === '1') {
  // Helpers given a module that cannot link to the shared memory: each counts a failure per job, and
  // the caller must compute their shares itself (kernels/gemm-threads.ts).
  const unlinkable = new WebAssembly.Module(
    new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 2, 15, 1, 3, 101, 110, 118, 6, 109, 101, 109, 111, 114, 121, 2, 0, 1]),
  );
  setGemmHelperSpawner((source, init) => {
    const helper = new Worker(`${source}\nrequire('node:worker_threads').parentPort.once('message', run);`, {
      eval: true,
    });
    helper.postMessage({ ...init, module: unlinkable });
    helper.unref();
    return helper;
  }, info.threads);
}
selectArithmetic((process.argv[2] ?? 'simd128') as ArithmeticVariant);
const hash = createHash('sha256');
// (rows = d_out, cols = d_in, n): ≥ 2^20 multiply-adds each, a narrow last panel, 1–7 rows past a 4-row block
const SHAPES: [number, number, number][] = [
  [203, 700, 37],
  [96, 1500, 9],
];
let seed = 1;
for (const spec of COMPACT_SPECS)
  for (const [rows, cols, n] of SHAPES) {
    const weight = new CompactWeight(quantizeMatrix(gaussian(rows * cols, seed++, 0.2), rows, cols, spec));
    const products = compactProducts(weight);
    const x = tf.tensor2d(gaussian(n * cols, seed++), [n, cols]);
    const dy = tf.tensor2d(gaussian(n * rows, seed++), [n, rows]);
    for (const y of [products.forward(x), products.backward(dy)]) {
      hash.update(new Uint8Array((y.dataSync() as Float32Array).buffer));
      y.dispose();
    }
    tf.dispose([x, dy]);
    weight.dispose();
  }
console.log(JSON.stringify({ threads: info.threads, split: gemmSplitProducts(), sha256: hash.digest('hex') }));
