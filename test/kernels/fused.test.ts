// The fused row-wise kernels on wasm (kernels/c/fused.c behind shared/model/norm-ops.ts): the ops run
// as one kernel each way (tf.profile names them), and their values and input gradients equal the
// cpu backend's tf-op forms of the same formulas within 2e-6 relative to the largest entry, on shapes
// with vector tails (d and counts not multiples of 4) and inputs out to ±90 (the sigmoid saturates,
// nothing overflows into NaN). RoPE equals its tf-op form bit for bit. Attention's masked softmax and
// its gradient likewise (grouped-query and sliding-window masks; masked keys get exactly 0), and an adapted
// linear (frozen product + LoRA branch) against frozen + loraBranch.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../node/backend.ts';
import {
  FUSED_GELU,
  FUSED_GELU_GRAD,
  FUSED_LAYER_NORM,
  FUSED_LAYER_NORM_GRAD,
  FUSED_RMS_NORM,
  FUSED_RMS_NORM_GRAD,
  FUSED_ROPE,
  FUSED_ROPE_GRAD,
  FUSED_SWIGLU,
  FUSED_SWIGLU_GRAD,
  geluNew,
  layerNorm,
  rmsNorm,
  swiglu,
} from '../../shared/model/norm-ops.ts';
import {
  causalMask,
  FUSED_MASKED_SOFTMAX,
  FUSED_SOFTMAX_GRAD,
  scaledDotProductAttention,
} from '../../shared/model/attention.ts';
import {
  FUSED_LORA,
  FUSED_LORA_GRAD,
  frozenProducts,
  fusedLoraLinear,
  loraBranch,
  makeFrozenLinear,
} from '../../shared/model/linear-ops.ts';
import { Rng } from '../../shared/rng.ts';
import type { LlamaConfig } from '../../shared/config.ts';
import { LlamaModel } from '../../shared/model/llama.ts';
import { tinyConfig } from '../helpers/tiny-model.ts';

await initBackend('wasm');
const TOLERANCE = 2e-6;
const rng = new Rng(17);
const values = (count: number, scale: number) => Float32Array.from({ length: count }, () => scale * rng.normal());
/** Activations with extremes mixed in: ±90, ±20, 0 and tiny values. */
function activations(count: number): Float32Array {
  const v = values(count, 2);
  [90, -90, 20, -20, 0, 1e-3, -1e-3].forEach((x, i) => {
    v[(i * 7) % count] = x;
  });
  return v;
}

type Op = (inputs: tf.Tensor[]) => tf.Tensor;

/** The op's value and the gradients of Σ value·weights for every input, as arrays, on `backend`. */
async function evaluate(backend: string, op: Op, inputs: Float32Array[], shape: number[], weights: Float32Array) {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const xs = inputs.map((v) => tf.tensor(v, shape));
    const value = op(xs).dataSync() as Float32Array;
    const grads = tf.grads((...ys: tf.Tensor[]) => tf.sum(tf.mul(op(ys), tf.tensor(weights, shape))))(xs);
    return { value, grads: grads.map((g) => g.dataSync() as Float32Array) };
  });
}

function assertClose(a: Float32Array, b: Float32Array, what: string): void {
  let scale = 1;
  let diff = 0;
  for (let i = 0; i < b.length; i++) {
    assert.ok(Number.isFinite(a[i]), `${what}[${i}] is ${a[i]}`);
    scale = Math.max(scale, Math.abs(b[i]));
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
  }
  assert.ok(diff <= TOLERANCE * scale, `${what}: differs by ${diff} (scale ${scale})`);
}

async function check(name: string, kernels: string[], op: Op, inputs: Float32Array[], shape: number[]) {
  const weights = values(inputs[0].length, 1);
  const fused = await evaluate('wasm', op, inputs, shape, weights);
  const reference = await evaluate('cpu', op, inputs, shape, weights);
  assertClose(fused.value, reference.value, `${name} value`);
  fused.grads.forEach((g, i) => assertClose(g, reference.grads[i], `${name} gradient ${i}`));
  await tf.setBackend('wasm');
  const profile = await tf.profile(() => {
    const xs = inputs.map((v) => tf.tensor(v, shape));
    tf.grads((...ys: tf.Tensor[]) => tf.sum(op(ys)))(xs);
  });
  const ran = new Set(profile.kernels.map((k) => k.name));
  for (const kernel of kernels) assert.ok(ran.has(kernel), `${name}: ${kernel} ran on wasm`);
}

