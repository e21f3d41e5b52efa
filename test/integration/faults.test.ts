// Fault injection with real worker processes and sockets: workers SIGKILLed before answering,
// mid-send and right after a parameter broadcast; a worker 10× slower than its peers; a worker
// joining at step 10 and leaving at step 20. Every run must end with the fault-free adapter
// (max abs diff ≤ 1e-6) and a ledger in which each micro-batch of each step was used exactly once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';
import type { LedgerEntry } from '../../coordinator/engine/scheduler.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { signal, within } from '../helpers/wait.ts';

const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
const train = checkTrainConfig({ steps: 30, globalBatch: 12, microBatch: 2, lr: 1e-2, warmupSteps: 3, seed: 11 });
const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));

let root = '';
let base: Omit<RunOptions, 'config'>;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-faults-'));
  writeTinyModelDir(join(root, 'model'), 6);
  const model = await openModelDir(join(root, 'model'));
  base = {
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(96, 8, 11)),
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
  };
});
after(() => rmSync(root, { recursive: true, force: true }));

/** The run's config: this file's settings (three local workers), with the given deployment fields. */
const config = (deployment: Partial<Deployment>): RunConfigInput => ({
  run: { lora, train },
  deployment: {
    outDir: join(root, 'runs'),
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    localWorkers: 3,
    ...deployment,
  },
});

/** A worker process joining the run at `wsUrl` as `name`; silent (the coordinator's log says what it did). */
function spawnWorker(wsUrl: string, name: string): ChildProcess {
  const args = [
    '--import',
    'tsx',
    cli,
    'worker',
    wsUrl,
    '--backend',
    'wasm',
    '--cache-dir',
    join(root, 'cache'),
    '--name',
    name,
  ];
  return spawn(process.execPath, args, { stdio: 'ignore' });
}

/** Follows the coordinator's log for the worker called `name`: `ready()` resolves once it has joined and loaded. */
function readyWatch(name: string): { observe(line: string): void; ready(): Promise<void> } {
  let id = '';
  const ready = signal();
  return {
    ready: () => within(120_000, `worker ${name} to be ready`, ready.promise),
    observe(line) {
      id ||= new RegExp(`^worker (\\S+) \\(${name},`).exec(line)?.[1] ?? '';
      if (id && line === `worker ${id} ready`) ready.resolve();
    },
  };
}

