// The pool's fair share (coordinator/pool/fair-share.ts) on a virtual clock: workers of different speeds
// pull micro-batches of several runs, each run's steps scheduled by the mesh's own StepSchedule (so
// straggler copies and retries after a lost worker happen as in a run). Over every window in which
// both runs had unassigned micro-batches, a run's share of tokens in used results follows the weights
// (75 % ± 5 points at 3:1, 50 % ± 5 at 1:1), priorities are strict, and copies and retries are not
// charged to a run.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StepSchedule } from '../../../coordinator/engine/scheduler.ts';
import { checkShareSettings, FairShare, type ShareSettings } from '../../../coordinator/pool/fair-share.ts';

interface SimRun {
  id: string;
  share: ShareSettings;
  /** tokens of each micro-batch of a step */
  microBatches: number[];
  steps: number;
  /** virtual time of submission */
  submitAt: number;
  /** optimizer step and parameter broadcast between steps: the run has nothing to hand out */
  gap: number;
}

interface Used {
  at: number;
  run: string;
  tokens: number;
}

interface SimResult {
  used: Used[];
  /** [from, to) stretches in which every run of `both` had an unassigned micro-batch */
  bothReady: [number, number][];
  charged: Map<string, number>;
  attempts: { first: number; retry: number; straggler: number };
  finishedAt: Map<string, number>;
}

/**
 * Event-driven pool: each idle worker asks the fair share which ready run to serve and takes that run's
 * next micro-batch (a first attempt or a retry); with no ready run it may take a straggler copy.
 * A worker in `kill` stops at that time and its attempt is lost.
 */
function simulate(runs: SimRun[], speeds: number[], both: [string, string], kill?: { worker: number; at: number }) {
  const share = new FairShare();
  for (const r of runs) share.add(r.id, r.share);
  const state = new Map(
    runs.map((r) => [r.id, { step: 0, schedule: null as StepSchedule | null, resumeAt: r.submitAt, done: false }]),
  );
  const estimate = (workerId: string, tokens: number) => tokens / speeds[Number(workerId)];
  const busy: ({ until: number; run: string; assignment: string } | null)[] = speeds.map(() => null);
  const dead = new Set<number>();
  const result: SimResult = {
    used: [],
    bothReady: [],
    charged: new Map(),
    attempts: { first: 0, retry: 0, straggler: 0 },
    finishedAt: new Map(),
  };
  let now = 0;
  let readySince: number | null = null;
  const readyRuns = () => {
    const ready: string[] = [];
    for (const r of runs) {
      const s = state.get(r.id)!;
      if (!s.done && !s.schedule && now >= s.resumeAt)
        s.schedule = new StepSchedule(s.step, r.microBatches, estimate, {
          deadlineFactor: 3,
          deadlineSlackMs: 0.5,
          unknownExpectedMs: 10,
        });
      if (s.schedule && s.schedule.unassigned > 0) ready.push(r.id);
    }
    return ready;
  };
  for (let guard = 0; guard < 1e6; guard++) {
    // hand work to every idle worker
    for (let w = 0; w < speeds.length; w++) {
      if (busy[w] || dead.has(w)) continue;
      const ready = readyRuns();
      let runId = share.pick(ready);
      let attempt = runId ? state.get(runId)!.schedule!.next(String(w), now) : null;
      if (!attempt) {
        // nothing unassigned anywhere: maybe a copy of a straggler (not charged)
        for (const r of runs) {
          const s = state.get(r.id)!.schedule;
          attempt = s ? s.next(String(w), now) : null;
          if (attempt) {
            runId = r.id;
            break;
          }
        }
      }
      if (!attempt || !runId) continue;
      result.attempts[attempt.reason]++;
      const run = runs.find((r) => r.id === runId)!;
      const tokens = run.microBatches[attempt.index];
      if (attempt.reason === 'first') share.charge(runId, tokens);
      busy[w] = { until: now + tokens / speeds[w], run: runId, assignment: attempt.assignmentId };
    }
    const ready = new Set(readyRuns());
    const bothNow = ready.has(both[0]) && ready.has(both[1]);
    if (bothNow && readySince === null) readySince = now;
    if (!bothNow && readySince !== null) {
      result.bothReady.push([readySince, now]);
      readySince = null;
    }
    // the next event: a worker finishing, a kill, or a run resuming after its gap
    const times = busy.filter((b) => b !== null).map((b) => b!.until);
    if (kill && !dead.has(kill.worker) && kill.at > now) times.push(kill.at);
    for (const s of state.values()) if (!s.done && !s.schedule && s.resumeAt > now) times.push(s.resumeAt);
    if (times.length === 0) break;
    now = Math.min(...times);
    if (kill && !dead.has(kill.worker) && now >= kill.at) {
      dead.add(kill.worker);
      const b = busy[kill.worker];
      if (b) state.get(b.run)!.schedule?.lose(b.assignment, 'lost', now);
      busy[kill.worker] = null;
    }
    for (let w = 0; w < speeds.length; w++) {
      const b = busy[w];
      if (!b || b.until > now) continue;
      busy[w] = null;
      const s = state.get(b.run)!;
      if (!s.schedule || !s.schedule.attempts.has(b.assignment)) continue; // a copy of a finished step
      const attempt = s.schedule.attempts.get(b.assignment)!;
      if (attempt.outcome !== 'pending') continue;
      if (s.schedule.complete(b.assignment, now) === 'used') {
        const run = runs.find((r) => r.id === b.run)!;
        result.used.push({ at: now, run: b.run, tokens: run.microBatches[attempt.index] });
      }
      if (s.schedule.remaining === 0) {
        s.schedule.finish(now);
        s.schedule = null;
        s.step++;
        if (s.step === runs.find((r) => r.id === b.run)!.steps) {
          s.done = true;
          result.finishedAt.set(b.run, now);
        } else s.resumeAt = now + runs.find((r) => r.id === b.run)!.gap;
      }
    }
  }
  if (readySince !== null) result.bothReady.push([readySince, now]);
  for (const r of runs) result.charged.set(r.id, share.charged(r.id));
  return result;
}

