import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
await initBackend('wasm', () => {});
const cases: [number[], number[], boolean, boolean][] = [
  [[640, 8], [640, 128], true, false],
  [[8, 640], [640, 128], false, false],
  [[640, 128], [640, 8], true, false],
  [[640, 8], [128, 8], false, true],
  [[64, 40, 32], [64, 20, 32], false, true],
];
for (const [sa, sb, ta, tb] of cases) {
  const a = tf.randomNormal(sa),
    b = tf.randomNormal(sb);
  let best = Infinity;
  for (let i = 0; i < 30; i++) {
    const t0 = performance.now();
    const y = tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, ta, tb);
    y.dataSync();
    y.dispose();
    best = Math.min(best, performance.now() - t0);
  }
  console.log(JSON.stringify([sa, sb, ta, tb]), (best * 1000).toFixed(0), 'µs');
}
