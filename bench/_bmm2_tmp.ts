import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
await initBackend('wasm', () => {});
const a = tf.randomNormal([640, 8]),
  b = tf.randomNormal([640, 128]);
const at = tf.transpose(a);
for (const [name, f] of [
  ['T', () => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false)],
  ['pre', () => tf.matMul(at as tf.Tensor2D, b as tf.Tensor2D, false, false)],
  ['transpose only', () => tf.transpose(a)],
] as const) {
  let best = Infinity;
  for (let i = 0; i < 50; i++) {
    const t0 = performance.now();
    const y = (f as () => tf.Tensor)();
    y.dataSync();
    y.dispose();
    best = Math.min(best, performance.now() - t0);
  }
  console.log(name, (best * 1000).toFixed(0), 'µs');
}
