// The wasm kernels replaced in worker/wasm-kernels.ts give the same values as the definitions
// (slices computed here by index arithmetic), and the threaded-wasm shim starts with the asked
// thread count and computes the same matmul as one thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../worker/backend.ts';

const probe = new URL('../helpers/wasm-threads-probe.ts', import.meta.url).pathname;

const info = await initBackend('wasm');

/** x[begin : begin + size] of a row-major array with this shape, by index arithmetic. */
function sliceByIndex(values: Float32Array, shape: number[], begin: number[], size: number[]): number[] {
  const out: number[] = [];
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const visit = (axis: number, offset: number) => {
    if (axis === shape.length) return void out.push(values[offset]);
    for (let i = begin[axis]; i < begin[axis] + size[axis]; i++) visit(axis + 1, offset + i * strides[axis]);
  };
  visit(0, 0);
  return out;
}

test('Slice, SplitV and Unpack on wasm equal slicing by index (contiguous and strided, rank 1–5)', () => {
  const shapes = [[7], [5, 6], [4, 3, 5], [3, 4, 2, 5], [2, 3, 2, 2, 3]];
  for (const shape of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: n }, (_, i) => i * 0.5 - 3);
    const x = tf.tensor(values, shape);
    const begin = shape.map((d) => Math.floor(d / 3));
    const size = shape.map((d, i) => d - begin[i] - (i % 2));
    assert.deepEqual([...tf.slice(x, begin, size).dataSync()], sliceByIndex(values, shape, begin, size), `slice of [${shape}]`);
    const axis = shape.length - 1;
    const parts = tf.split(x, [1, shape[axis] - 1], axis);
    assert.deepEqual([...parts[1].dataSync()], sliceByIndex(values, shape, shape.map((_, i) => (i === axis ? 1 : 0)), shape.map((d, i) => (i === axis ? d - 1 : d))), `split of [${shape}]`);
    tf.unstack(x, 0).forEach((part, i) => {
      assert.deepEqual(part.shape, shape.slice(1));
      assert.deepEqual([...part.dataSync()], sliceByIndex(values, shape, shape.map((_, a) => (a === 0 ? i : 0)), shape.map((d, a) => (a === 0 ? 1 : d))));
    });
    tf.dispose([x, ...parts]);
  }
});

test('Identity shares the buffer: a clone outlives its disposed source', () => {
  const x = tf.tensor1d([1, 2, 3]);
  const before = tf.backend().numDataIds();
  const y = tf.clone(x);
  assert.equal(tf.backend().numDataIds(), before, 'a clone allocates no buffer');
  x.dispose();
  assert.deepEqual([...y.dataSync()], [1, 2, 3]);
  y.dispose();
});

test('LORAMESH_WASM_THREADS=2 starts the threaded build with 2 threads and the same matmul result', () => {
  assert.equal(info.threads, 1);
  const run = (threads: string) => {
    const out = spawnSync(process.execPath, ['--import', 'tsx', probe], { encoding: 'utf8', env: { ...process.env, LORAMESH_WASM_THREADS: threads } });
    assert.equal(out.status, 0, out.stderr.slice(-1000));
    return JSON.parse(out.stdout.trim().split('\n').pop()!) as { threads: number; checksum: number };
  };
  const one = run('1');
  const two = run('2');
  assert.equal(one.threads, 1);
  assert.equal(two.threads, 2);
  assert.ok(Math.abs(one.checksum - two.checksum) <= 1e-6 * Math.abs(one.checksum), `1 thread ${one.checksum}, 2 threads ${two.checksum}`);
});
