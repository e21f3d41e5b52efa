// The step scheduler with a fake clock: pull order, requeue on loss, deadlines derived from the
// worker's measured speed, straggler copies, first result wins, and the ledger.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StepSchedule, type Estimate } from '../../../coordinator/engine/scheduler.ts';

const speeds: Record<string, number> = { fast: 1, slow: 10 }; // ms per position
const estimate: Estimate = (id, n) => (id in speeds ? speeds[id] * n : null);
const opts = { deadlineFactor: 3, deadlineSlackMs: 50, unknownExpectedMs: 5000 };

test('idle workers pull micro-batches in order; nothing is handed out twice while work is queued', () => {
  const s = new StepSchedule(0, [10, 10, 10], estimate, opts);
  const a = s.next('fast', 0)!;
  const b = s.next('slow', 0)!;
  const c = s.next('fast', 0)!;
  assert.deepEqual([a.index, b.index, c.index], [0, 1, 2]);
  assert.equal(a.deadline, 0 + 3 * 10 + 50); // 3 × expected + slack, from the worker's own speed
  assert.equal(b.deadline, 0 + 3 * 100 + 50);
});

test('a lost attempt is requeued and retried; its ledger shows both attempts', () => {
  const s = new StepSchedule(4, [10, 10], estimate, opts);
  const a = s.next('fast', 0)!;
  const b = s.next('slow', 0)!;
  s.lose(a.assignmentId, 'lost', 5);
  const retry = s.next('fast', 6)!;
  assert.equal(retry.index, a.index);
  assert.equal(retry.reason, 'retry');
  assert.equal(s.complete(retry.assignmentId, 20), 'used');
  assert.equal(s.complete(b.assignmentId, 100), 'used');
  assert.equal(s.remaining, 0);
  const ledger = s.finish(100);
  assert.deepEqual(
    ledger[0].attempts.map((x) => x.outcome),
    ['lost', 'used'],
  );
  assert.equal(ledger[0].usedWorker, 'fast');
  assert.equal(
    ledger.every((e) => e.attempts.filter((x) => x.outcome === 'used').length === 1),
    true,
  );
});

test(
  'an idle fast worker copies a slow attempt it would finish sooner; ' + 'first result wins, the other is a duplicate',
  () => {
    const s = new StepSchedule(0, [10, 10], estimate, opts);
    const fastFirst = s.next('fast', 0)!;
    const slowFirst = s.next('slow', 0)!; // expected 100 ms
    s.complete(fastFirst.assignmentId, 10);
    const copy = s.next('fast', 10)!; // the fast worker would finish at 20 < 100
    assert.equal(copy.index, slowFirst.index);
    assert.equal(copy.reason, 'straggler');
    assert.equal(s.next('fast', 10), null, 'at most one copy of a micro-batch at a time');
    assert.equal(s.complete(copy.assignmentId, 20), 'used');
    assert.equal(s.complete(slowFirst.assignmentId, 100), 'duplicate');
    assert.deepEqual(
      s.finish(100)[1].attempts.map((x) => x.outcome),
      ['duplicate', 'used'],
    );
  },
);

test(
  'an attempt past its deadline is copied even to a worker of unknown speed; ' +
    'a copy still out at the end is cancelled',
  () => {
    const s = new StepSchedule(0, [10], estimate, opts);
    const a = s.next('fast', 0)!; // deadline 80
    assert.equal(s.next('newcomer', 50), null, 'not overdue, and the newcomer is not known to be faster');
    assert.equal(s.hasOverdue(81), true);
    const copy = s.next('newcomer', 81)!;
    assert.equal(copy.index, 0);
    assert.equal(s.complete(a.assignmentId, 90), 'used');
    assert.deepEqual(
      s.finish(90)[0].attempts.map((x) => x.outcome),
      ['used', 'cancelled'],
    );
  },
);

test('a relay takes whole free blocks only; its micro-batches are never copied to a single worker; a lost block comes back', () => {
  const s = new StepSchedule(0, [10, 10, 10, 10, 10], estimate, opts);
  const single = s.next('fast', 0)!; // micro-batch 0 goes to a worker: block 0 (0, 1) is no longer whole
  assert.equal(single.index, 0);
  const got = s.nextBlocks('relay', 2, 4, 0)!;
  assert.deepEqual(got.blocks, [1, 2]); // blocks (2, 3) and (4): the last block is shorter
  assert.deepEqual(
    got.attempts.map((a) => a.index),
    [2, 3, 4],
  );
  assert.ok(got.attempts.every((a) => a.group === got.group && a.assignmentId.startsWith(got.group)));
  assert.equal(s.nextBlocks('relay', 2, 4, 0), null, 'nothing whole is left');
  assert.equal(s.next('fast', 0)!.index, 1);
  // long past every deadline: an idle worker may copy micro-batch 0 or 1, never the relay's
  for (let k = 0; k < 3; k++) {
    const copy = s.next('slow', 1e9);
    assert.ok(copy === null || copy.index < 2, `copied ${copy?.index}`);
  }
  for (const a of got.attempts) s.lose(a.assignmentId, 'lost', 10);
  assert.deepEqual(s.nextBlocks('relay2', 2, 1, 20)!.blocks, [1]);
  assert.equal(s.unassigned, 1); // micro-batch 4, its block whole again for the next relay
});

