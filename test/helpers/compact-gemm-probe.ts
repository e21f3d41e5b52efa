// Run as a child by test/kernels/compact-gemm-threads.test.ts, with LORAMESH_WASM_THREADS set: compact
// products of every base format, large enough to be split over the threads (kernels/gemm-threads.ts),
// in the arithmetic variant of argv[2]. Prints one JSON line: the thread count, how many products
// were split over helper threads, and a sha256 of every output's bytes.
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../node/backend.ts';
import { selectArithmetic } from '../../kernels/arithmetic.ts';
import { gemmSplitProducts } from '../../kernels/gemm-threads.ts';
import type { ArithmeticVariant } from '../../shared/arithmetic.ts';
import { CompactWeight, compactProducts } from '../../shared/model/compact-linear.ts';
import { quantizeMatrix } from '../../shared/quant/quantize.ts';
import { COMPACT_SPECS, gaussian } from './compact.ts';

const info = await initBackend('wasm', () => {});
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
