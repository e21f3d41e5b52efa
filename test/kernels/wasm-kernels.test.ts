// The wasm kernels replaced in kernels/wasm-kernels.ts give the same values as the definitions
// (slices and products computed here by index arithmetic), and the threaded-wasm shim starts with the asked
// thread count and computes the same matmul as one thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../../node/backend.ts';

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
    assert.deepEqual(
      [...tf.slice(x, begin, size).dataSync()],
      sliceByIndex(values, shape, begin, size),
      `slice of [${shape}]`,
    );
    const axis = shape.length - 1;
    const parts = tf.split(x, [1, shape[axis] - 1], axis);
    assert.deepEqual(
      [...parts[1].dataSync()],
      sliceByIndex(
        values,
        shape,
        shape.map((_, i) => (i === axis ? 1 : 0)),
        shape.map((d, i) => (i === axis ? d - 1 : d)),
      ),
      `split of [${shape}]`,
    );
    tf.unstack(x, 0).forEach((part, i) => {
      assert.deepEqual(part.shape, shape.slice(1));
      assert.deepEqual(
        [...part.dataSync()],
        sliceByIndex(
          values,
          shape,
          shape.map((_, a) => (a === 0 ? i : 0)),
          shape.map((d, a) => (a === 0 ? 1 : d)),
        ),
      );
    });
    tf.dispose([x, ...parts]);
  }
});

test(
  'BatchMatMul on wasm equals the product by index, every transpose combination, batched and broadcast, few rows ' +
    '(≤ 1e-5 relative)',
  () => {
    const values = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed + 1.7 * i));
    const cases: [number[], number[]][] = [
      [
        [3, 5, 7],
        [3, 7, 6],
      ],
      [
        [1, 5, 7],
        [4, 7, 6],
      ],
      [
        [2, 2, 5, 7],
        [2, 2, 7, 9],
      ],
      [
        [5, 7],
        [7, 6],
      ],
      [
        [6, 1, 4],
        [6, 4, 3],
      ],
      // few rows, many columns (computed as Cᵀ = Bᵀ·Aᵀ), an inner size over one 256-deep panel, ragged columns
      [
        [3, 300],
        [300, 45],
      ],
      [
        [2, 7, 260],
        [2, 260, 30],
      ],
    ];
    for (const [aShape, bShape] of cases) {
      for (const transposeA of [false, true]) {
        for (const transposeB of [false, true]) {
          const ra = aShape.length;
          const rb = bShape.length;
          const sa = transposeA ? [...aShape.slice(0, -2), aShape[ra - 1], aShape[ra - 2]] : aShape;
          const sb = transposeB ? [...bShape.slice(0, -2), bShape[rb - 1], bShape[rb - 2]] : bShape;
          const [m, k, n] = [aShape[ra - 2], aShape[ra - 1], bShape[rb - 1]];
          const av = values(
            sa.reduce((x, y) => x * y, 1),
            1,
          );
          const bv = values(
            sb.reduce((x, y) => x * y, 1),
            2,
          );
          const got = tf.matMul(tf.tensor(av, sa), tf.tensor(bv, sb), transposeA, transposeB);
          const batch = Math.max(av.length / (m * k), bv.length / (k * n));
          // same ranks here
          assert.deepEqual(got.shape, [...aShape.slice(0, -2).map((d, i) => Math.max(d, bShape[i])), m, n]);
          const out = got.dataSync();
          for (let t = 0; t < batch; t++) {
            const ta = av.length === m * k ? 0 : t;
            const tb = bv.length === k * n ? 0 : t;
            for (let i = 0; i < m; i++) {
              for (let j = 0; j < n; j++) {
                let s = 0;
                for (let p = 0; p < k; p++) {
                  const x = av[ta * m * k + (transposeA ? p * m + i : i * k + p)];
                  const y = bv[tb * k * n + (transposeB ? j * k + p : p * n + j)];
                  s += x * y;
                }
                const v = out[(t * m + i) * n + j];
                assert.ok(
                  Math.abs(v - s) <= 1e-5 * Math.max(1, Math.abs(s)),
                  `[${aShape}]·[${bShape}] tA=${transposeA} tB=${transposeB} at (${t}, ${i}, ${j}): ${v} vs ${s}`,
                );
              }
            }
          }
        }
      }
    }
  },
);

test('Transpose on wasm equals permuting by index: the head swaps (C kernel) and other permutations (tfjs)', () => {
  const cases: [number[], number[]][] = [
    [
      [3, 5, 2, 7],
      [0, 2, 1, 3],
    ], // the attention head swap (hs = 7: a vector tail)
    [
      [2, 4, 3, 32],
      [0, 2, 1, 3],
    ],
    [
      [1, 6, 4, 4],
      [0, 2, 1, 3],
    ],
    [
      [5, 3, 6],
      [1, 0, 2],
    ], // rank 3: the same swap without a leading axis
    [
      [3, 5, 2, 7],
      [0, 1, 3, 2],
    ], // others keep tfjs's kernel
    [
      [4, 6],
      [1, 0],
    ],
    [
      [2, 3, 4],
      [2, 0, 1],
    ],
    [
      [0, 3, 2, 4],
      [0, 2, 1, 3],
    ], // empty
  ];
  for (const [shape, perm] of cases) {
    const n = shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 100);
    const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    const outShape = perm.map((axis) => shape[axis]);
    const expected: number[] = [];
    const index = new Array<number>(shape.length).fill(0);
    const visit = (axis: number) => {
      if (axis === outShape.length) {
        expected.push(values[perm.reduce((o, source, i) => o + index[i] * strides[source], 0)]);
        return;
      }
      for (let i = 0; i < outShape[axis]; i++) {
        index[axis] = i;
        visit(axis + 1);
      }
    };
    visit(0);
    const out = tf.tidy(() => tf.transpose(tf.tensor(values, shape), perm));
    assert.deepEqual(out.shape, outShape, `${shape} by ${perm}: shape`);
    assert.deepEqual(Array.from(out.dataSync()), expected, `${shape} by ${perm}: values`);
    out.dispose();
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
    const out = spawnSync(process.execPath, ['--import', 'tsx', probe], {
      encoding: 'utf8',
      env: { ...process.env, LORAMESH_WASM_THREADS: threads },
    });
    assert.equal(out.status, 0, out.stderr.slice(-1000));
    return JSON.parse(out.stdout.trim().split('\n').pop()!) as { threads: number; checksum: number };
  };
  const one = run('1');
  const two = run('2');
  assert.equal(one.threads, 1);
  assert.equal(two.threads, 2);
  assert.ok(
    Math.abs(one.checksum - two.checksum) <= 1e-6 * Math.abs(one.checksum),
    `1 thread ${one.checksum}, 2 threads ${two.checksum}`,
  );
});
