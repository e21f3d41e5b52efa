// The compact-base kernels (shared/model/compact-linear.ts): on wasm (the C GEMM, kernels/c/compact-gemm.c)
// and cpu (JavaScript), both products and the embedding gather, for every format, against the
// product with the dequantized float32 matrix (an independent tf.matMul): within 1e-5 relative
// (‖Δ‖_F / ‖ref‖_F), and bit-identical between the two backends and between a row computed alone and
// in a batch. Shapes cover ragged edges: output widths not a multiple of 8, inner sizes across
// several 256-deep tiles, rows not a multiple of 4, a block that ends mid-row.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../node/backend.ts';
import {
  COMPACT_GATHER,
  COMPACT_MATMUL,
  CompactWeight,
  compactEmbed,
  compactLinear,
  compactProducts,
  hasCompactKernels,
} from '../../shared/model/compact-linear.ts';
import type { BaseFormatSpec } from '../../shared/quant/formats.ts';
import { dequantizeMatrix, quantizeMatrix } from '../../shared/quant/quantize.ts';
import { COMPACT_SPECS, gaussian } from '../helpers/compact.ts';
import { f16ToF32 } from '../../shared/formats/half.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';

await initBackend('wasm');

// (rows = d_out, cols = d_in, n)
const SHAPES: [number, number, number][] = [
  [13, 70, 5],
  [64, 600, 9],
  [8, 8, 1],
  [40, 1101, 13], // 4-row blocks and a rest, an inner size that is not a multiple of 4, a 5-column last panel
];

/** ‖a − b‖_F / ‖b‖_F */
const relative = (a: Float32Array, b: Float32Array) => relativeL2Distance([[b, a]]);

/** Forward y = x·Wᵀ, backward dx = dy·W (through the gradient), and the gather, on one backend. */
async function run(backend: string, spec: BaseFormatSpec, [rows, cols, n]: [number, number, number], seed: number) {
  await tf.setBackend(backend);
  const w = gaussian(rows * cols, seed, 0.2);
  const packed = quantizeMatrix(w, rows, cols, spec);
  const weight = new CompactWeight(packed);
  assert.ok(weight.codes && !weight.host, `${backend} holds the packed words on the backend`);
  const x = tf.tensor2d(gaussian(n * cols, seed + 1), [n, cols]);
  const dy = tf.tensor2d(gaussian(n * rows, seed + 2), [n, rows]);
  const y = compactLinear(x, weight);
  const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(compactLinear(input as tf.Tensor2D, weight), dy)))(x);
  const ids = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % rows);
  const rowsOut = compactEmbed(tf.tensor1d(ids, 'int32'), weight);
  const dense = tf.tensor2d(dequantizeMatrix(packed), [rows, cols]);
  const out = {
    y: y.dataSync() as Float32Array,
    dx: dx.dataSync() as Float32Array,
    rows: rowsOut.dataSync() as Float32Array,
    yRef: tf.matMul(x, dense, false, true).dataSync() as Float32Array,
    dxRef: tf.matMul(dy, dense).dataSync() as Float32Array,
    rowsRef: tf.gather(dense, tf.tensor1d(ids, 'int32')).dataSync() as Float32Array,
    firstRowAlone: compactLinear(tf.slice(x, [0, 0], [1, cols]), weight).dataSync() as Float32Array,
  };
  weight.dispose();
  return out;
}

test('compact products and gather equal the dequantized float32 matrix (1e-5 relative) on wasm and cpu, bit-identical between them', async () => {
  assert.ok(hasCompactKernels('wasm') && hasCompactKernels('cpu'));
  let seed = 100;
  for (const spec of COMPACT_SPECS)
    for (const shape of SHAPES) {
      const what = `${JSON.stringify(spec)} [${shape}]`;
      const wasm = await run('wasm', spec, shape, seed);
      const cpu = await run('cpu', spec, shape, seed);
      seed += 10;
      assert.ok(relative(wasm.y, wasm.yRef) <= 1e-5, `${what} forward: ${relative(wasm.y, wasm.yRef)}`);
      assert.ok(relative(wasm.dx, wasm.dxRef) <= 1e-5, `${what} backward: ${relative(wasm.dx, wasm.dxRef)}`);
      assert.deepEqual(wasm.rows, wasm.rowsRef, `${what} gather is the dequantized rows exactly`);
      assert.deepEqual(wasm.y, cpu.y, `${what} forward wasm == cpu bits`);
      assert.deepEqual(wasm.dx, cpu.dx, `${what} backward wasm == cpu bits`);
      assert.deepEqual(cpu.rows, wasm.rows);
      assert.deepEqual(wasm.firstRowAlone, wasm.y.subarray(0, shape[0]), `${what} a row alone == in the batch`);
    }
  await tf.setBackend('wasm');
});

test('an embedding index out of range is refused with a SHAPE error, not read out of bounds', async () => {
  await tf.setBackend('wasm');
  const weight = new CompactWeight(quantizeMatrix(gaussian(8 * 16, 5), 8, 16, { format: 'nf4', blockSize: 8 }));
  assert.throws(() => compactEmbed(tf.tensor1d([1, 8], 'int32'), weight), /LM_ERR_SHAPE|embedding index 1 is 8/);
  weight.dispose();
});

test('a backend without the kernels dequantizes per product from a host copy: same values within 1e-5, same rows', async () => {
  await tf.setBackend('cpu');
  const packed = quantizeMatrix(gaussian(40 * 24, 9, 0.3), 40, 24, { format: 'nf4', blockSize: 8 });
  const x = tf.tensor2d(gaussian(3 * 24, 10), [3, 24]);
  const ids = tf.tensor1d([1, 39, 5], 'int32');
  const withKernels = new CompactWeight(packed);
  const y = compactLinear(x, withKernels).dataSync() as Float32Array;
  const rows = compactEmbed(ids, withKernels).dataSync();
  // Last in this file: the cpu kernels are gone from here on.
  tf.unregisterKernel(COMPACT_MATMUL, 'cpu');
  tf.unregisterKernel(COMPACT_GATHER, 'cpu');
  const fallback = new CompactWeight(packed);
  assert.ok(fallback.host && !fallback.codes, 'no kernels: a host copy, nothing on the backend');
  assert.ok(relative(compactLinear(x, fallback).dataSync() as Float32Array, y) <= 1e-5);
  assert.deepEqual(compactEmbed(ids, fallback).dataSync(), rows);
  await tf.setBackend('wasm');
});

test('f16 on wasm: every finite bit pattern (normals, subnormals, ±0) decodes exactly in the SIMD path', async () => {
  await tf.setBackend('wasm');
  const patterns = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00);
  const values = f16ToF32(patterns);
  const weight = new CompactWeight(quantizeMatrix(values, 1, values.length, { format: 'f16' }));
  // dx = dy·W with dy = [[1]]: out[j] = 0 + 1 · W[0, j], read 8 values a step along W's row.
  const out = compactProducts(weight)
    .backward(tf.tensor2d([1], [1, 1]))
    .dataSync();
  weight.dispose();
  let wrong = 0;
  for (let i = 0; i < values.length; i++) if (out[i] !== values[i]) wrong++; // -0 becomes +0: equal under !==
  assert.equal(wrong, 0, `${wrong} of ${values.length} patterns decoded differently`);
});
