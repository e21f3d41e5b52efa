// Optimizer, schedule, clipping, sampler and in-order aggregation: pure functions, checked
// against values worked out by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addInto, aggregateInOrder, InOrderSum } from '../../shared/train/aggregate.ts';
import { adamwStep, clipGlobalNorm, initAdam, learningRate } from '../../shared/train/optimizer.ts';
import { EpochSampler } from '../../shared/train/sampler.ts';
import { packMicroBatch, tokenCount } from '../../shared/train/micro-batch.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { LoraMeshError } from '../../shared/errors.ts';

const hyper = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };

test('AdamW first step moves each parameter by lr·(sign(g) + wd·p), bias-corrected', () => {
  const params = new Map([['w', new Float32Array([1, -2, 0.5])]]);
  const grads = new Map([['w', new Float32Array([0.3, -4, 0])]]);
  const state = initAdam(params);
  adamwStep(params, grads, state, 0.01, hyper);
  // step 1: m̂ = g, v̂ = g², so m̂/(√v̂+eps) = sign(g) (0 for g = 0)
  const expected = [1 - 0.01 * (1 + 0.1 * 1), -2 - 0.01 * (-1 + 0.1 * -2), 0.5 - 0.01 * (0 + 0.1 * 0.5)];
  params
    .get('w')!
    .forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-6, `w[${i}] = ${v}, expected ${expected[i]}`));
  assert.equal(state.step, 1);
});

test('AdamW second step uses the moment estimates', () => {
  const params = new Map([['w', new Float32Array([0])]]);
  const state = initAdam(params);
  const t = { ...hyper, weightDecay: 0 };
  adamwStep(params, new Map([['w', new Float32Array([1])]]), state, 0.1, t);
  adamwStep(params, new Map([['w', new Float32Array([3])]]), state, 0.1, t);
  const m = 0.9 * 0.1 + 0.1 * 3; // 0.39
  const v = 0.999 * 0.001 + 0.001 * 9; // 0.009999
  const update = m / (1 - 0.81) / (Math.sqrt(v / (1 - 0.998001)) + 1e-8);
  assert.ok(Math.abs(params.get('w')![0] - (-0.1 - 0.1 * update)) < 1e-6);
});

test('warm-up is linear, then cosine decays to lr·minLrRatio at the last step', () => {
  const s = { lr: 1, warmupSteps: 4, steps: 14, minLrRatio: 0.1 };
  assert.equal(learningRate(0, s), 0.25);
  assert.equal(learningRate(3, s), 1);
  assert.equal(learningRate(4, s), 1);
  assert.ok(Math.abs(learningRate(13, s) - 0.1) < 1e-12);
  assert.ok(Math.abs(learningRate(8.5, s) - 0.55) < 1e-12); // halfway through the decay
});

test('global-norm clipping scales all tensors together', () => {
  const g = new Map([
    ['a', new Float32Array([3])],
    ['b', new Float32Array([4])],
  ]);
  assert.equal(clipGlobalNorm(g, 1), 5);
  assert.ok(Math.abs(g.get('a')![0] - 0.6) < 1e-6 && Math.abs(g.get('b')![0] - 0.8) < 1e-6);
  const small = new Map([['a', new Float32Array([0.3])]]);
  clipGlobalNorm(small, 1);
  assert.equal(small.get('a')![0], Math.fround(0.3));
});

test('sampler: each epoch is a permutation, deterministic per (seed, epoch), resumable from its cursor', () => {
  const a = new EpochSampler(10, 42);
  const epoch0 = a.next(10);
  assert.deepEqual(
    [...epoch0].sort((x, y) => x - y),
    [...Array(10).keys()],
  );
  const epoch1 = a.next(10);
  assert.notDeepEqual(epoch0, epoch1);
  assert.deepEqual(new EpochSampler(10, 42).next(20), [...epoch0, ...epoch1]);
  const b = new EpochSampler(10, 42);
  b.next(7);
  const resumed = new EpochSampler(10, 42, { ...b.cursor });
  assert.deepEqual(resumed.next(6), b.next(6));
});

test('aggregation adds in micro-batch order and divides by the total token count', () => {
  const r = (loss: number, tokens: number, g: number[]) => ({
    lossSum: loss,
    tokenCount: tokens,
    grads: new Map([['x', new Float32Array(g)]]),
  });
  const agg = aggregateInOrder([r(2, 2, [1, 2]), r(4, 6, [3, -2])]);
  assert.equal(agg.lossSum, 6);
  assert.equal(agg.tokenCount, 8);
  assert.deepEqual([...agg.grads.get('x')!], [0.5, 0]);
});

