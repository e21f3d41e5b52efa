// The standing pool with real worker processes (issue 18's acceptance): a pool process, workers joining it
// over WebSockets once and serving every run, runs submitted at different times with different ranks,
// targets and data, one with local steps. Each f32 run's adapter is byte-identical to the same run trained alone in-process,
// although a worker is SIGKILLed mid-run, another joins late, and the pool itself is SIGKILLed and
// restarted mid-run (its workers reconnect). A fourth run with int8 codecs ends within 2 % eval loss of its
// f32 twin (error feedback is per worker, so its bits depend on who computed what). A worker that lies is
// caught by a run's spot checks and leaves the pool; it changes no run's bits.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import '../helpers/backend.ts';
import { cliSpawner } from '../helpers/cli-process.ts';
import { demoTaskData, examplesFor } from '../../coordinator/io/dataset.ts';
import { type ModelDir, openModelDir } from '../../coordinator/io/model-dir.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const ADMIN = 'pool-admin';
const JOIN = 'pool-join';
let root = '';
let model: ModelDir;
const data: Record<string, string> = {};

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-pool-workers-'));
  writeTinyModelDir(join(root, 'model'), 4);
  model = await openModelDir(join(root, 'model'));
  for (const [name, seed] of [
    ['one', 21],
    ['two', 22],
  ] as const) {
    data[name] = join(root, `${name}.jsonl`);
    const samples = demoTaskData(80, 1, seed).train;
    writeFileSync(
      data[name],
      samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output })).join('\n') + '\n',
    );
  }
});
after(() => rmSync(root, { recursive: true, force: true }));

const RUNS = {
  A: {
    file: 'one',
    run: {
      lora: { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] },
      train: { steps: 10, globalBatch: 8, microBatch: 2, lr: 1e-2, seed: 3 },
      data: { maxTokens: 24, evalFraction: 0.15 },
    },
  },
  B: {
    file: 'two',
    run: {
      lora: { r: 8, alpha: 8, targetModules: ['k_proj', 'o_proj'] },
      train: { steps: 8, globalBatch: 6, microBatch: 3, lr: 5e-3, seed: 5 },
      data: { maxTokens: 20 },
    },
  },
  C: {
    file: 'one',
    run: {
      lora: { r: 2, alpha: 4, targetModules: ['up_proj'] },
      train: { steps: 14, globalBatch: 4, microBatch: 2, lr: 1e-2, seed: 8 },
      checkpointEvery: 2,
    },
  },
  E: {
    file: 'two',
    run: {
      lora: { r: 4, alpha: 8, targetModules: ['q_proj', 'down_proj'] },
      train: { steps: 4, globalBatch: 8, microBatch: 2, lr: 1e-2, seed: 11 },
      local: { steps: 2, innerLr: 1e-2, outerLr: 0.7, outerMomentum: 0.9 },
      data: { maxTokens: 20 },
    },
  },
} as const;
/** A's twin with int8 codecs both ways */
const INT8 = { name: 'int8', blockSize: 64 };
const RUN_D = { ...RUNS.A.run, wire: { up: INT8, down: INT8 } };

