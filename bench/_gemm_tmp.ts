import * as tf from '@tensorflow/tfjs-core';
import { CompactWeight, compactProducts } from '/work/main/shared/model/compact-linear.ts';
import { quantizeMatrix } from '/work/main/shared/quant/quantize.ts';
import { selectArithmetic } from '/work/main/kernels/arithmetic.ts';
import { initBackend } from '/work/main/node/backend.ts';
const threads = Number(process.argv[2] ?? 1);
await initBackend('wasm', () => {}, { wasmThreads: threads });
selectArithmetic((process.argv[3] ?? 'relaxed-fma') as any);
const shapes: [number, number, number][] = [
  [32, 896, 4864],
  [256, 768, 3072],
  [256, 3072, 768],
  [32, 4864, 896],
];
for (const [n, dIn, dOut] of shapes) {
  const flops = 2 * n * dIn * dOut;
  const time = (run: () => tf.Tensor) => {
    let best = Infinity;
    for (let i = 0; i < 8; i++) {
      const t0 = performance.now();
      const y = run();
      y.dataSync();
      y.dispose();
      if (i >= 2) best = Math.min(best, performance.now() - t0);
    }
    return (flops / best / 1e6).toFixed(1);
  };
  const x = tf.randomNormal([n, dIn]) as tf.Tensor2D,
    dy = tf.randomNormal([n, dOut]) as tf.Tensor2D,
    w = tf.randomNormal([dOut, dIn]) as tf.Tensor2D;
  const line = [
    `${n}x${dIn}->${dOut}`,
    'xnn fwd',
    time(() => tf.matMul(x, w, false, true)),
    'xnn bwd',
    time(() => tf.matMul(dy, w)),
  ];
  const values = w.dataSync() as Float32Array;
  for (const format of ['f32', 'int8', 'nf4'] as const) {
    const cw = new CompactWeight(
      quantizeMatrix(values, dOut, dIn, format === 'f32' ? { format } : ({ format, blockSize: 64 } as any)),
    );
    const p = compactProducts(cw);
    line.push(
      `${format} fwd`,
      time(() => p.forward(x)),
      'bwd',
      time(() => p.backward(dy)),
    );
    cw.dispose();
  }
  console.log(line.join(' '));
  tf.dispose([x, dy, w]);
}
