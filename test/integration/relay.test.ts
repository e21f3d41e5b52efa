// Relays (issue 19) with real processes: `loramesh relay` processes between the root coordinator and `loramesh
// worker` processes. With the same reduction block a relayed run ends with the adapter of the in-process run, bit
// for bit (so of the flat mesh too: test/integration/distributed.test.ts), with the default block as with a
// smaller one; a relay SIGKILLed mid-step, a worker behind a relay that lies and a relay with a wrong token change
// nothing: the lie is caught by the root's spot checks, the killed relay's workers fall back to the root.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import '../helpers/backend.ts';
import { cliSpawner } from '../helpers/cli-process.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { RunConfigInput } from '../../coordinator/run/run-config.ts';
import { type RunOptions, type RunResult, runTraining } from '../../coordinator/run/train.ts';
import { checkLoraConfig, checkTrainConfig, type TrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { asBytes, decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import { type Message, PROTOCOL_VERSION } from '../../shared/protocol/messages.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const JOIN = 'join-secret';
const RELAY = 'relay-secret';
const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
const trainWith = (reductionBlock?: number, steps = 6): TrainConfig =>
  checkTrainConfig({
    steps,
    globalBatch: 8,
    microBatch: 2,
    lr: 1e-2,
    warmupSteps: 2,
    seed: 5,
    ...(reductionBlock ? { reductionBlock } : {}),
  });
let root = '';
let base: Omit<RunOptions, 'config' | 'log'>;
const children: ChildProcess[] = [];
const logs: string[] = [];

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-relay-'));
  writeTinyModelDir(join(root, 'model'), 3);
  const model = await openModelDir(join(root, 'model'));
  base = {
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(64, 8, 5)),
    workerOutput: 'ignore',
    progress: false,
  };
});
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

const spawnCli = cliSpawner(logs, children);

/** A relay process on `parent`; resolves with the URL its workers join. */
function relay(tag: string, parent: string, token = RELAY): { child: ChildProcess; url: Promise<string> } {
  const child = spawnCli(tag, ['relay', parent, '--token', token, '--worker-token', JOIN, '--name', tag]);
  const url = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      const url = /loramesh worker (ws:\S+)/.exec(chunk.toString())?.[1];
      if (url) resolve(url);
    });
    child.once('exit', (code) => reject(new Error(`relay ${tag} exited (${code})\n${logs.slice(-30).join('\n')}`)));
  });
  url.catch(() => {});
  return { child, url };
}

const worker = (name: string, url: string, env: Record<string, string> = {}) =>
  spawnCli(
    `[${name}]`,
    ['worker', url, '--token', JOIN, '--backend', 'wasm', '--name', name, '--cache-dir', join(root, 'cache')],
    env,
  );

/** The root: a coordinator with no local workers, taking relays; `onListening` gets its worker URL. */
function rootRun(
  runId: string,
  train: TrainConfig,
  onListening: (url: string) => void,
  extra: Partial<RunOptions> = {},
  limits: RunConfigInput['limits'] = {},
  adapter = lora,
): Promise<RunResult> {
  let started = false;
  return runTraining({
    ...base,
    ...extra,
    log: (line) => {
      logs.push(`[root] ${line}`);
      const url = /listening on (ws:\S+)/.exec(line)?.[1];
      if (url && !started) {
        started = true;
        onListening(url);
      }
    },
    config: {
      run: { lora: adapter, train },
      deployment: {
        outDir: join(root, 'runs'),
        backend: 'wasm',
        runId,
        localWorkers: 0,
        minWorkers: 1,
        token: JOIN,
        relayToken: RELAY,
      },
      limits,
    },
  });
}

const alone = (runId: string, train: TrainConfig, adapter = lora) =>
  runTraining({
    ...base,
    log: () => {},
    config: {
      run: { lora: adapter, train },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', runId, inProcess: true, localWorkers: 0 },
    },
  });

const killAll = async (procs: ChildProcess[]) => {
  for (const c of procs) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(procs.map((c) => (c.exitCode === null && c.signalCode === null ? once(c, 'exit') : null)));
};

