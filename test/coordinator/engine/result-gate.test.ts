// The result gate without a mesh: admitResult refuses what cannot be summed, in order, with its
// code; probation and the secret seed pick which results wait for a trusted recomputation; an
// agreeing recomputation has the host accept the result, a disagreeing one convicts the worker
// (rejection counted, name banned, its results taken back, the host told to expel it); the outlier
// screen convicts a huge result's sender, or revokes the results of one that already left; a
// failing recomputation aborts the step.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LoraMeshError, type ErrorCode } from '../../../shared/errors.ts';
import type { Result } from '../../../shared/protocol/messages.ts';
import { encodeFloats, F32 } from '../../../shared/protocol/wire-codec.ts';
import { mixSeed } from '../../../shared/rng.ts';
import { InOrderSum } from '../../../shared/train/aggregate.ts';
import type { GradientResult } from '../../../shared/train/gradients.ts';
import { tokenCount, type MicroBatch } from '../../../shared/train/micro-batch.ts';
import {
  admitResult,
  ResultGate,
  type Admitted,
  type CheckedWorker,
  type GateHost,
  type ResultChecks,
} from '../../../coordinator/engine/result-gate.ts';
import { type LedgerEntry, StepSchedule } from '../../../coordinator/engine/scheduler.ts';
import { type Holding, StepInFlight, type WorkItem } from '../../../coordinator/engine/step-in-flight.ts';
import { honest, microBatches, tinyManifest, VALUES } from '../../helpers/tiny-mesh.ts';

const manifest = tinyManifest('gate-test');
const split = (g: Float32Array) =>
  new Map([
    ['m.lora_A', g.slice(0, 6)],
    ['m.lora_B', g.slice(6)],
  ]);

type Worker = CheckedWorker;
const worker = (id: string): Worker => ({ id, name: `name-${id}`, checksPassed: 0, checksPending: 0 });

function result(index: number, values: Float32Array = honest(index), over: Partial<Result> = {}): Result {
  return {
    type: 'result',
    assignmentId: 'x',
    paramVersion: 0,
    tokenCount: tokenCount(microBatches[index]),
    lossSum: 1,
    computeMs: 1,
    grads: encodeFloats(values, F32),
    ...over,
  };
}

/** A gate over one step, with a host that records what the gate asks and accepts like the mesh. */
function setup(checks?: Partial<ResultChecks>, trusted = honest) {
  const recomputed: number[] = [];
  let failRecompute: Error | null = null;
  const full: ResultChecks | undefined = checks && {
    spotCheck: 0,
    probation: 0,
    outlierFactor: 10,
    tolerance: 1e-6,
    secret: 1,
    recompute: async (work: WorkItem): Promise<GradientResult> => {
      const index = microBatches.indexOf((work as { microBatch: MicroBatch }).microBatch);
      recomputed.push(index);
      if (failRecompute) throw failRecompute;
      return { lossSum: 1, tokenCount: 3, grads: split(trusted(index)) };
    },
    ...checks,
  };
  const items: WorkItem[] = microBatches.map((microBatch) => ({ kind: 'grad', microBatch }));
  const slots: (GradientResult | undefined)[] = new Array(items.length);
  const schedule = new StepSchedule(
    0,
    items.map(() => 4),
    () => null,
  );
  let settled: { results?: GradientResult[]; ledger?: LedgerEntry[]; error?: Error } | null = null;
  const step = new StepInFlight(0, schedule, items, slots, new InOrderSum(slots), {
    resolve: (results, ledger) => (settled = { results, ledger }),
    reject: (error) => (settled = { error }),
  });
  const calls = {
    log: [] as string[],
    rejections: [] as ErrorCode[],
    dispatched: 0,
    accepted: [] as { worker: string; index: number; verified: boolean }[],
    expelled: [] as { worker: string; closing: string; code?: ErrorCode }[],
    aborted: [] as Error[],
  };
  const workers = new Map<string, Worker>();
  const host: GateHost<Worker> = {
    log: (line) => calls.log.push(line),
    countRejection: (code) => calls.rejections.push(code),
    dispatch: () => calls.dispatched++,
    adapter: () => new Map(),
    workers,
    accept: (w, held, r, { grads, norm }, verified, s, now) => {
      calls.accepted.push({ worker: w.id, index: held.index, verified });
      if (s.schedule.complete(held.assignmentId, now) === 'used')
        s.use(
          { lossSum: r.lossSum, tokenCount: r.tokenCount, grads },
          { index: held.index, workerId: w.id, norm, verified },
        );
      gate.closeIfComplete(s);
    },
    expel: (w, closing, refusal) => calls.expelled.push({ worker: w.id, closing, code: refusal?.code }),
    abort: (err) => {
      calls.aborted.push(err);
      step.fail(err);
    },
  };
  const gate = new ResultGate<Worker>(full, host);
  /** `w` takes the next attempt and sends `values` for it: admitted, then held for a check or accepted. */
  const deliver = (w: Worker, values?: (index: number) => Float32Array) => {
    if (!workers.has(w.id)) workers.set(w.id, w);
    const a = schedule.next(w.id, Date.now())!;
    const held: Holding = { assignmentId: a.assignmentId, step: 0, index: a.index, sentAt: Date.now() };
    const r = result(a.index, values?.(a.index));
    const admitted = admitResult(r, { paramVersion: 0, item: items[a.index], slots: items.length }, manifest, VALUES);
    if (!gate.holdForCheck(w, held, r, admitted, step)) host.accept(w, held, r, admitted, false, step, Date.now());
    return a.index;
  };
  return {
    gate,
    step,
    calls,
    recomputed,
    workers,
    deliver,
    settled: () => settled,
    failRecomputeWith: (e: Error) => {
      failRecompute = e;
    },
  };
}

