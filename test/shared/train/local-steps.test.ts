// Local-steps mode: the inner job against an independent recomputation, the outer Nesterov step
// worked by hand, and the factor-averaging gap against dense d_out×d_in products.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../../helpers/backend.ts';
import { checkLoraConfig } from '../../../shared/config.ts';
import { adapterSpec, initAdapter, type AdapterState } from '../../../shared/lora/adapter.ts';
import { FrozenBase } from '../../../shared/lora/params.ts';
import { factorAveragingGap, productSumNormSq } from '../../../shared/lora/product-gap.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { Rng } from '../../../shared/rng.ts';
import { computeGradients } from '../../../shared/train/gradients.ts';
import { outerStep, runLocalJob } from '../../../shared/train/local-steps.ts';
import { packMicroBatch } from '../../../shared/train/micro-batch.ts';
import { randomWeights, tinyConfig } from '../../helpers/tiny-model.ts';

const config = tinyConfig();
const lora = checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] });
const spec = adapterSpec(config, lora);
const model = createModel(config);
const base = new FrozenBase(config, randomWeights(config, 3));
const rng = new Rng(5);
const start = initAdapter(spec, lora, 11);
for (const t of spec) if (t.which === 'B') start.get(t.name)!.forEach((_, i, b) => (b[i] = 0.05 * rng.normal()));
const microBatch = (seed: number) => {
  const r = new Rng(seed);
  const examples = Array.from({ length: 3 }, () => {
    const ids = Array.from({ length: 6 }, () => 1 + r.int(config.vocab_size - 1));
    return { tokens: ids, lossWeights: ids.map((_, i) => (i >= 2 ? 1 : 0)) };
  });
  return packMicroBatch(examples, 0, seed);
};
const inner = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, clipNorm: 0 };

test('one inner step: start − end = lr·ĝ/(|ĝ|+eps) with ĝ the mean-token gradient (AdamW step 1)', async () => {
  const mb = microBatch(1);
  const lr = 0.01;
  const job = await runLocalJob(model, base, spec, start, lora, [mb], lr, inner);
  const g = computeGradients(model, base, spec, start, lora, mb);
  assert.equal(job.tokenCount, g.tokenCount);
  assert.ok(Math.abs(job.lossSum - g.lossSum) <= 1e-6 * Math.abs(g.lossSum));
  for (const t of spec) {
    const sum = g.grads.get(t.name)!;
    job.grads.get(t.name)!.forEach((d, i) => {
      const mean = sum[i] / g.tokenCount;
      const expected = (lr * mean) / (Math.abs(mean) + 1e-8);
      assert.ok(Math.abs(d - expected) <= 1e-6, `${t.name}[${i}]: ${d} vs ${expected}`);
    });
  }
});

test('H inner steps are deterministic and each step sees the updated adapter', async () => {
  const mbs = [microBatch(2), microBatch(3), microBatch(4)];
  const a = await runLocalJob(model, base, spec, start, lora, mbs, 0.02, inner);
  const b = await runLocalJob(model, base, spec, start, lora, mbs, 0.02, inner);
  for (const t of spec) assert.deepEqual(a.grads.get(t.name), b.grads.get(t.name));
  // The loss of the second micro-batch is taken after the first step: equals a fresh forward at the adapter after
  // step 1.
  const first = await runLocalJob(model, base, spec, start, lora, mbs.slice(0, 1), 0.02, inner);
  const after1: AdapterState = new Map(
    [...start].map(([k, s]) => [k, Float32Array.from(s, (v, i) => v - first.grads.get(k)![i])]),
  );
  const second = computeGradients(model, base, spec, after1, lora, mbs[1]);
  const firstTwo = await runLocalJob(model, base, spec, start, lora, mbs.slice(0, 2), 0.02, inner);
  assert.ok(Math.abs(firstTwo.lossSum - (first.lossSum + second.lossSum)) <= 1e-4 * firstTwo.lossSum);
});