async function alone(name: string, file: string, run: Record<string, unknown>): Promise<Buffer> {
  const train = run.train as { seed: number };
  const d = (run.data ?? {}) as { maxTokens?: number; evalFraction?: number };
  const spec = {
    kind: 'jsonl' as const,
    path: data[file],
    ...(d.maxTokens !== undefined ? { maxTokens: d.maxTokens } : {}),
    pack: false,
    evalFraction: d.evalFraction ?? 0,
    seed: train.seed,
  };
  const examples = await examplesFor(spec, model, () => {});
  const { data: _d, ...settings } = run;
  await runTraining({
    model,
    examples: examples.train,
    evalExamples: examples.eval.length > 0 ? examples.eval : undefined,
    config: {
      run: { ...settings, data: spec },
      deployment: { outDir: join(root, 'alone'), runId: name, inProcess: true, backend: 'wasm', localWorkers: 0 },
    } as never,
    progress: false,
    log: () => {},
  });
  return readFileSync(join(root, 'alone', name, 'adapter_model.safetensors'));
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

const children: ChildProcess[] = [];
const logs: string[] = [];

const spawnCli = cliSpawner(logs, children);

async function until<T>(what: string, ms: number, probe: () => Promise<T | null | undefined | false>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got) return got;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${logs.slice(-40).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a pool with worker processes: 3 f32 runs byte-identical to each run alone through a worker killed, a late joiner and a pool SIGKILL; an int8 twin within 2 %', async () => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const dir = join(root, 'pool');
  const startPool = async () => {
    const started = logs.filter((l) => l.includes(`at ${url}`)).length;
    const child = spawnCli('[pool]', [
      'pool',
      ...['--dir', dir, '--model', join(root, 'model'), '--port', String(port)],
      ...['--admin-token', ADMIN, '--token', JOIN, '--runs-per-worker', '4'],
    ]);
    await until(
      'the pool to listen',
      60_000,
      async () => logs.filter((l) => l.includes(`at ${url}`)).length > started && child,
    );
    return child;
  };
  const worker = (name: string, env: Record<string, string> = {}) =>
    spawnCli(
      `[${name}]`,
      ['worker', `ws://127.0.0.1:${port}/ws`, '--token', JOIN, '--name', name, '--cache-dir', join(root, 'cache')],
      // every result 30 ms late: the runs last long enough for the events below to land mid-run
      { LORAMESH_FAULT: 'delay:30', ...env },
    );
  const call = async (method: string, path: string, token: string, body?: unknown, raw?: Buffer) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: raw ? new Uint8Array(raw) : body ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };
  try {
    let pool = await startPool();
    const w1 = worker('w1', { LORAMESH_FAULT: 'delay:30,kill-before-result:4' });
    worker('w2');
    // a volunteer that lies (every gradient negated): a run's spot check convicts it, and it leaves the pool
    const liar = worker('liar', { LORAMESH_FAULT: 'byzantine:1' });
    const tenant = await call('POST', '/pool/api/tenants', ADMIN, { name: 'lab', quotas: { maxConcurrentRuns: 8 } });
    const token = tenant.json.token as string;
    const uploads: Record<string, string> = {};
    for (const file of ['one', 'two']) {
      const up = await call('PUT', `/pool/api/uploads?name=${file}.jsonl`, token, undefined, readFileSync(data[file]));
      assert.equal(up.status, 201, JSON.stringify(up.json));
      uploads[file] = (up.json.upload as { id: string }).id;
    }
    const submit = async (name: string, file: string, run: unknown) => {
      const r = await call('POST', '/pool/api/runs', token, { uploadId: uploads[file], name, run });
      assert.equal(r.status, 201, JSON.stringify(r.json));
      return (r.json.run as { id: string }).id;
    };
    const runs = async () =>
      new Map(
        ((await call('GET', '/pool/api/runs', token)).json.runs as { id: string; state: string; step: number }[]).map(
          (r) => [r.id, r],
        ),
      );
    const ids: Record<string, string> = {};
    ids.A = await submit('A', RUNS.A.file, RUNS.A.run);
    await until(
      'two workers ready',
      60_000,
      async () => logs.filter((l) => /pool worker \S+ ready/.test(l)).length >= 2,
    );
    await until('A under way', 60_000, async () => ((await runs()).get(ids.A)?.step ?? 0) >= 1);
    ids.B = await submit('B', RUNS.B.file, RUNS.B.run);
    ids.D = await submit('D', RUNS.A.file, RUN_D);
    worker('w3'); // joins late, while runs are under way
    ids.C = await submit('C', RUNS.C.file, RUNS.C.run);
    ids.E = await submit('E', RUNS.E.file, RUNS.E.run); // local steps (DiLoCo): jobs of 2 micro-batches
    // the first worker dies at step 4 of whichever run hands it that step first
    await until('w1 killed', 120_000, async () => w1.signalCode === 'SIGKILL');
    // the pool dies mid-run (C checkpoints every 2 steps) and comes back on the same folder and port
    await until('C at step 4', 120_000, async () => ((await runs()).get(ids.C)?.step ?? 0) >= 4);
    const before = (await runs()).get(ids.C)!;
    pool.kill('SIGKILL');
    await until('the pool gone', 10_000, async () => pool.signalCode === 'SIGKILL');
    assert.ok(before.step < RUNS.C.run.train.steps, `C was stopped mid-run (step ${before.step})`);
    pool = await startPool();
    const final = await until('every run done', 240_000, async () => {
      const now = await runs();
      const states = Object.values(ids).map((id) => now.get(id)?.state);
      if (states.some((s) => s === 'failed' || s === 'cancelled'))
        throw new Error(`a run ended ${JSON.stringify([...now.values()])}\n${logs.slice(-60).join('\n')}`);
      return states.every((s) => s === 'done') && now;
    });
    assert.equal(final.size, 5);
    // the workers that were left served the runs after the restart: they reconnected on their own, and each
    // joined the resumed runs (a worker must not keep the killed pool's runs: the same run ids come back)
    assert.ok(
      logs.filter((l) => l.startsWith('[pool]') && /pool worker \S+ ready/.test(l)).length >= 4,
      'workers joined the restarted pool',
    );
    const restart = logs.map((l) => l.includes(`at ${url}`)).lastIndexOf(true);
    const rejoined = new Set(
      logs.slice(restart).flatMap((l) => /^\[(w2|w3)\] .*joined run /.exec(l)?.slice(1, 2) ?? []),
    );
    assert.deepEqual([...rejoined].sort(), ['w2', 'w3'], 'both remaining workers joined runs after the restart');
    // the late joiner computed micro-batches (the ledgers name each run's own id for its connection)
    const idsOf = (worker: string) =>
      new Set(logs.flatMap((l) => [...l.matchAll(new RegExp(`worker (\\S+) \\(${worker}, `, 'g'))].map((m) => m[1])));
    const late = idsOf('w3');
    const ledgers = Object.values(ids)
      .map((id) => readFileSync(join(dir, 'runs', id, 'ledger.jsonl'), 'utf8'))
      .join('\n');
    assert.ok(
      [...late].some((id) => ledgers.includes(`"${id}"`)),
      'the worker that joined late computed micro-batches',
    );
    // workers computed several runs' micro-batches in one pass (the multi-adapter pass), and the bits below
    // still match each run alone
    assert.ok(
      logs.some((l) => l.includes('multi-adapter pass 1:')),
      'a worker computed several runs in one pass',
    );
    // the liar was caught by a run's checks, expelled from the pool and refused for good
    assert.ok(
      logs.some((l) => /pool worker \S+: closed \(LM_ERR_QUARANTINED: quarantined by run/.test(l)),
      'a run quarantined the liar and the pool expelled it',
    );
    assert.notEqual(liar.exitCode ?? 0, 0, 'the liar stopped, refused');
    // C resumed from its checkpoint, not from the start
    assert.ok(
      logs.some((l) => l.includes(`[${ids.C}] resuming ${ids.C} at step`)),
      'C resumed from a checkpoint',
    );
    for (const name of ['A', 'B', 'C', 'E'] as const) {
      const path = join(dir, 'runs', ids[name], 'adapter_model.safetensors');
      assert.ok(
        readFileSync(path).equals(await alone(name, RUNS[name].file, RUNS[name].run)),
        `run ${name}: the pool's adapter is the run alone's, byte for byte`,
      );
    }
    const lastEval = (id: string) => {
      const lines = readFileSync(join(dir, 'runs', id, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n');
      const evals = lines.map((l) => JSON.parse(l) as { eval_loss?: number }).filter((r) => r.eval_loss !== undefined);
      return evals[evals.length - 1].eval_loss!;
    };
    const [f32, int8] = [lastEval(ids.A), lastEval(ids.D)];
    assert.ok(Math.abs(int8 - f32) / f32 <= 0.02, `int8 twin's eval loss ${int8} within 2 % of f32's ${f32}`);
  } catch (err) {
    writeFileSync(join(tmpdir(), 'loramesh-pool-workers.log'), logs.join('\n'));
    throw err;
  } finally {
    if (process.env.LORAMESH_KEEP_LOG) writeFileSync(join(tmpdir(), 'loramesh-pool-workers.log'), logs.join('\n'));
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});
