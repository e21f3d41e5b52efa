// Child process of test/kernels/wasm-kernels.test.ts: starts wasm (thread count from
// LORAMESH_WASM_THREADS) and prints the thread count and a checksum of one matmul.
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../node/backend.ts';

const info = await initBackend('wasm');
const a = tf.tensor2d(
  Float32Array.from({ length: 96 * 80 }, (_, i) => Math.sin(i)),
  [96, 80],
);
const b = tf.tensor2d(
  Float32Array.from({ length: 80 * 70 }, (_, i) => Math.cos(i)),
  [80, 70],
);
const product = tf.matMul(a, b).dataSync() as Float32Array;
console.log(JSON.stringify({ threads: info.threads, checksum: product.reduce((s, v, i) => s + v * (i % 7), 0) }));