test('outer Nesterov step, worked by hand', () => {
  const theta = new Map([['w', new Float32Array([1, 2])]]);
  const state = { momentum: new Map<string, Float32Array>() };
  const cfg = { outerLr: 0.5, outerMomentum: 0.9 };
  const mean = outerStep(
    theta,
    [new Map([['w', new Float32Array([0.2, -0.4])]]), new Map([['w', new Float32Array([0.4, 0])]])],
    state,
    cfg,
  );
  // Δ = (0.3, -0.2); m = Δ; θ -= 0.5·(Δ + 0.9·m) = 0.5·1.9·Δ
  assert.deepEqual(
    [...mean.get('w')!].map((v) => +v.toFixed(6)),
    [0.3, -0.2],
  );
  assert.deepEqual(
    [...theta.get('w')!].map((v) => +v.toFixed(6)),
    [0.715, 2.19],
  );
  outerStep(theta, [new Map([['w', new Float32Array([0.1, 0.1])]])], state, cfg);
  // m = 0.9·(0.3, -0.2) + (0.1, 0.1) = (0.37, -0.08); θ -= 0.5·((0.1, 0.1) + 0.9·m)
  const expected = [0.715 - 0.5 * (0.1 + 0.9 * 0.37), 2.19 - 0.5 * (0.1 - 0.9 * 0.08)];
  theta.get('w')!.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-6, `${v} vs ${expected[i]}`));
  // μ = 0, lr = 1: the new θ is the average of the jobs' ends (plain model averaging).
  const avg = new Map([['w', new Float32Array([1, 1])]]);
  outerStep(
    avg,
    [new Map([['w', new Float32Array([0.5, 0])]]), new Map([['w', new Float32Array([0, 1])]])],
    { momentum: new Map() },
    { outerLr: 1, outerMomentum: 0 },
  );
  assert.deepEqual([...avg.get('w')!], [0.75, 0.5]);
});

/** Dense B·A, (d_out, d_in). */
function dense(B: Float32Array, A: Float32Array, r: number): Float64Array {
  const dOut = B.length / r;
  const dIn = A.length / r;
  const out = new Float64Array(dOut * dIn);
  for (let i = 0; i < dOut; i++)
    for (let k = 0; k < r; k++) for (let j = 0; j < dIn; j++) out[i * dIn + j] += B[i * r + k] * A[k * dIn + j];
  return out;
}

test('‖Σ w_i B_i A_i‖²_F from r×r Grams equals the dense computation', () => {
  const r = 3;
  const R = new Rng(8);
  const terms = [0.5, -1, 2].map((weight) => ({
    weight,
    B: Float32Array.from({ length: 7 * r }, () => R.normal()),
    A: Float32Array.from({ length: r * 5 }, () => R.normal()),
  }));
  const sum = new Float64Array(35);
  for (const t of terms) dense(t.B, t.A, r).forEach((v, i) => (sum[i] += t.weight * v));
  const expected = sum.reduce((s, v) => s + v * v, 0);
  assert.ok(Math.abs(productSumNormSq(terms, r) - expected) <= 1e-5 * expected);
});

test('factor-averaging gap: 0 when only A (or only B) differs, equals the dense ratio otherwise', () => {
  const one = spec.filter((t) => t.modulePath === spec[0].modulePath);
  const s0: AdapterState = new Map(one.map((t) => [t.name, start.get(t.name)!]));
  const R = new Rng(9);
  const noise = (which: 'A' | 'B' | 'AB') =>
    new Map(
      one.map((t) => [
        t.name,
        Float32Array.from(s0.get(t.name)!, () => (which.includes(t.which) ? 0.1 * R.normal() : 0)),
      ]),
    );
  assert.ok(factorAveragingGap(one, s0, [noise('A'), noise('A'), noise('A')], lora.r)! < 1e-6);
  assert.ok(factorAveragingGap(one, s0, [noise('B'), noise('B')], lora.r)! < 1e-6);
  assert.equal(factorAveragingGap(one, s0, [noise('AB')], lora.r), null);
  const jobs = [noise('AB'), noise('AB'), noise('AB')];
  const [tA, tB] = one;
  const ends = jobs.map((g) => ({
    A: Float32Array.from(s0.get(tA.name)!, (v, i) => v - g.get(tA.name)![i]),
    B: Float32Array.from(s0.get(tB.name)!, (v, i) => v - g.get(tB.name)![i]),
  }));
  const meanBA = new Float64Array(tB.shape[0] * tA.shape[1]);
  for (const e of ends) dense(e.B, e.A, lora.r).forEach((v, i) => (meanBA[i] += v / 3));
  const mean = (pick: (e: { A: Float32Array; B: Float32Array }) => Float32Array) =>
    Float32Array.from(pick(ends[0]), (_, i) => ends.reduce((s, e) => s + pick(e)[i], 0) / 3);
  const product = dense(
    mean((e) => e.B),
    mean((e) => e.A),
    lora.r,
  );
  const startBA = dense(s0.get(tB.name)!, s0.get(tA.name)!, lora.r);
  const norm = (f: (i: number) => number) => Math.sqrt(meanBA.reduce((s, _, i) => s + f(i) ** 2, 0));
  const expected = norm((i) => meanBA[i] - product[i]) / norm((i) => meanBA[i] - startBA[i]);
  const gap = factorAveragingGap(one, s0, jobs, lora.r)!;
  assert.ok(expected > 0.01 && Math.abs(gap - expected) <= 1e-4 * expected, `gap ${gap} vs dense ${expected}`);
});
