import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
await initBackend('wasm', () => {});
const a = tf.randomNormal([640, 8]),
  b = tf.randomNormal([640, 128]);
for (let i = 0; i < 5; i++) tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false).dispose();
const p = await tf.profile(() => {
  for (let i = 0; i < 20; i++) tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false).dispose();
});
const agg = new Map<string, number>();
for (const k of p.kernels) agg.set(k.name, (agg.get(k.name) ?? 0) + (k.kernelTimeMs as number));
console.log([...agg].map(([n, t]) => `${n} ${((t / 20) * 1000).toFixed(0)}µs`).join(', '));
let best = Infinity;
for (let i = 0; i < 50; i++) {
  const t0 = performance.now();
  const y = tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false);
  y.dataSync();
  y.dispose();
  best = Math.min(best, performance.now() - t0);
}
console.log('wall', (best * 1000).toFixed(0));
