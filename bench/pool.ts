/**
 * `npm run bench:pool` (issue 18): the standing pool with real worker processes on the demo model.
 *
 * 1. Fair share over wall-clock windows. Two runs that always have work (a long step count; 16 micro-batches a
 *    step) share the pool's workers, first with weights 3:1, then 1:1. Per window (default 30 s) it reports
 *    each run's share of the tokens of first attempts handed out (what the fair share charges: retries and
 *    straggler copies are not charged), against the 75 % and 50 % targets (± 5 points).
 * 2. Concurrency. Four different runs (ranks, targets, seeds) one after another, then the same four submitted
 *    at once, on the same workers: the wall-clock speed-up. With one run, workers idle while the pool steps
 *    the optimizer, publishes parameters and waits for a step's last micro-batch; with four, another run's
 *    micro-batches fill those gaps. Each run's adapter is the same either way (the pool's tests check that
 *    bit for bit); this bench checks the four adapters' bytes match between the two orders too.
 *
 * Flags: --window S (30), --windows N (2 per phase), --workers N (2), --steps N (concurrency runs' steps, 20),
 * --quick (10 s windows, 1 per phase, 8 steps; writes bench/results/pool.quick.json only), --no-write.
 * Writes bench/results/pool.json and the pool section of bench/RESULTS.md.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { demoTaskData } from '../coordinator/io/dataset.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import type { PoolServed } from '../coordinator/pool/pool-mesh.ts';
import { Pool } from '../coordinator/pool/pool.ts';
import { spawnLocalWorkers, stopLocalWorkers } from '../coordinator/run/local-workers.ts';
import { initBackend } from '../node/backend.ts';
import { fmt, machine, provenance, replaceSection, writeJson } from './lib/results.ts';

interface Flags {
  window: number;
  windows: number;
  workers: number;
  steps: number;
  quick: boolean;
  write: boolean;
}

function flags(argv = process.argv.slice(2)): Flags {
  const f: Flags = { window: 30, windows: 2, workers: 2, steps: 20, quick: false, write: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') Object.assign(f, { quick: true, window: 10, windows: 1, steps: 8 });
    else if (a === '--no-write') f.write = false;
    else if (['--window', '--windows', '--workers', '--steps'].includes(a)) {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} ${argv[i]}: expected an integer ≥ 1`);
      (f as unknown as Record<string, number>)[a.slice(2)] = n;
    } else
      throw new Error(`unknown argument ${a}; expected --window, --windows, --workers, --steps, --quick, --no-write`);
  }
  return f;
}

const ADMIN = 'bench-admin';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function call(url: string, method: string, path: string, token: string, body?: unknown, raw?: Buffer) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: raw ? new Uint8Array(raw) : body ? JSON.stringify(body) : undefined,
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

interface ShareWindow {
  weights: string;
  start: number;
  seconds: number;
  tokensA: number;
  tokensB: number;
  shareA: number;
  target: number;
}

async function main(): Promise<void> {
  const f = flags();
  const started = new Date().toISOString();
  const log = (line: string) => console.log(line);
  await initBackend('wasm', () => {});
  const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-pool-'));
  const model = await openModelDir(DEMO_MODEL_DIR);
  const data = join(root, 'task.jsonl');
  const samples = demoTaskData(400, 1, 7).train;
  writeFileSync(
    data,
    samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output })).join('\n') + '\n',
  );
  const served: (PoolServed & { at: number })[] = [];
  const pool = await Pool.start({
    dir: join(root, 'pool'),
    model,
    adminToken: ADMIN,
    log: () => {},
    onAssign: (s) => served.push({ ...s, at: performance.now() }),
  });
  const workers = spawnLocalWorkers(f.workers, `${pool.url.replace(/^http/, 'ws')}/ws`, {
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    stdio: 'ignore',
  });
  try {
    const tenant = await call(pool.url, 'POST', '/pool/api/tenants', ADMIN, {
      name: 'bench',
      quotas: { maxConcurrentRuns: 8, maxSteps: 1_000_000 },
    });
    const token = tenant.token as string;
    const upload = await call(
      pool.url,
      'PUT',
      '/pool/api/uploads?name=task.jsonl',
      token,
      undefined,
      readFileSync(data),
    );
    const uploadId = (upload.upload as { id: string }).id;
    const submit = async (name: string, run: unknown, weight = 1) =>
      ((await call(pool.url, 'POST', '/pool/api/runs', token, { uploadId, name, run, weight })).run as { id: string })
        .id;
    const state = async (id: string) =>
      (await call(pool.url, 'GET', `/pool/api/runs/${id}`, token)).run as { state: string; step: number };
    while (pool.mesh.readyCount() < f.workers) await sleep(100);
    log(`pool ${pool.url}: ${f.workers} worker processes ready (demo model, wasm)`);

    // 1. fair share
    const windows: ShareWindow[] = [];
    const long = (seed: number) => ({
      lora: { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] },
      train: { steps: 1_000_000, globalBatch: 32, microBatch: 2, lr: 1e-3, seed },
    });
    for (const [wa, wb] of [
      [3, 1],
      [1, 1],
    ]) {
      const a = await submit(`share-A-${wa}`, long(1), wa);
      const b = await submit(`share-B-${wb}`, long(2), wb);
      // both under way before the first window opens
      while ((await state(a)).step < 1 || (await state(b)).step < 1) await sleep(100);
      for (let w = 0; w < f.windows; w++) {
        const from = performance.now();
        await sleep(f.window * 1000);
        const to = performance.now();
        const tokens = (run: string) =>
          served
            .filter((s) => s.run === run && s.first && s.at >= from && s.at < to)
            .reduce((n, s) => n + s.positions, 0);
        const [tokensA, tokensB] = [tokens(a), tokens(b)];
        const row: ShareWindow = {
          weights: `${wa}:${wb}`,
          start: Math.round((from - served[0].at) / 1000),
          seconds: (to - from) / 1000,
          tokensA,
          tokensB,
          shareA: tokensA / Math.max(1, tokensA + tokensB),
          target: wa / (wa + wb),
        };
        windows.push(row);
        log(
          `weights ${row.weights}, window ${w + 1} (${row.seconds.toFixed(0)} s): A ${tokensA} tokens, B ${tokensB}: ` +
            `A's share ${(100 * row.shareA).toFixed(1)} % (target ${(100 * row.target).toFixed(0)} ± 5)`,
        );
      }
      for (const id of [a, b]) await call(pool.url, 'POST', `/pool/api/runs/${id}/cancel`, token);
      for (const id of [a, b]) await pool.settled(id);
    }

    // 2. four runs one after another, then at once
    const four = [
      { lora: { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] }, seed: 11 },
      { lora: { r: 8, alpha: 16, targetModules: ['k_proj', 'o_proj'] }, seed: 12 },
      { lora: { r: 2, alpha: 4, targetModules: ['up_proj', 'down_proj'] }, seed: 13 },
      { lora: { r: 16, alpha: 16, targetModules: ['q_proj', 'v_proj', 'gate_proj'] }, seed: 14 },
    ].map(({ lora, seed }) => ({ lora, train: { steps: f.steps, globalBatch: 8, microBatch: 2, lr: 1e-3, seed } }));
    const adapter = (id: string) => readFileSync(join(root, 'pool', 'runs', id, 'adapter_model.safetensors'));
    const t0 = performance.now();
    const sequentialIds: string[] = [];
    for (const [i, run] of four.entries()) {
      const id = await submit(`seq-${i}`, run);
      sequentialIds.push(id);
      if ((await pool.settled(id))?.state !== 'done') throw new Error(`run seq-${i} did not finish`);
    }
    const sequential = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const concurrentIds = await Promise.all(four.map((run, i) => submit(`conc-${i}`, run)));
    for (const id of concurrentIds)
      if ((await pool.settled(id))?.state !== 'done') throw new Error(`run ${id} did not finish`);
    const concurrent = (performance.now() - t1) / 1000;
    const sameBits = sequentialIds.every((id, i) => adapter(id).equals(adapter(concurrentIds[i])));
    const speedup = sequential / concurrent;
    log(
      `4 runs × ${f.steps} steps: one after another ${sequential.toFixed(1)} s, at once ${concurrent.toFixed(1)} s: ` +
        `${speedup.toFixed(2)}× (goal ≥ 1.5×); adapters identical either way: ${sameBits}`,
    );
    if (!sameBits) throw new Error('a run ended with other bits when the four ran at once');

    const result = {
      date: started,
      machine: machine(),
      flags: f,
      windows,
      concurrency: {
        runs: 4,
        steps: f.steps,
        sequentialSeconds: sequential,
        concurrentSeconds: concurrent,
        speedup,
        sameBits,
      },
    };
    if (f.write) {
      writeJson(f.quick ? 'pool.quick' : 'pool', result);
      if (!f.quick) {
        const rows = windows
          .map(
            (w) =>
              `| ${w.weights} | ${w.start}–${w.start + Math.round(w.seconds)} s | ${w.tokensA} | ${w.tokensB} | ` +
              `**${(100 * w.shareA).toFixed(1)} %** | ${(100 * w.target).toFixed(0)} ± 5 % |`,
          )
          .join('\n');
        replaceSection(
          'pool',
          'Standing pool: fair share and concurrent runs',
          `${provenance(started, 'npm run bench:pool')}

${f.workers} worker processes (wasm, one thread each) join a pool on the demo model. **Fair share:** two runs
that always have work (16 micro-batches a step) share the workers; per ${f.window} s window, the tokens of the
first attempts each run was handed (what the fair share charges; retries and straggler copies are not charged).

| weights A:B | window | tokens A | tokens B | A's share | target |
|---|---|---|---|---|---|
${rows}

**Concurrency:** four different runs (r = 4, 8, 2, 16 on different targets; ${f.steps} steps of 4 micro-batches)
one after another, then submitted at once, on the same workers: ${fmt(sequential)} s against ${fmt(concurrent)} s,
**${speedup.toFixed(2)}×** (goal ≥ 1.5×). Each run's adapter is byte-identical in both orders. The gain here is
the idle time of one run's step barrier (the pool steps the optimizer and publishes parameters while workers wait,
and a step's last micro-batches leave workers idle) filled by the other runs' micro-batches; the multi-adapter
pass (several runs' rows in one forward and backward) is not built, so per-kernel overhead is not shared yet.`,
        );
      }
    }
  } finally {
    await pool.close();
    await stopLocalWorkers(workers);
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
