// LoRA math: B = 0 starts at the base model, merge equals the unmerged forward, gradients match
// finite differences, and the fast custom-gradient path equals plain autodiff.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { checkLoraConfig, loraScaling } from '../../shared/config.ts';
import { adapterSpec, initAdapter, mergeAdapter, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase, loraBranches, withAdapter, withLora, type LoraBranch } from '../../shared/lora/params.ts';
import { createModel, type CausalLM } from '../../shared/model/causal-lm.ts';
import { Rng } from '../../shared/rng.ts';
import { computeGradients, tokenLossSum } from '../../shared/train/gradients.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import { randomWeights, tinyConfig } from '../helpers/tiny-model.ts';
import { randomAdapter as randomState } from '../helpers/compact.ts';

const config = tinyConfig();
const model = createModel(config);
const weights = randomWeights(config, 11);
const base = new FrozenBase(config, weights);
const lora = checkLoraConfig({
  r: 4,
  alpha: 8,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
});
const spec = adapterSpec(config, lora);

function randomAdapter(seed: number): AdapterState {
  const rng = new Rng(seed);
  return randomState(spec, rng);
}

function microBatch(seed: number, batch = 2, time = 7): MicroBatch {
  const rng = new Rng(seed);
  const n = batch * time;
  return {
    batch,
    time,
    dropoutSeed: 0,
    inputIds: Int32Array.from({ length: n }, () => rng.int(config.vocab_size)),
    targets: Int32Array.from({ length: n }, () => rng.int(config.vocab_size)),
    lossMask: Float32Array.from({ length: n }, (_, i) => (i % 5 === 0 ? 0 : 1)),
  };
}

function branches(state: AdapterState): Map<string, LoraBranch> {
  return loraBranches(spec, (i) => tf.tensor2d(state.get(spec[i].name)!, spec[i].shape));
}