/** A's share of used tokens in every window of `length` inside the stretches where both were ready. */
function shares(result: SimResult, a: string, b: string, length: number): number[] {
  const out: number[] = [];
  for (const [from, to] of result.bothReady) {
    for (let start = from; start + length <= to; start += length) {
      let ta = 0;
      let tb = 0;
      for (const u of result.used) {
        if (u.at < start || u.at >= start + length) continue;
        if (u.run === a) ta += u.tokens;
        if (u.run === b) tb += u.tokens;
      }
      if (ta + tb > 0) out.push(ta / (ta + tb));
    }
  }
  return out;
}

const SPEEDS = [1000, 1500, 700]; // tokens per unit of virtual time: three workers, unlike
/** window length: about 30,000 tokens of work, some 50–200 micro-batches (one is then < 2 % of a window) */
const WINDOW = 10;
const run = (id: string, share: Partial<ShareSettings>, tokens: number, extra: Partial<SimRun> = {}): SimRun => ({
  id,
  share: checkShareSettings(share),
  microBatches: Array.from({ length: 160 }, (_, i) => tokens + (i % 5) * 16), // uneven micro-batches
  steps: 12,
  submitAt: 0,
  gap: 0.02,
  ...extra,
});

test('weights 3:1: run A gets 75 % ± 5 points of the used tokens in every window where both had work', () => {
  // different micro-batch sizes (A 512 tokens, B 128): the share is by tokens, not by micro-batches
  const result = simulate([run('A', { weight: 3 }, 512), run('B', { weight: 1 }, 128)], SPEEDS, ['A', 'B']);
  const s = shares(result, 'A', 'B', WINDOW);
  assert.ok(s.length >= 10, `enough windows (${s.length})`);
  for (const x of s) assert.ok(Math.abs(x - 0.75) <= 0.05, `A's share ${x.toFixed(3)} in a window (all: ${fmt(s)})`);
});

