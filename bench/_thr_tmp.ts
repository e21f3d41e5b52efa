import * as tf from '@tensorflow/tfjs-core';
import { CompactWeight, compactProducts } from '../shared/model/compact-linear.ts';
import { quantizeMatrix } from '../shared/quant/quantize.ts';
import { initBackend } from '../node/backend.ts';
await initBackend('wasm', () => {}, { wasmThreads: Number(process.argv[2]) });
for (const [n, dIn, dOut] of [
  [640, 128, 128],
  [640, 128, 256],
  [640, 256, 128],
  [256, 768, 3072],
]) {
  const w = new CompactWeight(
    quantizeMatrix(tf.randomNormal([dOut * dIn]).dataSync() as Float32Array, dOut, dIn, { format: 'f32' }),
  );
  const p = compactProducts(w);
  const x = tf.randomNormal([n, dIn]) as tf.Tensor2D;
  const times: number[] = [];
  for (let i = 0; i < 40; i++) {
    const t0 = performance.now();
    const y = p.forward(x);
    y.dataSync();
    y.dispose();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  console.log(
    `${n}x${dIn}->${dOut}`,
    'best',
    (times[0] * 1000).toFixed(0),
    'median',
    (times[20] * 1000).toFixed(0),
    'µs',
    ((2 * n * dIn * dOut) / times[20] / 1e6).toFixed(1),
    'GFLOP/s',
  );
}