test('relayed runs equal the in-process run with the same reduction block, bit for bit (block 2 and the default)', async () => {
  for (const block of [2, undefined]) {
    const train = trainWith(block);
    const reference = await alone(`alone-${block ?? 'default'}`, train);
    const procs: ChildProcess[] = [];
    const relayed = await rootRun(`relayed-${block ?? 'default'}`, train, (url) => {
      // two relays with one worker each: each relay sums whole blocks, the root their partial sums
      for (const [i, name] of ['r1', 'r2'].entries()) {
        const r = relay(`[${name}]`, url);
        procs.push(r.child);
        void r.url.then((relayUrl) => procs.push(worker(`w${i}`, relayUrl)));
      }
    });
    await killAll(procs);
    assert.equal(maxAbsDiff(relayed.adapter, reference.adapter), 0, `block ${block}: adapter`);
    // byte accounting sees through the relays: every result crossed a relay's link with its worker once (at least),
    // while the root itself received one partial sum per block
    const resultBytes = 4 * relayed.adapterParameters;
    const results = train.steps * (train.globalBatch / train.microBatch);
    assert.ok(relayed.relayedBytesUp >= results * resultBytes, `relayed up ${relayed.relayedBytesUp}`);
    assert.ok(relayed.relayedBytesUp < 2 * results * resultBytes + 200_000, `relayed up ${relayed.relayedBytesUp}`);
    assert.ok(relayed.relayedBytesDown >= train.steps * resultBytes, `relayed down ${relayed.relayedBytesDown}`);
    assert.ok(
      relayed.metrics.every((m) => m.relayedBytesUp > 0),
      'every step reports its relayed bytes',
    );
    relayed.metrics.forEach((m, i) => assert.equal(m.loss, reference.metrics[i].loss, `block ${block}: step ${i + 1}`));
    assert.ok(
      logs.some((l) => l.startsWith('[root]') && /relay\)|node\/relay/.test(l)),
      'the root saw relays, not workers',
    );
  }
});

