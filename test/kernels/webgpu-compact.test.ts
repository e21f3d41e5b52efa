// The compact-base kernels on tfjs-backend-webgpu (kernels/webgpu-compact.ts, WGSL), in Node through
// Dawn (on SwiftShader where there is no GPU): both products and the embedding gather for every
// format and ragged shapes, against tf.matMul with the dequantized float32 matrix (on cpu) and
// against the cpu kernel, within 1e-5 relative (‖Δ‖_F / ‖ref‖_F); the gather equals the dequantized
// rows exactly, and f16/bf16 widen every finite 16-bit pattern to the same bits; a dispatch split over
// y and z stays whole; and a LoRA step on a compact base gives the cpu backend's loss and gradients.
// Without a WebGPU adapter the suite is skipped with the reason (a failure under CI or
// LORAMESH_REQUIRE_BROWSER=1, which install SwiftShader: apt-get install libvulkan1 chromium).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../node/backend.ts';
import { checkLoraConfig, type LinearModule, type ModelConfig } from '../../shared/config.ts';
import { adapterSpec, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { type BaseWeights, compactTensor } from '../../shared/model/compact-base.ts';
import { CompactWeight, compactEmbed, compactLinear, hasCompactKernels } from '../../shared/model/compact-linear.ts';
import type { BaseFormatSpec, PackedMatrix } from '../../shared/quant/formats.ts';
import { dequantizeMatrix, quantizeMatrix } from '../../shared/quant/quantize.ts';
import { Rng } from '../../shared/rng.ts';
import { computeGradientsAsync } from '../../shared/train/gradients.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';
import { COMPACT_SPECS, gaussian, randomAdapter, randomMicroBatch } from '../helpers/compact.ts';
import { randomArrays, tinyConfig } from '../helpers/tiny-model.ts';

/** Why this suite cannot run here (no WebGPU adapter), or false; any other start failure throws. */
async function startWebgpu(): Promise<string | false> {
  try {
    const info = await initBackend('webgpu');
    console.log(`${info.note}${info.software ? ' (software)' : ''}`);
    return false;
  } catch (err) {
    const message = (err as Error).message;
    if (!/no WebGPU adapter/.test(message) || process.env.CI || process.env.LORAMESH_REQUIRE_BROWSER === '1') throw err;
    return message;
  }
}
const skip = await startWebgpu();

// (rows = d_out, cols = d_in, n): edges off the kernel's 32-wide tiles in every dimension, a block
// that ends mid-row, and one row alone.
type Shape = [rows: number, cols: number, n: number];
const SHAPES: Shape[] = [
  [13, 70, 5],
  [64, 600, 9],
  [45, 97, 33],
  [8, 8, 1],
];

const relative = (actual: ArrayLike<number>, expected: ArrayLike<number>) => relativeL2Distance([[expected, actual]]);

const read = async (t: tf.Tensor) => (await t.data()) as Float32Array;

/**
 * Forward y = x·Wᵀ and backward dx = dy·W (through compactLinear's gradient) and the gather, on one
 * backend, read asynchronously.
 */
async function products(backend: string, packed: PackedMatrix, x: Float32Array, dy: Float32Array, ids: Int32Array) {
  await tf.setBackend(backend);
  const { rows, cols } = packed;
  const n = ids.length;
  const weight = new CompactWeight(packed);
  assert.ok(weight.codes && weight.scales && !weight.host, `${backend} holds the packed words on the backend`);
  const out = tf.tidy(() => {
    const input = tf.tensor2d(x, [n, cols]);
    const gradient = tf.tensor2d(dy, [n, rows]);
    const loss = (xs: tf.Tensor) => tf.sum(tf.mul(compactLinear(xs as tf.Tensor2D, weight), gradient));
    return [compactLinear(input, weight), tf.grad(loss)(input), compactEmbed(tf.tensor1d(ids, 'int32'), weight)];
  });
  const [y, dx, gathered] = await Promise.all(out.map(read));
  tf.dispose(out);
  weight.dispose();
  return { y, dx, gathered };
}

/** The same products with tf.matMul and the dequantized float32 matrix, on the cpu backend. */
async function reference(dense: Float32Array, [rows, cols, n]: Shape, x: Float32Array, dy: Float32Array) {
  await tf.setBackend('cpu');
  const out = tf.tidy(() => {
    const w = tf.tensor2d(dense, [rows, cols]);
    return [tf.matMul(tf.tensor2d(x, [n, cols]), w, false, true), tf.matMul(tf.tensor2d(dy, [n, rows]), w)];
  });
  const [y, dx] = await Promise.all(out.map(read));
  tf.dispose(out);
  return { y, dx };
}

test('webgpu compact products and gather equal the dequantized float32 matrix and the cpu kernel (1e-5 relative; gather exact)', {
  skip,
}, async (t) => {
  assert.ok(hasCompactKernels('webgpu'), 'initBackend installed the webgpu kernels');
  let seed = 300;
  let worst = 0;
  const started = performance.now();
  for (const spec of COMPACT_SPECS)
    for (const shape of SHAPES) {
      const [rows, cols, n] = shape;
      const what = `${JSON.stringify(spec)} [${shape}]`;
      const packed = quantizeMatrix(gaussian(rows * cols, seed, 0.2), rows, cols, spec);
      const x = gaussian(n * cols, seed + 1);
      const dy = gaussian(n * rows, seed + 2);
      const ids = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % rows);
      seed += 10;
      const gpu = await products('webgpu', packed, x, dy, ids);
      const cpu = await products('cpu', packed, x, dy, ids);
      const dense = dequantizeMatrix(packed);
      const ref = await reference(dense, shape, x, dy);
      const errors = {
        'forward vs tf.matMul': relative(gpu.y, ref.y),
        'backward vs tf.matMul': relative(gpu.dx, ref.dx),
        'forward vs the cpu kernel': relative(gpu.y, cpu.y),
        'backward vs the cpu kernel': relative(gpu.dx, cpu.dx),
      };
      for (const [check, error] of Object.entries(errors)) {
        assert.ok(error <= 1e-5, `${what} ${check}: relative error ${error}`);
        worst = Math.max(worst, error);
      }
      const expectedRows = Float32Array.from(
        Array.from(ids).flatMap((id) => Array.from(dense.subarray(id * cols, (id + 1) * cols))),
      );
      assert.deepEqual(gpu.gathered, expectedRows, `${what} gather is the dequantized rows exactly`);
    }
  await tf.setBackend('webgpu');
  t.diagnostic(
    `${COMPACT_SPECS.length} formats × ${SHAPES.length} shapes: worst relative error ${worst.toExponential(2)}, ` +
      `${((performance.now() - started) / 1000).toFixed(1)} s with the cpu runs`,
  );
});