const settle = () => new Promise((r) => setImmediate(r));

const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof LoraMeshError, String(err));
    return err.code;
  }
  return 'none';
};

test('admitResult: gradients by name and their norm; refused in order: stale, tokens, loss, values, overflow', () => {
  const item: WorkItem = { kind: 'grad', microBatch: microBatches[2] };
  const expected = { paramVersion: 0, item, slots: 6 };
  const ok: Admitted = admitResult(result(2), expected, manifest, VALUES);
  assert.deepEqual([...ok.grads.keys()], ['m.lora_A', 'm.lora_B']);
  assert.deepEqual([...ok.grads.get('m.lora_B')!], [...honest(2).slice(6)]);
  assert.ok(Math.abs(ok.norm - Math.hypot(...honest(2))) < 1e-9);
  const admit =
    (r: Result, slots = 6) =>
    () =>
      admitResult(r, { ...expected, slots }, manifest, VALUES);
  // Stale wins over every later check.
  assert.equal(codeOf(admit(result(2, new Float32Array(VALUES).fill(3e38), { paramVersion: 1 }))), 'LM_ERR_STALE');
  assert.equal(codeOf(admit(result(2, honest(2), { tokenCount: 99, lossSum: -1 }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(admit(result(2, honest(2), { lossSum: -1 }))), 'LM_ERR_NON_FINITE');
  assert.equal(codeOf(admit(result(2, honest(2), { lossSum: 1e308 }))), 'LM_ERR_NON_FINITE');
  assert.equal(codeOf(admit(result(2, new Float32Array(5)))), 'LM_ERR_SHAPE');
  assert.equal(codeOf(admit(result(2, new Float32Array(VALUES).fill(3e38)))), 'LM_ERR_NON_FINITE');
  // The bound shrinks with the step's slot count (any float32 sum of its results stays finite).
  assert.throws(admit(result(2, new Float32Array(VALUES).fill(1e37)), 1000), /could overflow the step's float32 sum/);
  assert.equal(codeOf(admit(result(2, new Float32Array(VALUES).fill(1e37)), 1)), 'none', 'one slot bounds loosely');
});

test("holdForCheck: never without checks; a worker's first `probation` results; the seed picks others", async () => {
  const none = setup();
  none.deliver(worker('a'));
  assert.equal(none.calls.accepted.length, 1);
  assert.equal(none.recomputed.length, 0);

  const probation = setup({ probation: 2, outlierFactor: 0 });
  const a = worker('a');
  for (let i = 0; i < 4; i++) probation.deliver(a);
  assert.deepEqual(probation.recomputed, [0, 1], 'the first two, pending ones included, are recomputed');
  await settle();
  assert.equal(a.checksPassed, 2);
  assert.equal(a.checksPending, 0);
  assert.deepEqual(
    probation.calls.accepted.map((c) => c.verified),
    [false, false, true, true],
    'unchecked results count at once; the checked ones once the recomputation agrees',
  );

  const secret = 12345;
  const spotted = setup({ spotCheck: 0.5, secret, outlierFactor: 0 });
  for (let i = 0; i < 6; i++) spotted.deliver(worker('b'));
  const picks = [0, 1, 2, 3, 4, 5].filter((i) => mixSeed(secret, 0, i) / 2 ** 32 < 0.5);
  assert.deepEqual(spotted.recomputed, picks);
});

test('a refuted spot check convicts: rejection counted, step results taken back, name banned, expelled', async () => {
  const g = setup({ probation: 2, outlierFactor: 0 });
  const liar = worker('liar');
  g.deliver(liar); // slot 0, honest: passes its check and is used
  await settle();
  assert.equal(g.step.results[0] !== undefined, true);
  g.deliver(liar, (i) => honest(i).map((x) => -x)); // slot 1: refuted
  await settle();
  assert.deepEqual(g.calls.rejections, ['LM_ERR_SPOT_CHECK']);
  assert.deepEqual(g.calls.expelled, [{ worker: 'liar', closing: 'failed a spot check', code: 'LM_ERR_SPOT_CHECK' }]);
  assert.match(
    g.calls.log.at(-1)!,
    /^worker liar \(name-liar\) failed a spot check \(LM_ERR_SPOT_CHECK\): result of micro-batch 1 of step 0 disagrees/,
  );
  assert.equal(g.step.results[0], undefined, 'its used result is taken back');
  assert.equal(g.step.schedule.remaining, 6);
  assert.deepEqual(
    [...g.step.schedule.attempts.values()].map((a) => a.outcome),
    ['revoked', 'rejected'],
  );
  assert.equal(g.gate.isBanned('name-liar'), true);
  assert.equal(g.calls.dispatched, 1, 'the requeued micro-batches are handed out');
  assert.equal(g.settled(), null);
});

test('a spot check refuted after its step ended: the liar still goes, without a reject frame', async () => {
  const g = setup({ probation: 1, outlierFactor: 0 });
  g.deliver(worker('liar'), (i) => honest(i).map((x) => 2 * x));
  g.step.fail(new Error('stopped'));
  await settle();
  assert.deepEqual(g.calls.rejections, ['LM_ERR_SPOT_CHECK']);
  assert.deepEqual(g.calls.expelled, [{ worker: 'liar', closing: 'failed a spot check', code: undefined }]);
  assert.equal(g.gate.isBanned('name-liar'), true);
});

test('outlier screen: the largest flagged result is recomputed; its refuted sender loses all its results', async () => {
  const g = setup({});
  const [a, b, liar] = [worker('a'), worker('b'), worker('liar')];
  const lie = (i: number) => honest(i).map((x) => x * 1e6);
  for (const w of [a, b, liar, a, b, liar]) g.deliver(w, w === liar ? lie : undefined);
  await settle();
  const largest = Math.hypot(...honest(2)) > Math.hypot(...honest(5)) ? 2 : 5;
  assert.deepEqual(g.recomputed, [largest], 'one recomputation, the larger of the two lies');
  const screening = new RegExp(`^step 0: micro-batch ${largest} from worker liar has norm .* over 10× the`);
  assert.match(g.calls.log[0], screening);
  assert.deepEqual(g.calls.expelled, [{ worker: 'liar', closing: 'failed an outlier check', code: 'LM_ERR_OUTLIER' }]);
  assert.equal(g.step.results[2], undefined);
  assert.equal(g.step.results[5], undefined);
  assert.equal(g.settled(), null, 'the step waits for its slots again');
  g.deliver(a);
  g.deliver(b);
  const done = g.settled()!;
  assert.equal(done.results!.length, 6);
  assert.ok(
    done.ledger!.every((e) => e.usedWorker === 'a' || e.usedWorker === 'b'),
    "every slot is an honest worker's",
  );
  assert.equal(g.step.open, false);
});

test('outlier screen: a refuted sender that already left has its results taken back all the same', async () => {
  const g = setup({});
  const [a, b, liar] = [worker('a'), worker('b'), worker('liar')];
  for (const w of [a, b, liar]) g.deliver(w, w === liar ? (i) => honest(i).map((x) => x * 1e6) : undefined);
  for (const w of [a, b, a]) g.deliver(w);
  g.workers.delete('liar');
  await settle();
  assert.deepEqual(g.calls.rejections, ['LM_ERR_OUTLIER']);
  assert.deepEqual(g.calls.expelled, []);
  assert.match(g.calls.log.at(-1)!, /^worker liar \(gone\): LM_ERR_OUTLIER: .*; its results are recomputed$/);
  assert.equal(g.step.results[2], undefined);
});

test('an outlier the recomputation confirms is verified, and the step ends with it', async () => {
  const big = (i: number) => (i === 3 ? honest(i).map((x) => x * 10) : honest(i));
  const g = setup({ outlierFactor: 2 }, big);
  for (const w of ['a', 'b', 'c', 'a', 'b', 'c']) g.deliver(worker(w), big);
  assert.equal(g.step.verifying, 1);
  await settle();
  assert.deepEqual(g.recomputed, [3]);
  assert.equal(g.step.screened[3]?.verified, true);
  assert.deepEqual(g.calls.expelled, []);
  assert.deepEqual([...g.settled()!.results![3].grads.get('m.lora_A')!], [...big(3).slice(0, 6)]);
});

test('a trusted recomputation that fails aborts the step with its error', async () => {
  const g = setup({ probation: 1, outlierFactor: 0 });
  g.failRecomputeWith(new Error('out of memory'));
  g.deliver(worker('a'));
  await settle();
  assert.deepEqual(g.calls.log, ['a trusted recomputation failed: out of memory']);
  assert.equal(g.calls.aborted[0]?.message, 'out of memory');
  assert.equal(g.settled()?.error?.message, 'out of memory');
});
