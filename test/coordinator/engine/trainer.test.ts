// The trainer never applies or publishes a non-finite update, and a step that fails (interrupted,
// refused) leaves the state exactly as the last whole step left it, sampler cursor included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import type { LoraMeshError } from '../../../shared/errors.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import type { MicroBatch } from '../../../shared/train/micro-batch.ts';
import {
  Trainer,
  type GradientExecutor,
  type StepResults,
  type TrainerState,
} from '../../../coordinator/engine/trainer.ts';
import { tinyConfig } from '../../helpers/tiny-model.ts';

type Fill = (step: number) => number | Error;

/** An executor whose every gradient value is fill(step) (or that fails with it). */
function fakeExecutor(fill: Fill, published: number[]): GradientExecutor {
  const result = (mb: MicroBatch, value: number, names: Map<string, number>): GradientResult => ({
    lossSum: 1,
    tokenCount: mb.batch,
    grads: new Map([...names].map(([n, len]) => [n, new Float32Array(len).fill(value)])),
  });
  let names = new Map<string, number>();
  return {
    async compute(step, _v, microBatches): Promise<StepResults> {
      const value = fill(step);
      if (value instanceof Error) throw value;
      const results = microBatches.map((mb) => result(mb, value, names));
      const tokens = results.reduce((n, r) => n + r.tokenCount, 0);
      const grads = new Map(
        [...names].map(([n, len]) => {
          const g = new Float32Array(len);
          for (const r of results) {
            const x = r.grads.get(n)!;
            for (let i = 0; i < len; i++) g[i] += x[i];
          }
          for (let i = 0; i < len; i++) g[i] /= tokens;
          return [n, g];
        }),
      );
      return { results, sum: { lossSum: results.length, tokenCount: tokens, grads } };
    },
    async computeLocal() {
      throw new Error('not used');
    },
    publish(version, adapter) {
      published.push(version);
      names = new Map([...adapter].map(([n, v]) => [n, v.length]));
    },
  };
}

const examples = Array.from({ length: 16 }, (_, i) => ({ tokens: [1, 2, 3, 4 + (i % 5)], lossWeights: [0, 1, 1, 1] }));

function trainer(fill: Fill, clipNorm: number, published: number[]): Trainer {
  return new Trainer(
    {
      model: tinyConfig(),
      lora: checkLoraConfig({ r: 2, alpha: 4 }),
      examples,
      padId: 0,
      train: checkTrainConfig({ steps: 5, globalBatch: 4, microBatch: 2, lr: 0.01, warmupSteps: 0, clipNorm, seed: 3 }),
    },
    fakeExecutor(fill, published),
  );
}

const same = (a: TrainerState, b: TrainerState) => {
  assert.equal(a.step, b.step);
  assert.equal(a.paramVersion, b.paramVersion);
  assert.deepEqual(a.cursor, b.cursor);
  assert.equal(a.adam.step, b.adam.step);
  for (const [what, x, y] of [
    ['adapter', a.adapter, b.adapter],
    ['m', a.adam.m, b.adam.m],
    ['v', a.adam.v, b.adam.v],
  ] as const) {
    for (const [name, v] of x) assert.deepEqual(v, y.get(name), `${what} ${name}`);
  }
};

test(
  'finite gradients whose squares overflow (clip off): ' +
    'the AdamW step is refused with LM_ERR_NON_FINITE and nothing changes',
  async () => {
    const published: number[] = [];
    const t = trainer((step) => (step === 1 ? 1e30 : 0.01), 0, published);
    t.start();
    await t.runStep();
    const before = t.exportState();
    await assert.rejects(
      t.runStep(),
      (err: LoraMeshError) => err.code === 'LM_ERR_NON_FINITE' && /not applied/.test(err.message),
    );
    same(t.exportState(), before);
    assert.deepEqual(published, [0, 1], 'no version after the refused step is published');
    for (const v of t.adapter.values()) assert.ok(v.every(Number.isFinite));
  },
);

test('a summed gradient with Infinity in it is refused before any update (clip on)', async () => {
  const published: number[] = [];
  const t = trainer(() => Infinity, 1, published);
  t.start();
  const before = t.exportState();
  await assert.rejects(
    t.runStep(),
    (err: LoraMeshError) => err.code === 'LM_ERR_NON_FINITE' && /summed gradient/.test(err.message),
  );
  same(t.exportState(), before);
  assert.deepEqual(published, [0]);
});

test(
  'a step whose compute fails (interrupted) ' + 'rewinds the sampler: the next try takes the same micro-batches',
  async () => {
    const published: number[] = [];
    let fail = true;
    const t = trainer(() => (fail ? new Error('interrupted') : 0.01), 1, published);
    t.start();
    const before = t.exportState();
    const expected = trainer(() => 0.01, 1, []).nextMicroBatches();
    await assert.rejects(t.runStep(), /interrupted/);
    same(t.exportState(), before);
    fail = false;
    assert.deepEqual(t.nextMicroBatches(), expected);
  },
);
