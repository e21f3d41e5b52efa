import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
await initBackend('wasm', () => {});
const a = tf.randomNormal([640, 8]),
  b = tf.randomNormal([640, 128]);
for (let i = 0; i < 30; i++) tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false).dispose();
(globalThis as any).__t = [];
const t0 = performance.now();
tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false).dispose();
const ts = (globalThis as any).__t as [number, number][];
let prev = t0;
console.log(
  ts
    .map(([i, t]) => {
      const d = t - prev;
      prev = t;
      return `${i}:${(d * 1000).toFixed(0)}`;
    })
    .join(' '),
  'end',
  ((performance.now() - prev) * 1000).toFixed(0),
);