function ledgerOf(run: RunResult): { step: number; microBatches: LedgerEntry[] }[] {
  return readFileSync(join(run.runDir, 'ledger.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

function checkLedger(run: RunResult): LedgerEntry[] {
  const lines = ledgerOf(run);
  assert.equal(lines.length, train.steps);
  const perStep = train.globalBatch / train.microBatch;
  const entries = lines.flatMap((l) => l.microBatches);
  for (const line of lines) {
    assert.equal(line.microBatches.length, perStep, `step ${line.step}`);
    for (const mb of line.microBatches) {
      assert.equal(
        mb.attempts.filter((a) => a.outcome === 'used').length,
        1,
        `step ${line.step} micro-batch ${mb.index} used ${JSON.stringify(mb.attempts)}`,
      );
      assert.ok(mb.usedWorker);
    }
  }
  return entries;
}

let reference: RunResult;
test('fault-free reference (in process)', async () => {
  reference = await runTraining({ ...base, config: config({ runId: 'reference', inProcess: true, localWorkers: 0 }) });
});

for (const fault of ['kill-before-result:5', 'kill-after-send:12', 'kill-after-params:20']) {
  test(
    `SIGKILL of a worker (${fault}) over a 30-step run with 3 workers: ` + 'same adapter, every micro-batch used once',
    async () => {
      const run = await runTraining({
        ...base,
        config: config({ runId: fault.replace(':', '-') }),
        workerEnv: (i): Record<string, string> => (i === 0 ? { LORAMESH_FAULT: fault } : {}),
      });
      assert.ok(
        maxAbsDiff(run.adapter, reference.adapter) <= 1e-6,
        `max abs diff ${maxAbsDiff(run.adapter, reference.adapter)}`,
      );
      const entries = checkLedger(run);
      const workersAtEnd = new Set(entries.filter((e) => e.step >= 25).map((e) => e.usedWorker));
      assert.equal(workersAtEnd.size, 2, 'the killed worker should be gone at the end');
      // Mid-send the result may or may not have left the socket; before answering it never did: the killed
      // worker held a micro-batch of step 5 that another worker computed. Its attempt is 'lost' when the
      // close was noticed first, or 'cancelled' when a straggler copy finished the step before that (steps
      // take ~50 ms now, a close can take longer to arrive).
      if (fault.startsWith('kill-before-result')) {
        const killed = [...new Set(entries.map((e) => e.usedWorker))].filter((w) => !workersAtEnd.has(w));
        assert.equal(killed.length, 1, `one worker left: ${killed}`);
        const held = entries.filter(
          (e) => e.step === 5 && e.attempts.some((a) => a.workerId === killed[0] && a.outcome !== 'used'),
        );
        assert.ok(held.length > 0, 'the killed worker held a micro-batch of step 5');
        for (const e of held) {
          assert.notEqual(e.usedWorker, killed[0], `micro-batch ${e.index} of step 5 computed by another worker`);
          assert.ok(
            e.attempts.every((a) => a.workerId !== killed[0] || a.outcome === 'lost' || a.outcome === 'cancelled'),
            `its attempt is lost or cancelled: ${JSON.stringify(e.attempts)}`,
          );
        }
      }
    },
  );
}

test(
  'a worker 10× slower than its peers: steps keep completing, ' + 'its work is copied to others, same adapter',
  async () => {
    const run = await runTraining({
      ...base,
      config: config({ runId: 'slow' }),
      workerEnv: (i) => (i === 0 ? { LORAMESH_FAULT: 'delay:400' } : { LORAMESH_FAULT: 'delay:40' }),
    });
    assert.ok(maxAbsDiff(run.adapter, reference.adapter) <= 1e-6);
    const entries = checkLedger(run);
    assert.ok(
      entries.some((e) => e.attempts.some((a) => a.reason === 'straggler')),
      'straggler copies were made',
    );
    const slowUsed = entries.filter((e) =>
      e.attempts.some((a) => a.reason === 'straggler' && a.outcome === 'used'),
    ).length;
    assert.ok(slowUsed > 0, 'some straggler copies won');
  },
);

test('a worker joining at step 10 and leaving at step 20: same adapter', async () => {
  let url = '';
  let joiner: ChildProcess | null = null;
  const joinerWatch = readyWatch('joiner');
  const run = await runTraining({
    ...base,
    config: config({ runId: 'join-leave', localWorkers: 2 }),
    onListening: ({ wsUrl }) => {
      url = wsUrl;
    },
    log: (line) => joinerWatch.observe(line),
    onStep: async (m) => {
      if (m.step === 10) joiner = spawnWorker(url, 'joiner');
      if (m.step === 12) await joinerWatch.ready(); // loaded: it takes work from step 13 on, however slow the machine
      if (m.step === 20) joiner?.kill('SIGTERM');
    },
  });
  assert.ok(maxAbsDiff(run.adapter, reference.adapter) <= 1e-6);
  const entries = checkLedger(run);
  const workersByStep = (lo: number, hi: number) =>
    new Set(entries.filter((e) => e.step >= lo && e.step < hi).flatMap((e) => e.attempts.map((a) => a.workerId)));
  assert.equal(workersByStep(0, 10).size, 2);
  assert.equal(workersByStep(13, 20).size, 3, 'the joiner computed between steps 13 and 20');
  assert.equal(workersByStep(22, 30).size, 2);
});

test('a silent (SIGSTOPped) worker is dropped within 2 heartbeat intervals and its work reassigned', async () => {
  let url = '';
  let frozen: ChildProcess | null = null;
  let stoppedAt = 0;
  let droppedAt = 0;
  const heartbeatMs = 400;
  const frozenWatch = readyWatch('frozen');
  const run = await runTraining({
    ...base,
    config: config({ runId: 'silent', localWorkers: 2, heartbeatMs }),
    onListening: ({ wsUrl }) => {
      url = wsUrl;
    },
    log: (line) => {
      frozenWatch.observe(line);
      if (/missed a heartbeat/.test(line) && stoppedAt && !droppedAt) droppedAt = Date.now();
    },
    onStep: async (m) => {
      if (m.step === 3) {
        frozen = spawnWorker(url, 'frozen');
        await frozenWatch.ready(); // joined and loaded: it takes work from step 4 on, so it computes until step 8
      }
      if (m.step === 8) {
        frozen!.kill('SIGSTOP');
        stoppedAt = Date.now();
      }
      // Steps can be faster than 2 heartbeats: hold the run here until the drop (or 10 s), so the
      // run cannot end before the silence is noticed.
      if (m.step === 9)
        for (const until = Date.now() + 10_000; !droppedAt && Date.now() < until; )
          await new Promise((resolve) => setTimeout(resolve, 20));
    },
  });
  frozen!.kill('SIGKILL');
  assert.ok(droppedAt > 0, 'the frozen worker was never dropped');
  assert.ok(
    droppedAt - stoppedAt <= 2 * heartbeatMs + 250,
    `dropped after ${droppedAt - stoppedAt} ms with a ${heartbeatMs} ms heartbeat`,
  );
  assert.ok(maxAbsDiff(run.adapter, reference.adapter) <= 1e-6);
  checkLedger(run);
});