test("a relay's blocks share one deadline; past it another idle relay takes a whole copy, one at a time, and the first whole answer counts", () => {
  // relays measured at 1 ms per position over a whole answer (their workers compute in parallel)
  const relays: Estimate = (id, n) => (id.startsWith('relay') ? n : null);
  const s = new StepSchedule(0, [10, 20, 10, 10], relays, opts);
  const a = s.nextBlocks('relayA', 2, 1, 0)!;
  const b = s.nextBlocks('relayB', 2, 1, 0)!;
  assert.deepEqual([a.blocks, b.blocks, a.copies, b.copies], [[0], [1], false, false]);
  // one deadline per group: (3 + 1) × the relay's expected time for all its positions + 2 × slack (room for the
  // relay's own straggler handling)
  assert.deepEqual(
    a.attempts.map((x) => x.deadline),
    [4 * 30 + 100, 4 * 30 + 100],
  );
  assert.deepEqual(
    b.attempts.map((x) => x.deadline),
    [4 * 20 + 100, 4 * 20 + 100],
  );
  // relay B answers its block; nothing is free, relay A is not yet late
  for (const x of b.attempts) assert.equal(s.complete(x.assignmentId, 30), 'used');
  assert.equal(s.nextBlocks('relayB', 2, 1, 100), null);
  // past relay A's deadline (220): relay B takes a copy of block 0, whole; never relay A itself
  assert.equal(s.nextBlocks('relayA', 2, 4, 221), null);
  const copy = s.nextBlocks('relayB', 2, 4, 221)!;
  assert.deepEqual([copy.blocks, copy.copies], [[0], true]);
  assert.ok(copy.attempts.every((x) => x.reason === 'straggler' && x.group === copy.group));
  // at most one copy at a time
  assert.equal(s.nextBlocks('relayC', 2, 4, 10_000), null);
  // the copy answers first: it counts; relay A's answer is a duplicate
  for (const x of copy.attempts) assert.equal(s.complete(x.assignmentId, 150), 'used');
  for (const x of a.attempts) assert.equal(s.complete(x.assignmentId, 160), 'duplicate');
  assert.equal(s.remaining, 0);
  const ledger = s.finish(170);
  assert.equal(ledger[0].usedWorker, 'relayB');
  assert.deepEqual(
    ledger[0].attempts.map((x) => [x.workerId, x.reason, x.outcome]),
    [
      ['relayA', 'first', 'duplicate'],
      ['relayB', 'straggler', 'used'],
    ],
  );
});

test('a late block with one micro-batch done or two attempts out is not copied', () => {
  const relays: Estimate = (id, n) => (id.startsWith('relay') ? n : null);
  const s = new StepSchedule(0, [10, 10, 10, 10], relays, opts);
  const a = s.nextBlocks('relayA', 2, 2, 0)!;
  assert.deepEqual(a.blocks, [0, 1]);
  // block 1's second micro-batch is done (a copy cannot be whole); block 0 is copyable
  s.complete(a.attempts[3].assignmentId, 10);
  const copy = s.nextBlocks('relayB', 2, 2, 10_000)!;
  assert.deepEqual(copy.blocks, [0]);
  // block 0 now has two attempts out: no third
  assert.equal(s.nextBlocks('relayC', 2, 2, 20_000), null);
});

test("a relay's answer being checked is not late: its blocks are not copied, and hasOverdue stops counting them", () => {
  const relays: Estimate = (id, n) => (id.startsWith('relay') ? n : null);
  const s = new StepSchedule(0, [10, 10], relays, opts);
  const a = s.nextBlocks('relayA', 2, 1, 0)!;
  assert.ok(s.hasOverdue(10_000));
  s.answered(a.attempts.map((x) => x.assignmentId)); // its block-result arrived; a recomputation checks it
  assert.equal(s.hasOverdue(10_000), false);
  assert.equal(s.nextBlocks('relayB', 2, 1, 10_000), null);
  // refused after all: lost, so the block is free again for anyone
  for (const x of a.attempts) s.lose(x.assignmentId, 'rejected', 10_001);
  assert.deepEqual(s.nextBlocks('relayB', 2, 1, 10_002)!.blocks, [0]);
});