test('equal weights: 50 % ± 5 points, also when B is submitted later (no credit banked before it starts)', () => {
  const result = simulate(
    [run('A', {}, 256), run('B', {}, 256, { submitAt: 5, microBatches: Array.from({ length: 120 }, () => 384) })],
    SPEEDS,
    ['A', 'B'],
  );
  const s = shares(result, 'A', 'B', WINDOW);
  assert.ok(s.length >= 5, `enough windows (${s.length})`);
  for (const x of s) assert.ok(Math.abs(x - 0.5) <= 0.05, `A's share ${x.toFixed(3)} in a window (all: ${fmt(s)})`);
  // A ran alone for 5 units first; B was not charged for that time and does not catch up by starving A
  const first = result.used.find((u) => u.run === 'B')!.at;
  const aAfter = result.used.filter((u) => u.run === 'A' && u.at > first && u.at < first + 2);
  assert.ok(aAfter.length > 0, 'A keeps getting workers once B arrives');
});

test('priorities are strict: a ready higher-priority run takes every worker; the lower one resumes after', () => {
  const result = simulate(
    [run('low', { weight: 100 }, 256), run('high', { priority: 1 }, 256, { submitAt: 3, steps: 10 })],
    SPEEDS,
    ['low', 'high'],
  );
  const highEnd = result.finishedAt.get('high')!;
  // while high had unassigned work, no first attempt of low went out: only results assigned before it arrived
  for (const [from, to] of result.bothReady)
    for (const u of result.used)
      if (u.run === 'low' && u.at > from + 0.8 && u.at < to)
        assert.fail(`low got a worker at ${u.at} while high waited`);
  assert.ok(
    result.used.some((u) => u.run === 'low' && u.at > highEnd),
    'low resumes after high ends',
  );
  assert.ok(result.finishedAt.has('low'), 'low finishes');
});

test('retries after a lost worker and straggler copies are not charged: charged tokens = each micro-batch once', () => {
  const runs = [run('A', { weight: 3 }, 512), run('B', { weight: 1 }, 128)];
  const result = simulate(runs, SPEEDS, ['A', 'B'], { worker: 1, at: 7.3 });
  assert.ok(result.attempts.retry >= 1, `a retry happened (${JSON.stringify(result.attempts)})`);
  for (const r of runs) {
    const once = r.steps * r.microBatches.reduce((a, b) => a + b, 0);
    assert.equal(result.charged.get(r.id), once, `${r.id}: charged tokens`);
    assert.equal(
      result.used.filter((u) => u.run === r.id).reduce((a, u) => a + u.tokens, 0),
      once,
      `${r.id}: used tokens`,
    );
  }
  const s = shares(result, 'A', 'B', WINDOW);
  for (const x of s) assert.ok(Math.abs(x - 0.75) <= 0.05, `A's share ${x.toFixed(3)} with two workers left`);
});

test('bad share settings are refused with the field and value named', () => {
  assert.throws(() => checkShareSettings({ weight: 0 }), /LM_ERR_CONFIG.*weight 0/);
  assert.throws(() => checkShareSettings({ weight: Number.NaN }), /weight NaN/);
  assert.throws(() => checkShareSettings({ priority: 1.5 }), /priority 1.5/);
  const share = new FairShare();
  share.add('A');
  assert.throws(() => share.add('A'), /already/);
  assert.equal(share.pick([]), null);
});

function fmt(xs: number[]): string {
  return xs.map((x) => x.toFixed(2)).join(' ');
}

test('a worker that may take only some runs picks among them; a ready run it cannot take keeps its credit', () => {
  const share = new FairShare();
  share.add('A', { weight: 1, priority: 0 });
  share.add('B', { weight: 1, priority: 0 });
  // worker X serves only B (A refused it) while both have work waiting: B three times
  for (let i = 0; i < 3; i++) {
    assert.equal(share.pick(['A', 'B'], ['B']), 'B');
    share.charge('B', 10);
  }
  // worker Y serves both: A was ready all along, so its virtual time was not lifted: A three times
  const picks = [];
  for (let i = 0; i < 3; i++) {
    const id = share.pick(['A', 'B'])!;
    picks.push(id);
    share.charge(id, 10);
  }
  assert.deepEqual(picks, ['A', 'A', 'A']);
  assert.equal(share.pick(['A', 'B'], []), null, 'nothing this worker may take');
});