test('packing right-pads, shifts targets by one and masks padding', () => {
  const mb = packMicroBatch(
    [
      { tokens: [1, 5, 6, 2], lossWeights: [0, 0, 1, 1] },
      { tokens: [1, 7, 2], lossWeights: [0, 1, 1] },
    ],
    0,
    3,
  );
  assert.equal(mb.time, 3);
  assert.deepEqual([...mb.inputIds], [1, 5, 6, 1, 7, 0]);
  assert.deepEqual([...mb.targets], [5, 6, 2, 7, 2, 0]);
  assert.deepEqual([...mb.lossMask], [0, 1, 1, 1, 1, 0]);
  assert.equal(tokenCount(mb), 4);
});

test('config errors name the field, the value and what was expected', () => {
  assert.throws(
    () => checkLoraConfig({ r: 0 }),
    (e: unknown) => e instanceof LoraMeshError && e.code === 'LM_ERR_CONFIG' && /lora\.r .*got 0/.test(e.message),
  );
  assert.throws(() => checkLoraConfig({ targetModules: ['qq_proj' as never] }), /qq_proj/);
  assert.throws(
    () => checkTrainConfig({ globalBatch: 30, microBatch: 8 }),
    /globalBatch 30 should be a multiple of train.microBatch 8/,
  );
  assert.throws(() => checkTrainConfig({ lr: NaN }), /train\.lr/);
});

test('addInto (unrolled) gives the bits of the plain float32 loop, for every length mod 4', () => {
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 2 ** (((seed >>> 8) % 40) - 20);
  for (const n of [0, 1, 2, 3, 4, 5, 1023]) {
    const acc = new Float32Array(n).map(rand);
    const plain = acc.slice();
    for (let k = 0; k < 5; k++) {
      const g = new Float32Array(n).map(rand);
      addInto(acc, g);
      for (let i = 0; i < n; i++) plain[i] += g[i];
    }
    assert.deepEqual(new Uint32Array(acc.buffer), new Uint32Array(plain.buffer), `n=${n}`);
  }
  assert.throws(() => addInto(new Float32Array(3), new Float32Array(4)), /LM_ERR_SHAPE|cannot add/);
});

test(
  'InOrderSum built in any arrival order, with results revoked and replaced, ' + 'equals aggregateInOrder bit for bit',
  () => {
    let seed = 3;
    const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const result = (k: number) => ({
      lossSum: rand() * 10,
      tokenCount: 1 + Math.floor(rand() * 20),
      grads: new Map([
        ['a', new Float32Array(37).map(() => (rand() - 0.5) * 10 ** (k % 5))],
        ['b', new Float32Array(5).map(() => rand() - 0.5)],
      ]),
    });
    const bits = (g: { lossSum: number; tokenCount: number; grads: Map<string, Float32Array> }) => [
      g.lossSum,
      g.tokenCount,
      ...[...g.grads].flatMap(([name, v]) => [name, ...new Uint32Array(v.buffer, v.byteOffset, v.length)]),
    ];
    for (let trial = 0; trial < 20; trial++) {
      const n = 1 + (trial % 9);
      const final = Array.from({ length: n }, (_, k) => result(k));
      const slots: (ReturnType<typeof result> | undefined)[] = new Array(n);
      const sum = new InOrderSum(slots);
      const order = final.map((_, i) => i).sort(() => rand() - 0.5);
      // trials ≥ 10: one result first arrives wrong, is revoked, and arrives again (as a spot check does)
      const revoked = trial >= 10 ? order[Math.floor(rand() * n)] : -1;
      for (const i of order) {
        if (i === revoked) {
          slots[i] = result(99);
          sum.advance();
          slots[i] = undefined;
          sum.retract(i);
        }
        slots[i] = final[i];
        sum.advance();
      }
      assert.deepEqual(
        bits(sum.finish()),
        bits(aggregateInOrder(final)),
        `trial ${trial}, order ${order}, revoked ${revoked}`,
      );
    }
    const partial: ({ lossSum: number; tokenCount: number; grads: Map<string, Float32Array> } | undefined)[] = [
      result(0),
      undefined,
      result(2),
    ];
    const early = new InOrderSum(partial);
    early.advance();
    assert.throws(() => early.finish(), /LM_ERR_STATE.*result 1 of 3 is missing/);
  },
);