function logits(params: Parameters<CausalLM['forward']>[0], mb: MicroBatch): Float32Array {
  return tf.tidy(
    () => model.forward(params, tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32')).dataSync() as Float32Array,
  );
}

function lossOf(state: AdapterState, mb: MicroBatch, source: FrozenBase = base): number {
  return tf.tidy(() => {
    const params = withLora(source, branches(state), loraScaling(lora));
    const out = model.forward(params, tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32'));
    return tokenLossSum(out, tf.tensor1d(mb.targets, 'int32'), tf.tensor1d(mb.lossMask)).dataSync()[0];
  });
}

const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

test('B = 0 at init: the adapted model equals the base model exactly', () => {
  const state = initAdapter(spec, lora, 5);
  for (const t of spec) if (t.which === 'B') assert.ok(state.get(t.name)!.every((v) => v === 0));
  const mb = microBatch(1);
  const adapted = tf.tidy(() => logits(withLora(base, branches(state), loraScaling(lora)), mb));
  assert.equal(maxAbs(adapted, logits(base, mb)), 0);
});

test('Kaiming-uniform(a=√5) init keeps A within ±1/√d_in', () => {
  const state = initAdapter(spec, lora, 5);
  for (const t of spec.filter((s) => s.which === 'A')) {
    const bound = 1 / Math.sqrt(t.shape[1]);
    const a = state.get(t.name)!;
    assert.ok(
      a.every((v) => Math.abs(v) <= bound),
      `${t.name} out of bound`,
    );
    assert.ok(Math.max(...a.map(Math.abs)) > 0.8 * bound, `${t.name} does not use its range`);
  }
});

test('merged forward W + (α/r)BA equals the unmerged forward (≤ 1e-5), and unmerge restores W', () => {
  const state = randomAdapter(3);
  const mb = microBatch(2);
  const unmerged = logits(withLora(base, branches(state), loraScaling(lora)), mb);
  const mergedWeights = mergeAdapter(config, weights, spec, state, lora);
  const merged = logits(new FrozenBase(config, mergedWeights), mb);
  assert.ok(maxAbs(merged, unmerged) <= 1e-5, `max diff ${maxAbs(merged, unmerged)}`);
  const restored = mergeAdapter(config, mergedWeights, spec, state, lora, -1);
  for (const t of spec.filter((s) => s.which === 'A')) {
    const key = `${t.modulePath}.weight`;
    assert.ok(maxAbs(restored.get(key)!.dataSync(), weights.get(key)!.dataSync()) <= 1e-6, `${key} not restored`);
  }
});

test('withAdapter serves an adapter unmerged: equals the merged forward (≤ 1e-5), keeps no tensor after', () => {
  const state = randomAdapter(4);
  const mb = microBatch(3);
  const merged = logits(new FrozenBase(config, mergeAdapter(config, weights, spec, state, lora)), mb);
  const tensorsBefore = tf.memory().numTensors;
  const served = withAdapter(base, state, lora, (params) => logits(params, mb));
  assert.ok(maxAbs(served, merged) <= 1e-5, `max diff ${maxAbs(served, merged)}`);
  assert.equal(tf.memory().numTensors, tensorsBefore);
  assert.throws(
    () =>
      withAdapter(base, state, lora, () => {
        throw new Error('use failed');
      }),
    /use failed/,
  );
  assert.equal(tf.memory().numTensors, tensorsBefore, 'the branch tensors are freed when use throws');
});

test('rsLoRA scales by α/√r', () => {
  assert.equal(loraScaling({ ...lora, useRslora: true }), 8 / 2);
  assert.equal(loraScaling(lora), 2);
});

test('A/B gradients match central finite differences (relative error ≤ 1e-3 per tensor)', () => {
  const state = randomAdapter(4);
  const mb = microBatch(5, 1, 6);
  const { grads, lossSum } = computeGradients(model, base, spec, state, lora, mb);
  assert.ok(Math.abs(lossSum - lossOf(state, mb)) <= 1e-4 * Math.abs(lossSum));
  // Directional derivative along each tensor's own gradient: g·g/|g| = |g|. Central differences
  // with Richardson extrapolation, (4·D(h/2) − D(h)) / 3, cancel the O(h²) curvature term; float32
  // rounding of the loss then limits the check to ~1e-5 relative at these step sizes.
  for (const t of spec) {
    const g = grads.get(t.name)!;
    const norm = Math.hypot(...g);
    assert.ok(norm > 1e-3, `${t.name}: gradient is ~0, the check would be vacuous`);
    const shifted = (step: number) => {
      const s = new Map(state);
      s.set(
        t.name,
        state.get(t.name)!.map((v, i) => v + (step * g[i]) / norm),
      );
      return lossOf(s, mb);
    };
    const central = (h: number) => (shifted(h) - shifted(-h)) / (2 * h);
    const fd = (4 * central(5e-3) - central(1e-2)) / 3;
    const rel = Math.abs(fd - norm) / norm;
    assert.ok(rel <= 1e-3, `${t.name}: finite difference ${fd} vs |g| ${norm} (relative error ${rel})`);
  }
});

test('W never gets a gradient: base weights are constants of the loss', () => {
  const state = randomAdapter(6);
  const mb = microBatch(7);
  const before = weights.get('model.layers.0.self_attn.q_proj.weight')!.dataSync().slice();
  const { grads } = computeGradients(model, base, spec, state, lora, mb);
  assert.equal(grads.size, spec.length);
  assert.deepEqual([...grads.keys()].sort(), spec.map((t) => t.name).sort());
  assert.equal(maxAbs(weights.get('model.layers.0.self_attn.q_proj.weight')!.dataSync(), before), 0);
});

test('fast custom-gradient path equals plain autodiff (≤ 1e-5 relative to the gradient scale)', () => {
  const state = randomAdapter(8);
  const mb = microBatch(9, 3, 8);
  const fast = computeGradients(model, base, spec, state, lora, mb);
  const plain = computeGradients(model, new FrozenBase(config, weights, true), spec, state, lora, mb);
  assert.ok(Math.abs(fast.lossSum - plain.lossSum) <= 1e-5 * Math.abs(plain.lossSum));
  for (const t of spec) {
    const scale = Math.max(...plain.grads.get(t.name)!.map(Math.abs));
    const diff = maxAbs(fast.grads.get(t.name)!, plain.grads.get(t.name)!);
    assert.ok(diff <= 1e-5 * Math.max(1, scale), `${t.name}: fast vs plain differ by ${diff}`);
  }
});

test('dropout masks are seeded: same seed same gradients, other seed other gradients', () => {
  const dropLora = { ...lora, dropout: 0.3 };
  const state = randomAdapter(10);
  const mb = microBatch(11);
  const a = computeGradients(model, base, spec, state, dropLora, { ...mb, dropoutSeed: 1 });
  const b = computeGradients(model, base, spec, state, dropLora, { ...mb, dropoutSeed: 1 });
  const c = computeGradients(model, base, spec, state, dropLora, { ...mb, dropoutSeed: 2 });
  const name = spec[0].name;
  assert.equal(maxAbs(a.grads.get(name)!, b.grads.get(name)!), 0);
  assert.ok(maxAbs(a.grads.get(name)!, c.grads.get(name)!) > 1e-4);
});
