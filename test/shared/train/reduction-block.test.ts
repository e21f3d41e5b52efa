// The canonical reduction order (issue 19, shared/train/aggregate.ts): with train.reductionBlock = K a step's
// results are summed in order within blocks of K micro-batch indices, then the block sums in order, checked
// against a float32 reference written out here; InOrderSum gives those bits whatever the arrival order; a block
// as large as the step is today's order, bit for bit; the setting is checked and refused where it means nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkTrainConfig } from '../../../shared/config.ts';
import { Rng } from '../../../shared/rng.ts';
import { aggregateInOrder, InOrderSum } from '../../../shared/train/aggregate.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import { checkRunSettings } from '../../../coordinator/run/run-config.ts';
import { resumeShape, flagsOf, type RunShape } from '../../../coordinator/cli/resume-flags.ts';
import { checkLoraConfig } from '../../../shared/config.ts';

const rng = new Rng(11);
// values of very different magnitudes, so the order of float32 additions shows in the bits
const results: GradientResult[] = Array.from({ length: 7 }, (_, i) => ({
  lossSum: 10 ** (i % 4) * (1 + rng.next()),
  tokenCount: 3 + i,
  grads: new Map([
    ['a', Float32Array.from({ length: 33 }, () => 10 ** (rng.int(8) - 4) * rng.normal())],
    ['b', Float32Array.from({ length: 5 }, () => rng.normal())],
  ]),
}));

/** Blocks of `block` in order, then the block sums in order: float32 elementwise, written out. */
function reference(block: number) {
  const blocks: { loss: number; tokens: number; grads: Map<string, Float32Array> }[] = [];
  for (let start = 0; start < results.length; start += block) {
    const part = results.slice(start, start + block);
    const grads = new Map<string, Float32Array>();
    for (const name of ['a', 'b']) {
      const acc = new Float32Array(part[0].grads.get(name)!);
      for (const r of part.slice(1)) {
        const g = r.grads.get(name)!;
        for (let i = 0; i < acc.length; i++) acc[i] = Math.fround(acc[i] + g[i]);
      }
      grads.set(name, acc);
    }
    blocks.push({
      loss: part.reduce((s, r) => s + r.lossSum, 0),
      tokens: part.reduce((s, r) => s + r.tokenCount, 0),
      grads,
    });
  }
  const total = blocks[0];
  for (const b of blocks.slice(1)) {
    total.loss += b.loss;
    total.tokens += b.tokens;
    for (const [name, g] of b.grads) {
      const acc = total.grads.get(name)!;
      for (let i = 0; i < acc.length; i++) acc[i] = Math.fround(acc[i] + g[i]);
    }
  }
  const scale = 1 / total.tokens;
  for (const g of total.grads.values()) for (let i = 0; i < g.length; i++) g[i] = Math.fround(g[i] * scale);
  return total;
}

test('blocks of K micro-batches, then the block sums: the bits of the written-out float32 reference', () => {
  for (const block of [1, 2, 3, 7, 100]) {
    const want = reference(block);
    const got = aggregateInOrder(results, block);
    assert.equal(got.lossSum, want.loss, `K=${block}: loss`);
    assert.equal(got.tokenCount, want.tokens);
    for (const name of ['a', 'b']) assert.deepEqual(got.grads.get(name), want.grads.get(name), `K=${block}: ${name}`);
  }
  // the order matters: blocks of 2 and one block give different bits here (so the test can tell them apart)
  const [two, all] = [aggregateInOrder(results, 2), aggregateInOrder(results)];
  assert.notDeepEqual(two.grads.get('a'), all.grads.get('a'));
  // a block as large as the step (or larger) is the order without blocks
  for (const block of [7, 8, 1000]) assert.deepEqual(aggregateInOrder(results, block), all);
});

test('InOrderSum with blocks: the same bits in any arrival order, and after a result is revoked', () => {
  for (const block of [2, 3]) {
    const want = aggregateInOrder(results, block);
    for (let trial = 0; trial < 5; trial++) {
      const order = results.map((_, i) => i).sort(() => rng.next() - 0.5);
      const slots: (GradientResult | undefined)[] = new Array(results.length);
      const sum = new InOrderSum(slots, block);
      for (const i of order) {
        slots[i] = results[i];
        sum.advance();
      }
      // a result revoked after it was added, then filled again
      sum.retract(1);
      slots[1] = undefined;
      slots[1] = results[1];
      sum.advance();
      assert.deepEqual(sum.finish(), want, `K=${block}, arrival ${order.join(',')}`);
    }
  }
});