/**
 * Runs fn while tfjs sees a device that allows only `limit` workgroups per dispatch dimension, so a
 * dispatch of more tiles is split over y and z as it is for an LM head with a large vocabulary
 * (more than 65535 tiles), without running that many workgroups on a software GPU.
 */
async function withWorkgroupLimit<T>(limit: number, fn: () => Promise<T>): Promise<T> {
  const backend = tf.backend() as unknown as { device: object };
  const device = backend.device as { limits: object };
  const limits = new Proxy(device.limits, {
    get: (target, prop) => (prop === 'maxComputeWorkgroupsPerDimension' ? limit : Reflect.get(target, prop, target)),
  });
  backend.device = new Proxy(device, {
    get: (target, prop) => {
      if (prop === 'limits') return limits;
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  try {
    return await fn();
  } finally {
    backend.device = device;
  }
}

test('a product of more output tiles than one dispatch dimension allows is split over y and z and stays whole', {
  skip,
}, async () => {
  await tf.setBackend('webgpu');
  // 2 × 10 tiles of 32 × 32 outputs over at most 4 workgroups per dimension: tfjs dispatches 3 × 3 × 3.
  const [rows, cols, n] = [300, 40, 33];
  const packed = quantizeMatrix(gaussian(rows * cols, 7, 0.2), rows, cols, { format: 'int8' });
  const x = gaussian(n * cols, 8);
  const dy = gaussian(n * rows, 9);
  const ids = Int32Array.from({ length: n }, (_, i) => (i * 11) % rows);
  const gpu = await withWorkgroupLimit(4, () => products('webgpu', packed, x, dy, ids));
  const ref = await reference(dequantizeMatrix(packed), [rows, cols, n], x, dy);
  await tf.setBackend('webgpu');
  assert.ok(relative(gpu.y, ref.y) <= 1e-5, `forward: relative error ${relative(gpu.y, ref.y)}`);
  assert.ok(relative(gpu.dx, ref.dx) <= 1e-5, `backward: relative error ${relative(gpu.dx, ref.dx)}`);
});

test('f16 and bf16 widen every finite 16-bit pattern to the same float32 bits as dequantizeMatrix (±0, subnormals)', {
  skip,
}, async () => {
  await tf.setBackend('webgpu');
  for (const [format, exponentMask] of [
    ['f16', 0x7c00],
    ['bf16', 0x7f80],
  ] as const) {
    const patterns = Uint16Array.from({ length: 65536 }, (_, i) => i).filter(
      (h) => (h & exponentMask) !== exponentMask,
    );
    const cols = 256;
    const rows = patterns.length / cols;
    const packed: PackedMatrix = {
      spec: { format },
      rows,
      cols,
      data: new Uint8Array(patterns.buffer),
      scales: new Float32Array(0),
    };
    const weight = new CompactWeight(packed);
    const gathered = compactEmbed(
      tf.tensor1d(
        Int32Array.from({ length: rows }, (_, i) => i),
        'int32',
      ),
      weight,
    );
    const values = (await gathered.data()) as Float32Array;
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    assert.deepEqual(bits, new Uint32Array(dequantizeMatrix(packed).buffer), `${format}: every pattern's bits`);
    tf.dispose(gathered);
    weight.dispose();
  }
});

test('an embedding index out of range gives a row of zeros on webgpu (as tfjs gather; cpu and wasm refuse it)', {
  skip,
}, async () => {
  await tf.setBackend('webgpu');
  const weight = new CompactWeight(quantizeMatrix(gaussian(8 * 16, 5), 8, 16, { format: 'nf4', blockSize: 8 }));
  const rows = compactEmbed(tf.tensor1d([1, 8, -1], 'int32'), weight);
  const values = (await rows.data()) as Float32Array;
  assert.ok(values.subarray(0, 16).some((v) => v !== 0));
  assert.deepEqual(values.subarray(16), new Float32Array(32));
  tf.dispose(rows);
  weight.dispose();
});

/** A tiny model's base, compact where compactTensor covers it, made on the current backend. */
function compactBaseOf(config: ModelConfig, seed: number, spec: BaseFormatSpec): BaseWeights {
  return new Map(
    [...randomArrays(config, seed)].map(([name, a]) => [
      name,
      compactTensor(config, name, a.data, a.shape, spec) ?? tf.tensor(a.data, a.shape),
    ]),
  );
}

// Tied: the embedding gather and the LM head's product read the same compact matrix.
const GRADIENT_CONFIG = tinyConfig({ model_type: 'qwen2', tie_word_embeddings: true });
const GRADIENT_TARGETS: LinearModule[] = ['q_proj', 'v_proj', 'down_proj'];
const GRADIENT_FORMAT: BaseFormatSpec = { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 4 };
const GRADIENT_TOLERANCE = 1e-5;

test('a LoRA step on a compact base: webgpu loss and gradients equal the cpu backend (1e-5 relative)', {
  skip,
}, async (t) => {
  const config = GRADIENT_CONFIG;
  const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: GRADIENT_TARGETS });
  const spec = adapterSpec(config, lora);
  const rng = new Rng(40);
  const adapter: AdapterState = randomAdapter(spec, rng);
  const mb = randomMicroBatch(config.vocab_size, 41);
  const step = async (backend: string) => {
    await tf.setBackend(backend);
    const model = createModel(config); // it holds tensors (RoPE's rotation) on the backend
    const base = compactBaseOf(config, 42, GRADIENT_FORMAT);
    const started = performance.now();
    const result = await computeGradientsAsync(model, new FrozenBase(config, base), spec, adapter, lora, mb);
    const ms = performance.now() - started;
    for (const w of base.values()) w.dispose();
    return { ...result, ms };
  };
  const gpu = await step('webgpu');
  const cpu = await step('cpu');
  await tf.setBackend('webgpu');
  const lossGap = Math.abs(gpu.lossSum - cpu.lossSum) / Math.abs(cpu.lossSum);
  assert.ok(lossGap <= GRADIENT_TOLERANCE, `loss ${gpu.lossSum} on webgpu vs ${cpu.lossSum} on cpu`);
  let worst = 0;
  for (const s of spec) {
    assert.ok(
      cpu.grads.get(s.name)!.some((g) => g !== 0),
      `${s.name}: the cpu gradient is all zero`,
    );
    const gap = relative(gpu.grads.get(s.name)!, cpu.grads.get(s.name)!);
    assert.ok(gap <= GRADIENT_TOLERANCE, `${s.name}: gradient relative gap ${gap}`);
    worst = Math.max(worst, gap);
  }
  t.diagnostic(
    `qwen2 (tied) ${JSON.stringify(GRADIENT_FORMAT)}: loss gap ${lossGap.toExponential(2)}, worst gradient ` +
      `${worst.toExponential(2)} over ${spec.length} tensors; webgpu ${gpu.ms.toFixed(0)} ms (compiles), cpu ${cpu.ms.toFixed(0)} ms`,
  );
});