test("a relay sending every result up whole keeps each frame to one result's size; the bits stay", {
  timeout: 180_000,
}, async () => {
  // Spot checks on every micro-batch: the relay sends all 96 results of the step's one block up whole, each 57 KB
  // (r=64 on four projections). In one frame they would be 97 results (5.5 MB): over the root's relay frame limit,
  // one result frame plus the items (170 KB here), and over the 32 result frames (4.4 MB) it once allowed. The root
  // would close the relay (1009) at every step and the run would never end. As block-sum and block-forward frames
  // each is one result, and the root recomputes every one before the block counts.
  const wide = checkLoraConfig({ r: 64, alpha: 8, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
  const train = checkTrainConfig({ steps: 2, globalBatch: 96, microBatch: 1, lr: 1e-2, warmupSteps: 1, seed: 7 });
  const reference = await alone('alone-forward-all', train, wide);
  const procs: ChildProcess[] = [];
  const relayed = await rootRun(
    'relayed-forward-all',
    train,
    (url) => {
      const r = relay('[r-all]', url);
      procs.push(r.child);
      void r.url.then((relayUrl) => procs.push(worker('w-all', relayUrl)));
    },
    {},
    { defence: { spotCheck: 1 } },
    wide,
  );
  await killAll(procs);
  assert.equal(relayed.adapterParameters, 14336);
  assert.equal(maxAbsDiff(relayed.adapter, reference.adapter), 0, 'adapter');
  relayed.metrics.forEach((m, i) => assert.equal(m.loss, reference.metrics[i].loss, `step ${i + 1}`));
  assert.ok(!logs.some((l) => l.startsWith('[r-all]') && /1009|too big|Max payload/i.test(l)), 'no frame refused');
});

test('a run with ingestion threads equals the in-process run with the same block, bit for bit; workers are sent there', async () => {
  const train = trainWith(2);
  const reference = await alone('alone-threads', train);
  const lines: string[] = [];
  const threaded = await runTraining({
    ...base,
    log: (line) => lines.push(line),
    config: {
      run: { lora, train },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', runId: 'threaded', localWorkers: 2, ingestThreads: 2 },
    },
  });
  assert.equal(maxAbsDiff(threaded.adapter, reference.adapter), 0);
  threaded.metrics.forEach((m, i) => assert.equal(m.loss, reference.metrics[i].loss, `step ${i + 1}`));
  // both workers said hello to the main thread, were sent on, and computed behind the threads
  assert.ok(
    lines.some((l) => /^ingestion threads: 2, on ports \d+, \d+$/.test(l)),
    lines.join('\n'),
  );
  for (const t of [0, 1])
    assert.ok(
      lines.some((l) => l.startsWith(`ingest ${t}: worker`) && l.includes('(local-')),
      `a local worker joined thread ${t}`,
    );
  assert.ok(
    !lines.some((l) => /^worker \S+ \(local-\d, node\/wasm\) joined/.test(l)),
    'none stayed on the main thread',
  );
});

/** Opens a worker socket at `url` with the join token, sends `frames` in order; resolves with what came back. */
function probe(url: string, frames: Message[]): Promise<{ received: Message[]; closeCode: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${JOIN}` } });
    const received: Message[] = [];
    ws.on('open', () => {
      for (const f of frames) ws.send(encodeMessage(f));
    });
    ws.on('message', (data) => received.push(decodeMessage(asBytes(data as Buffer))));
    ws.on('close', (closeCode) => resolve({ received, closeCode }));
    ws.on('error', reject);
    setTimeout(() => ws.terminate(), 10_000);
  });
}

test("workers behind an ingestion thread meet the run's policy: its memory check and its reject limit", async () => {
  // The thread's mesh gets the run's policy in its welcome (RelayPolicy): without it a worker that cannot hold the
  // run joined a thread unchecked, and the thread counted 50 rejects (its default) instead of the run's 3.
  const hello = (extra: Record<string, unknown> = {}) =>
    ({ type: 'hello', protocol: PROTOCOL_VERSION, backend: 'wasm', platform: 'node', ...extra }) as Message;
  const lines: string[] = [];
  const probed: { memory?: Awaited<ReturnType<typeof probe>>; flood?: Awaited<ReturnType<typeof probe>> } = {};
  await runTraining({
    ...base,
    log: (line) => lines.push(line),
    onStep: async (m) => {
      if (m.step !== 1) return;
      const port = /^ingestion threads: 1, on ports (\d+)$/.exec(lines.find((l) => l.startsWith('ingestion')) ?? '');
      assert.ok(port, lines.join('\n'));
      const url = `ws://127.0.0.1:${port[1]}/ws`;
      probed.memory = await probe(url, [hello({ memoryLimit: 1000 })]);
      // four frames the guards refuse (a heartbeat without sentAt): the run allows 3 rejects
      const bad = { type: 'heartbeat' } as Message;
      probed.flood = await probe(url, [hello(), bad, bad, bad, bad]);
    },
    config: {
      run: { lora, train: trainWith(2, 3) },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', runId: 'policy', localWorkers: 1, ingestThreads: 1 },
      limits: { security: { maxRejects: 3 } },
    },
  });
  const memory = probed.memory!;
  const reject = memory.received.find((x) => x.type === 'reject');
  assert.equal(reject?.type === 'reject' ? reject.code : null, 'LM_ERR_MEMORY');
  assert.match(
    reject?.type === 'reject' ? reject.message : '',
    /^the run needs \S+ GB even recomputing .* can hold 0\.00 GB/,
  );
  assert.ok(!memory.received.some((x) => x.type === 'welcome'), 'never welcomed');
  const flood = probed.flood!;
  const codes = flood.received.flatMap((x) => (x.type === 'reject' ? [x.code] : []));
  assert.deepEqual(codes, ['LM_ERR_FIELD', 'LM_ERR_FIELD', 'LM_ERR_FIELD', 'LM_ERR_QUARANTINED']);
  assert.equal(flood.closeCode, 1008);
});