test('train.reductionBlock is checked, and refused with local steps or a robust rule', () => {
  assert.equal(checkTrainConfig({ reductionBlock: 4 }).reductionBlock, 4);
  assert.equal('reductionBlock' in checkTrainConfig({}), false);
  for (const bad of [0, 1.5, -2, '4'])
    assert.throws(
      () => checkTrainConfig({ reductionBlock: bad as number }),
      /LM_ERR_CONFIG: train\.reductionBlock should be an integer ≥ 1/,
    );
  assert.throws(() => new InOrderSum([], 0), /LM_ERR_CONFIG: reduction block 0/);
  const run = { model: '/m', lora: {}, train: { reductionBlock: 2 } } as never as Parameters<
    typeof checkRunSettings
  >[0];
  assert.equal(checkRunSettings(run).train.reductionBlock, 2);
  assert.throws(
    () => checkRunSettings({ ...run, aggregation: 'median' }),
    /run\.train\.reductionBlock should be no reduction block with aggregation median, got 2/,
  );
  assert.throws(
    () => checkRunSettings({ ...run, local: { steps: 2, innerLr: 0.01, outerLr: 0.7, outerMomentum: 0.9 } }),
    /run\.train\.reductionBlock should be no reduction block with local steps/,
  );
});

test('--resume keeps the reduction block: another one is named as a contradiction', () => {
  const stored: RunShape = {
    model: '/models/tiny',
    data: { kind: 'demo', trainSize: 64, seed: 5 },
    lora: checkLoraConfig({ r: 4, alpha: 8 }),
    train: checkTrainConfig({ steps: 6, globalBatch: 8, microBatch: 2, seed: 5, reductionBlock: 2 }),
    wire: { up: { name: 'f32' }, down: { name: 'f32' } },
    checkpointEvery: 4,
    aggregation: 'sum',
    arithmetic: 'simd128',
  };
  const flags = (reductionBlock?: number) => ({ ...flagsOf(stored), reductionBlock });
  assert.equal(resumeShape(stored, flags(2), new Set(['reductionBlock']), 'r').train.reductionBlock, 2);
  assert.equal(resumeShape(stored, flags(), new Set(), 'r').train.reductionBlock, 2);
  assert.throws(
    () => resumeShape(stored, flags(4), new Set(['reductionBlock']), 'r'),
    /--reduction-block 4 contradicts the run's 2/,
  );
});

test('blocks handed in already summed (a relay: fillBlock) give the same bits, in any order, and survive a retract', () => {
  for (const block of [2, 3]) {
    const expected = aggregateInOrder(results, block);
    const blockCount = Math.ceil(results.length / block);
    // a relay's partial: its block's results summed in order, undivided (blockSums of that block alone)
    const partial = (b: number) => new InOrderSum(results.slice(b * block, (b + 1) * block)).blockSums()[0];
    for (const relayed of [[0], [1, 2], [blockCount - 1], [...Array(blockCount).keys()]]) {
      const slots: (GradientResult | undefined)[] = new Array(results.length);
      const sum = new InOrderSum(slots, block);
      const order = [...results.keys()].reverse();
      const given = new Set(relayed);
      for (const b of [...given].reverse()) {
        const p = partial(b);
        for (let i = b * block; i < Math.min(results.length, (b + 1) * block); i++)
          slots[i] = { lossSum: results[i].lossSum, tokenCount: results[i].tokenCount, grads: new Map() };
        sum.fillBlock(b, p);
      }
      for (const i of order) {
        if (given.has(Math.floor(i / block))) continue;
        slots[i] = results[i];
        sum.advance();
      }
      const got = sum.finish();
      assert.equal(got.lossSum, expected.lossSum, `block ${block}, relayed ${relayed}`);
      for (const name of ['a', 'b']) assert.deepEqual(got.grads.get(name), expected.grads.get(name));
    }
    // a relay's block taken back (its worker lied) and computed again one by one: the same bits
    const slots: (GradientResult | undefined)[] = new Array(results.length);
    const sum = new InOrderSum(slots, block);
    for (let i = block; i < results.length; i++) slots[i] = results[i];
    for (let i = 0; i < block; i++) slots[i] = { lossSum: 0, tokenCount: 0, grads: new Map() };
    sum.fillBlock(0, partial(0));
    for (let i = 0; i < block; i++) {
      slots[i] = undefined;
      sum.retract(i);
    }
    for (let i = 0; i < block; i++) slots[i] = results[i];
    sum.advance();
    const again = sum.finish();
    for (const name of ['a', 'b']) assert.deepEqual(again.grads.get(name), expected.grads.get(name));
  }
});
