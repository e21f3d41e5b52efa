// The step in flight: used results fill their slots and the in-order sum; taking a worker's results
// back empties its slots and requeues them, and the sum still comes out bit-identical to
// aggregateInOrder; finish resolves with the ledger and closes the step, fail rejects and closes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { aggregateInOrder, InOrderSum } from '../../../shared/train/aggregate.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import { packMicroBatch } from '../../../shared/train/micro-batch.ts';
import { type LedgerEntry, StepSchedule } from '../../../coordinator/engine/scheduler.ts';
import { itemPositions, StepInFlight, type WorkItem } from '../../../coordinator/engine/step-in-flight.ts';

const items: WorkItem[] = Array.from({ length: 4 }, (_, i) => ({
  kind: 'grad',
  microBatch: packMicroBatch([{ tokens: [1, 2, 3, 4 + i], lossWeights: [0, 1, 1, 1] }], 0, i),
}));
const grad = (i: number, scale = 1): GradientResult => ({
  lossSum: i + 1,
  tokenCount: 3,
  grads: new Map([['w', Float32Array.from({ length: 5 }, (_, k) => scale * Math.fround(Math.sin(7 * i + k) / 3))]]),
});

function open() {
  const slots: (GradientResult | undefined)[] = new Array(items.length);
  const sum = new InOrderSum(slots);
  const schedule = new StepSchedule(3, items.map(itemPositions), () => null);
  const settled: { results?: GradientResult[]; ledger?: LedgerEntry[]; error?: Error } = {};
  const step = new StepInFlight(7, schedule, items, slots, sum, {
    resolve: (results, ledger) => Object.assign(settled, { results, ledger }),
    reject: (error) => Object.assign(settled, { error }),
  });
  /** `workerId` computes the next item and sends `result` for it; the schedule's outcome. */
  const complete = (workerId: string, result: (index: number) => GradientResult) => {
    const a = schedule.next(workerId, 0)!;
    const outcome = schedule.complete(a.assignmentId, 0);
    if (outcome === 'used') step.use(result(a.index), { index: a.index, workerId, norm: 1, verified: false });
    return a.index;
  };
  return { step, sum, settled, complete };
}

test('positions of an item: batch × time over its micro-batches', () => {
  const mb = items[0].kind === 'grad' ? items[0].microBatch : null;
  assert.equal(itemPositions(items[0]), mb!.batch * mb!.time);
});

test('results taken back leave their slots, are computed again, and the sum is the in-order one, bit for bit', () => {
  const { step, sum, settled, complete } = open();
  complete('a', (i) => grad(i));
  complete('liar', (i) => grad(i, 1e3));
  complete('a', (i) => grad(i));
  step.takeBack('liar');
  assert.equal(step.results[1], undefined);
  assert.equal(step.screened[1], undefined);
  assert.equal(step.schedule.remaining, 2);
  assert.equal(
    complete('a', (i) => grad(i)),
    1,
    'the revoked item is handed out first',
  );
  complete('a', (i) => grad(i));
  step.finish(5);
  assert.equal(step.open, false);
  const expected = aggregateInOrder(items.map((_, i) => grad(i)));
  assert.deepEqual([...sum.finish().grads.get('w')!], [...expected.grads.get('w')!]);
  assert.equal(settled.results, step.results);
  assert.deepEqual(
    settled.ledger!.map((e) => [e.step, e.usedWorker]),
    [
      [3, 'a'],
      [3, 'a'],
      [3, 'a'],
      [3, 'a'],
    ],
  );
  assert.deepEqual(
    settled.ledger![1].attempts.map((a) => [a.workerId, a.outcome]),
    [
      ['liar', 'revoked'],
      ['a', 'used'],
    ],
  );
});

test('fail rejects the step with its error and closes it', () => {
  const { step, settled } = open();
  step.fail(new Error('stopped'));
  assert.equal(step.open, false);
  assert.equal(settled.error?.message, 'stopped');
});