test('RMSNorm and LayerNorm: one fused kernel each way on wasm, equal to the tf-op forms', async () => {
  for (const [rows, d] of [
    [7, 13],
    [3, 64],
    [1, 1],
  ]) {
    const w = values(d, 1);
    const b = values(d, 1);
    // long-lived parameters, as a model's are (made on the backend in use when the op runs)
    const held = new Map<string, tf.Tensor>();
    const param = (key: string, v: Float32Array) => {
      const name = `${key} ${tf.getBackend()}`;
      if (!held.has(name)) held.set(name, tf.keep(tf.tensor(v)));
      return held.get(name)!;
    };
    const wt = () => param('w', w);
    const bt = () => param('b', b);
    const x = values(rows * d, 3);
    await check(
      `rmsNorm ${rows}×${d}`,
      [FUSED_RMS_NORM, FUSED_RMS_NORM_GRAD],
      ([t]) => rmsNorm(t as tf.Tensor2D, wt(), 1e-6, true),
      [x],
      [rows, d],
    );
    await check(
      `layerNorm ${rows}×${d}`,
      [FUSED_LAYER_NORM, FUSED_LAYER_NORM_GRAD],
      ([t]) => layerNorm(t as tf.Tensor2D, wt(), bt(), 1e-5, true),
      [x],
      [rows, d],
    );
    for (const t of held.values()) t.dispose();
  }
});

test('SwiGLU and gelu_new: one fused kernel each way on wasm, equal to the tf-op forms out to ±90', async () => {
  for (const shape of [
    [3, 37],
    [8, 64],
  ]) {
    const count = shape[0] * shape[1];
    await check(
      `swiglu ${shape}`,
      [FUSED_SWIGLU, FUSED_SWIGLU_GRAD],
      ([g, u]) => swiglu(g as tf.Tensor2D, u as tf.Tensor2D),
      [activations(count), values(count, 1)],
      shape,
    );
    await check(
      `gelu ${shape}`,
      [FUSED_GELU, FUSED_GELU_GRAD],
      ([x]) => geluNew(x as tf.Tensor2D),
      [activations(count)],
      shape,
    );
  }
});

test('RoPE: one fused kernel each way on wasm, the same bits as the tf-op form (an exact rotation)', async () => {
  const config = tinyConfig();
  const model = new LlamaModel(config as LlamaConfig);
  const hs = model.headSize;
  const rows = 7;
  const heads = config.num_attention_heads;
  const x = values(rows * heads * hs, 2);
  const weights = values(rows * heads * hs, 1);
  const angles = values(rows * hs, 3);
  const rope = (backend: string, fused: boolean) => {
    // the model's own RoPE with the fused kernel, or its tf-op form (the kernel unregistered for a moment)
    const kernels = [FUSED_ROPE, FUSED_ROPE_GRAD].map((name) => tf.getKernel(name, 'wasm')!);
    if (!fused) for (const k of kernels) tf.unregisterKernel(k.kernelName, 'wasm');
    try {
      return tf.tidy(() => {
        const cos = tf.tensor2d(angles.map(Math.cos), [rows, hs]);
        const sin = tf.tensor2d(angles.map(Math.sin), [rows, hs]);
        const apply = (t: tf.Tensor) =>
          (model as unknown as { applyRope: (...a: unknown[]) => tf.Tensor }).applyRope(t, heads, cos, sin);
        const xt = tf.tensor2d(x, [rows, heads * hs]);
        const value = apply(xt).dataSync() as Float32Array;
        const [dx] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(apply(t), tf.tensor2d(weights, [rows, heads * hs]))))([
          xt,
        ]);
        return { value, dx: dx.dataSync() as Float32Array, backend };
      });
    } finally {
      if (!fused) for (const k of kernels) tf.registerKernel(k);
    }
  };
  await tf.setBackend('wasm');
  const fused = rope('wasm', true);
  const plain = rope('wasm', false);
  assert.deepEqual(fused.value, plain.value, 'forward: same bits');
  assert.deepEqual(fused.dx, plain.dx, 'backward: same bits');
  const profile = await tf.profile(() => rope('wasm', true));
  const ran = new Set(profile.kernels.map((k) => k.name));
  assert.ok(ran.has(FUSED_ROPE) && ran.has(FUSED_ROPE_GRAD), 'the fused kernels ran');
});