test('a relay SIGKILLed mid-step, a lying worker behind a relay and a relay with a wrong token change no bit', async () => {
  const train = trainWith(2, 8);
  const reference = await alone('alone-faults', train);
  const procs: ChildProcess[] = [];
  let victim: ChildProcess | null = null;
  let wrongToken: ChildProcess | null = null;
  const killedAt: number[] = [];
  const run = await rootRun(
    'relayed-faults',
    train,
    (url) => {
      wrongToken = relay('[bad-relay]', url, 'not-the-relay-token').child;
      const honest = relay('[r1]', url);
      procs.push(honest.child);
      void honest.url.then((relayUrl) => {
        procs.push(worker('h1', relayUrl, { LORAMESH_FAULT: 'delay:60' }));
        procs.push(worker('liar', relayUrl, { LORAMESH_FAULT: 'byzantine:1' }));
      });
      const doomed = relay('[r2]', url);
      victim = doomed.child;
      procs.push(doomed.child);
      void doomed.url.then((relayUrl) => procs.push(worker('h2', relayUrl, { LORAMESH_FAULT: 'delay:60' })));
    },
    {
      onStep: (m) => {
        if (m.step === 3 && victim && killedAt.length === 0) {
          killedAt.push(m.step);
          victim.kill('SIGKILL');
        }
      },
    },
  );
  await killAll(procs);
  assert.equal(maxAbsDiff(run.adapter, reference.adapter), 0, 'adapter');
  run.metrics.forEach((m, i) => assert.equal(m.loss, reference.metrics[i].loss, `step ${i + 1}`));
  // the wrong token was refused at the upgrade: the relay exits 2 with LM_ERR_AUTH, the root never saw it
  const bad = wrongToken as ChildProcess | null;
  assert.ok(bad);
  if (bad.exitCode === null) await once(bad, 'exit');
  assert.equal(bad.exitCode, 2);
  assert.ok(logs.some((l) => l.startsWith('[bad-relay]') && l.includes('LM_ERR_AUTH') && l.includes('401')));
  assert.ok(!logs.some((l) => l.startsWith('[root]') && l.includes('bad-relay')), 'no hello from the bad relay');
  // the liar was caught by the root's check of a result its relay sent up whole, and expelled by the relay
  assert.ok(
    logs.some((l) => l.startsWith('[root]') && l.includes('failed a spot check') && l.includes('liar')),
    'the root convicted the liar',
  );
  assert.ok(
    logs.some((l) => l.startsWith('[r1]') && l.includes("at the parent's word")),
    'r1 expelled it',
  );
  assert.ok(run.rejections.LM_ERR_SPOT_CHECK >= 1);
  // r2 died holding blocks, which were computed again; its worker came to the root (welcome.fallback)
  assert.deepEqual(killedAt, [3]);
  assert.ok(
    logs.some((l) => l.startsWith('[root]') && l.includes('left holding micro-batch')),
    'r2 died mid-step',
  );
  assert.ok(
    logs.some((l) => l.startsWith('[h2]') && l.includes('trying ws://127.0.0.1')),
    'h2 fell back',
  );
  assert.ok(
    logs.some((l) => l.startsWith('[root]') && l.includes('(h2, node/wasm) joined')),
    'h2 joined the root',
  );
});

test('a relay whose only worker hangs holds its blocks past their deadline: another relay computes a whole copy; no bit changes', async () => {
  const train = trainWith(2, 6);
  const reference = await alone('alone-stall', train);
  const procs: ChildProcess[] = [];
  const run = await rootRun('relayed-stall', train, (url) => {
    // one block per relay per step; r2's worker answers steps 0–2 of its relay, then holds every result forever
    for (const [name, fault] of [
      ['s1', ''],
      ['s2', 'stall:3'],
    ]) {
      const r = relay(`[r-${name}]`, url);
      procs.push(r.child);
      void r.url.then((relayUrl) => procs.push(worker(name, relayUrl, fault ? { LORAMESH_FAULT: fault } : {})));
    }
  });
  await killAll(procs);
  assert.equal(maxAbsDiff(run.adapter, reference.adapter), 0, 'adapter');
  run.metrics.forEach((m, i) => assert.equal(m.loss, reference.metrics[i].loss, `step ${i + 1}`));
  assert.ok(
    logs.some((l) => l.startsWith('[s2]') && l.includes('holding the result of step 3 forever')),
    's2 hung',
  );
  assert.ok(
    logs.some((l) => l.startsWith('[root]') && /past their relay's deadline; also giving them to relay/.test(l)),
    'the root copied the late block to the other relay',
  );
});