test('attention softmax (scale, causal mask, softmax) and its gradient: one kernel each way on wasm, equal to the tf-op form', async () => {
  // grouped-query shapes: G query heads per key head fold into the rows, so the mask repeats every G·T rows;
  // S = 7 and 9 leave vector tails; a sliding window masks keys on both sides of each row's band
  for (const [heads, groups, time, hs, window] of [
    [3, 2, 7, 5, Infinity],
    [2, 1, 9, 8, 3],
  ]) {
    const m = groups * time;
    const q = values(heads * m * hs, 3);
    const k = values(heads * time * hs, 3);
    const v = values(heads * time * hs, 1);
    const weights = values(heads * m * hs, 1);
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      return tf.tidy(() => {
        const mask = causalMask(groups, time, 0, window);
        const inputs = [
          tf.tensor3d(q, [heads, m, hs]),
          tf.tensor3d(k, [heads, time, hs]),
          tf.tensor3d(v, [heads, time, hs]),
        ];
        const op = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          scaledDotProductAttention(a as tf.Tensor3D, b as tf.Tensor3D, c as tf.Tensor3D, mask, 1 / Math.sqrt(hs));
        const value = op(inputs[0], inputs[1], inputs[2]).dataSync() as Float32Array;
        const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
          tf.sum(tf.mul(op(a, b, c), tf.tensor3d(weights, [heads, m, hs]))),
        )(inputs);
        return { value, grads: grads.map((g) => g.dataSync() as Float32Array) };
      });
    };
    const fused = await run('wasm');
    const reference = await run('cpu');
    const what = `attention H ${heads} G ${groups} T ${time} hs ${hs} window ${window}`;
    assertClose(fused.value, reference.value, `${what} value`);
    ['dq', 'dk', 'dv'].forEach((name, i) => assertClose(fused.grads[i], reference.grads[i], `${what} ${name}`));
    await tf.setBackend('wasm');
    const profile = await tf.profile(() => run('wasm'));
    const ran = new Set(profile.kernels.map((kernel) => kernel.name));
    assert.ok(ran.has(FUSED_MASKED_SOFTMAX) && ran.has(FUSED_SOFTMAX_GRAD), `${what}: the fused kernels ran`);
    // masked keys get exactly 0, as e^(−1e9) does in the tf-op form
    const p = tf.tidy(() => {
      const scores = tf.tensor3d(values(heads * m * time, 50), [heads, m, time]);
      const out = tf
        .engine()
        .runKernel(
          FUSED_MASKED_SOFTMAX,
          { scores, mask: causalMask(groups, time, 0, window) },
          { scale: 1 },
        ) as tf.Tensor;
      return out.dataSync() as Float32Array;
    });
    for (let h = 0; h < heads; h++)
      for (let row = 0; row < m; row++) {
        const t = row % time;
        let sum = 0;
        for (let s = 0; s < time; s++) {
          const value = p[(h * m + row) * time + s];
          if (s > t || t - s >= window) assert.equal(value, 0, `${what}: P[${h}, ${row}, ${s}] of a masked key`);
          sum += value;
        }
        assert.ok(Math.abs(sum - 1) < 1e-6, `${what}: row ${h}, ${row} sums to ${sum}`);
      }
  }
});

test('an adapted linear (frozen product + LoRA branch): one kernel each way on wasm, equal to frozen + loraBranch on cpu', async () => {
  // r = 5 and 8 (a remainder past groups of 4 terms, and none), d not multiples of 4 (vector tails)
  for (const [n, dIn, dOut, r] of [
    [7, 13, 10, 5],
    [9, 64, 32, 8],
  ]) {
    const w = values(dOut * dIn, 0.5);
    const x = values(n * dIn, 2);
    const a = values(r * dIn, 0.3);
    const b = values(dOut * r, 0.3);
    const weights = values(n * dOut, 1);
    const scaling = 16 / r;
    const run = async (backend: string, fused: boolean) => {
      await tf.setBackend(backend);
      return tf.tidy(() => {
        const layer = makeFrozenLinear(tf.tensor2d(w, [dOut, dIn]), false, false);
        const op = (xs: tf.Tensor, as: tf.Tensor, bs: tf.Tensor) => {
          const [x2, a2, b2] = [xs, as, bs] as tf.Tensor2D[];
          if (fused) return fusedLoraLinear(x2, frozenProducts(layer), a2, b2, scaling)!;
          return tf.add(tf.matMul(x2, tf.tensor2d(w, [dOut, dIn]), false, true), loraBranch(x2, a2, b2, scaling));
        };
        const inputs = [tf.tensor2d(x, [n, dIn]), tf.tensor2d(a, [r, dIn]), tf.tensor2d(b, [dOut, r])];
        const value = op(inputs[0], inputs[1], inputs[2]).dataSync() as Float32Array;
        const grads = tf.grads((p: tf.Tensor, q: tf.Tensor, t: tf.Tensor) =>
          tf.sum(tf.mul(op(p, q, t), tf.tensor2d(weights, [n, dOut]))),
        )(inputs);
        return { value, grads: grads.map((g) => g.dataSync() as Float32Array) };
      });
    };
    const fused = await run('wasm', true);
    const reference = await run('cpu', false);
    const what = `adapted linear n ${n} d_in ${dIn} d_out ${dOut} r ${r}`;
    assertClose(fused.value, reference.value, `${what} value`);
    ['dx', 'dA', 'dB'].forEach((name, i) => assertClose(fused.grads[i], reference.grads[i], `${what} ${name}`));
    await tf.setBackend('wasm');
    const profile = await tf.profile(() => run('wasm', true));
    const ran = new Set(profile.kernels.map((kernel) => kernel.name));
    assert.ok(ran.has(FUSED_LORA) && ran.has(FUSED_LORA_GRAD), `${what}: the fused kernels ran`);
  }
  await tf.setBackend('wasm');
  assert.equal(
    fusedLoraLinear(
      tf.zeros([1, 1]),
      { forward: (t) => t, backward: (t) => t },
      tf.zeros([1, 1]),
      tf.zeros([1, 1]),
      1,
    ) !== null,
    true,
  );
  await tf.setBackend('cpu');
  assert.equal(
    fusedLoraLinear(tf.zeros([1, 1]), { forward: (t) => t, backward: (t) => t }, tf.zeros([1, 1]), tf.zeros([1, 1]), 1),
    null,
    'cpu has no fused kernel: callers fall back',
  );
  await tf.setBackend('wasm');
});
