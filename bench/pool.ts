/**
 * `npm run bench:pool` (issue 18): the standing pool with real worker processes on the demo model.
 *
 * 1. Fair share over wall-clock windows. Two runs that always have work (a long step count; 16 micro-batches a
 *    step) share the pool's workers, first with weights 3:1, then 1:1. Per window (default 30 s) it reports
 *    each run's share of the tokens of first attempts handed out (what the fair share charges: retries and
 *    straggler copies are not charged), against the 75 % and 50 % targets (± 5 points).
 * 2. Concurrency. Four different runs (ranks, targets, seeds) one after another, then the same four submitted
 *    at once, on the same workers, first with each worker computing one micro-batch at a time, then with the
 *    multi-adapter pass (up to 4 runs' micro-batches in one forward and backward): the wall-clock speed-ups.
 *    With one run, workers idle while the pool steps the optimizer, publishes parameters and waits for a step's
 *    last micro-batch; with four, another run's micro-batches fill those gaps, and the mixed pass shares each
 *    kernel launch. Each run's adapter is the same bytes in all three (checked here; the tests check it against
 *    the run alone).
 *
 * With --latency MS every worker holds each result MS ms before sending it (a remote worker's round trip), and
 * only the concurrency is measured (bench/results/pool-latency.json, its own RESULTS.md section).
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
import { loadWeights } from '../coordinator/io/model-dir.ts';
import { DEFAULT_LORA, type LinearModule } from '../shared/config.ts';
import { adapterSpec } from '../shared/lora/adapter.ts';
import { FrozenBase } from '../shared/lora/params.ts';
import { createModel } from '../shared/model/causal-lm.ts';
import { baseForKernels } from '../shared/model/compact-base.ts';
import { Rng } from '../shared/rng.ts';
import { computeGradientsAsync, computeMixedGradientsAsync } from '../shared/train/gradients.ts';
import { fmt, machine, provenance, replaceSection, writeJson } from './lib/results.ts';

interface Flags {
  window: number;
  windows: number;
  workers: number;
  steps: number;
  repeats: number;
  /** ms each worker holds every result before sending it (a remote worker's round trip); > 0 measures concurrency only */
  latency: number;
  only: 'share' | 'concurrency' | null;
  quick: boolean;
  write: boolean;
}

function flags(argv = process.argv.slice(2)): Flags {
  const f: Flags = {
    window: 30,
    windows: 2,
    workers: 2,
    steps: 20,
    repeats: 3,
    latency: 0,
    only: null,
    quick: false,
    write: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') Object.assign(f, { quick: true, window: 10, windows: 1, steps: 8, repeats: 1 });
    else if (a === '--no-write') f.write = false;
    else if (a === '--only') {
      const part = argv[++i];
      if (part !== 'share' && part !== 'concurrency') throw new Error(`--only ${part}: expected share or concurrency`);
      f.only = part;
    } else if (['--window', '--windows', '--workers', '--steps', '--repeats', '--latency'].includes(a)) {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} ${argv[i]}: expected an integer ≥ 1`);
      (f as unknown as Record<string, number>)[a.slice(2)] = n;
      if (a === '--latency') f.only = 'concurrency';
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
  /** A's share of the tokens handed out while both runs had micro-batches waiting (the acceptance's measure) */
  contendedShareA: number;
  target: number;
}

/**
 * The multi-adapter pass's compute alone, in this process: 2 and 4 runs' demo micro-batches (2 × 24 tokens
 * each; ranks and targets as the concurrency runs') as one pass against one pass each, median ms of `repeats`
 * after 5 warm-up rounds, side by side.
 */
async function passTimes(repeats: number): Promise<{ runs: number; separateMs: number; mixedMs: number }[]> {
  const model = await openModelDir(DEMO_MODEL_DIR);
  const { config } = model;
  const base = new FrozenBase(config, baseForKernels(config, loadWeights(model).weights));
  const lm = createModel(config);
  const rng = new Rng(1);
  const targets = [
    ['q_proj', 'v_proj'],
    ['k_proj', 'o_proj'],
    ['up_proj', 'down_proj'],
    ['q_proj', 'v_proj', 'gate_proj'],
  ];
  const jobs = [4, 8, 2, 16].map((r, k) => {
    const lora = { ...DEFAULT_LORA, r, alpha: 2 * r, targetModules: targets[k] as LinearModule[] };
    const spec = adapterSpec(config, lora);
    const adapter = new Map(
      spec.map((t) => [t.name, Float32Array.from({ length: t.shape[0] * t.shape[1] }, () => 0.01 * rng.normal())]),
    );
    const [batch, time] = [2, 24];
    const ids = () => Int32Array.from({ length: batch * time }, () => Math.floor(rng.next() * config.vocab_size));
    const mb = {
      batch,
      time,
      inputIds: ids(),
      targets: ids(),
      lossMask: new Float32Array(batch * time).fill(1),
      dropoutSeed: 0,
    };
    return { spec, adapter, lora, mb };
  });
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1];
  const out = [];
  for (const count of [2, 4]) {
    const some = jobs.slice(0, count);
    const [separate, mixed]: number[][] = [[], []];
    for (let i = 0; i < repeats + 5; i++) {
      let t = performance.now();
      for (const j of some) await computeGradientsAsync(lm, base, j.spec, j.adapter, j.lora, j.mb);
      if (i >= 5) separate.push(performance.now() - t);
      t = performance.now();
      await computeMixedGradientsAsync(lm, base, some);
      if (i >= 5) mixed.push(performance.now() - t);
    }
    out.push({ runs: count, separateMs: median(separate), mixedMs: median(mixed) });
  }
  return out;
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
    ...(f.latency > 0 ? { env: () => ({ LORAMESH_FAULT: `delay:${f.latency}` }) } : {}),
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
    for (const [wa, wb] of f.only === 'concurrency'
      ? []
      : [
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
        const contended = (run: string) =>
          served
            .filter((s) => s.run === run && s.first && s.at >= from && s.at < to)
            .filter((s) => s.waiting.includes(a) && s.waiting.includes(b))
            .reduce((n, s) => n + s.positions, 0);
        const [bothA, bothB] = [contended(a), contended(b)];
        const row: ShareWindow = {
          weights: `${wa}:${wb}`,
          start: Math.round((from - served[0].at) / 1000),
          seconds: (to - from) / 1000,
          tokensA,
          tokensB,
          shareA: tokensA / Math.max(1, tokensA + tokensB),
          contendedShareA: bothA / Math.max(1, bothA + bothB),
          target: wa / (wa + wb),
        };
        windows.push(row);
        log(
          `weights ${row.weights}, window ${w + 1} (${row.seconds.toFixed(0)} s): A ${tokensA} tokens, B ${tokensB}: ` +
            `A's share ${(100 * row.shareA).toFixed(1)} %, while both had micro-batches waiting ` +
            `${(100 * row.contendedShareA).toFixed(1)} % (target ${(100 * row.target).toFixed(0)} ± 5)`,
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
    const oneAfterAnother = async (label: string) => {
      const t = performance.now();
      const ids: string[] = [];
      for (const [i, run] of four.entries()) {
        const id = await submit(`${label}-${i}`, run);
        ids.push(id);
        if ((await pool.settled(id))?.state !== 'done') throw new Error(`run ${label}-${i} did not finish`);
      }
      return { seconds: (performance.now() - t) / 1000, ids };
    };
    const atOnce = async (label: string) => {
      const t = performance.now();
      const ids = await Promise.all(four.map((run, i) => submit(`${label}-${i}`, run)));
      for (const id of ids) if ((await pool.settled(id))?.state !== 'done') throw new Error(`run ${id} did not finish`);
      return { seconds: (performance.now() - t) / 1000, ids };
    };
    // side by side, in rotating order: one after another; at once, each worker computing one micro-batch at a
    // time; at once, a worker taking up to 4 runs' micro-batches into one pass (the multi-adapter pass)
    const modes = {
      sequential: () => ((pool.mesh.maxRunsPerWorker = 1), oneAfterAnother('seq')),
      oneAtATime: () => ((pool.mesh.maxRunsPerWorker = 1), atOnce('conc1')),
      mixed: () => ((pool.mesh.maxRunsPerWorker = 4), atOnce('conc4')),
    };
    const times: Record<keyof typeof modes, number[]> = { sequential: [], oneAtATime: [], mixed: [] };
    const poolCpu: Record<keyof typeof modes, number[]> = { sequential: [], oneAtATime: [], mixed: [] };
    const names = Object.keys(modes) as (keyof typeof modes)[];
    let reference: string[] | null = null;
    let sameBits = true;
    // one unmeasured round first: the pool process's JIT and each worker's first passes
    if (f.only !== 'share') await atOnce('warm-up');
    if (f.only !== 'share')
      for (let rep = 0; rep < f.repeats; rep++)
        for (let k = 0; k < names.length; k++) {
          const name = names[(k + rep) % names.length];
          const cpu = process.cpuUsage();
          const { seconds, ids } = await modes[name]();
          const used = process.cpuUsage(cpu);
          times[name].push(seconds);
          poolCpu[name].push((used.user + used.system) / 1e6);
          reference ??= ids;
          sameBits &&= ids.every((id, i) => adapter(id).equals(adapter(reference![i])));
          log(`${name}: ${seconds.toFixed(2)} s (the pool process used ${poolCpu[name].at(-1)!.toFixed(2)} s of CPU)`);
        }
    pool.mesh.maxRunsPerWorker = 1;
    const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1] ?? NaN;
    const sequential = med(times.sequential);
    const oneAtATime = { seconds: med(times.oneAtATime) };
    const concurrent = med(times.mixed);
    const speedup = sequential / concurrent;
    log(
      `4 runs × ${f.steps} steps: one after another ${sequential.toFixed(1)} s; at once, one micro-batch per worker ` +
        `at a time ${oneAtATime.seconds.toFixed(1)} s (${(sequential / oneAtATime.seconds).toFixed(2)}×), with the ` +
        `multi-adapter pass ${concurrent.toFixed(1)} s (${speedup.toFixed(2)}×; goal ≥ 1.5×); adapters identical: ${sameBits}`,
    );
    if (!sameBits) throw new Error('a run ended with other bits in another mode');

    // 3. the pass alone, in this process (the workers are idle by now)
    const passes = f.only === 'share' || f.latency > 0 ? [] : await passTimes(f.quick ? 5 : 20);
    for (const p of passes)
      log(
        `${p.runs} runs' micro-batches: ${p.separateMs.toFixed(1)} ms in separate passes, ` +
          `${p.mixedMs.toFixed(1)} ms in one pass (${(p.separateMs / p.mixedMs).toFixed(2)}×)`,
      );
    const cpu = (name: keyof typeof poolCpu) => med(poolCpu[name]);

    const result = {
      passes,
      date: started,
      machine: machine(),
      flags: f,
      windows,
      concurrency: {
        runs: 4,
        steps: f.steps,
        sequentialSeconds: sequential,
        oneAtATimeSeconds: oneAtATime.seconds,
        concurrentSeconds: concurrent,
        repeats: times,
        poolCpuSeconds: poolCpu,
        speedup,
        sameBits,
      },
    };
    if (f.write && f.latency > 0) {
      writeJson(f.quick ? 'pool-latency.quick' : 'pool-latency', result);
      if (!f.quick)
        replaceSection(
          'pool-latency',
          'Standing pool: concurrent runs on workers with a round trip',
          `${provenance(started, `npm run bench:pool -- --latency ${f.latency}`)}

The concurrency measurement above, with every worker holding each result ${f.latency} ms before sending it (a
worker on another machine: its round trip is time it computes nothing for the run that waits). Medians of
${f.repeats} side-by-side repeats after a warm-up round, the pool process's CPU in brackets: four runs one after
another ${fmt(sequential)} s (${fmt(cpu('sequential'))} s); at once, one micro-batch per worker at a time
${fmt(oneAtATime.seconds)} s (${fmt(cpu('oneAtATime'))} s), **${(sequential / oneAtATime.seconds).toFixed(2)}×**; at once
with \`--runs-per-worker 4\` ${fmt(concurrent)} s (${fmt(cpu('mixed'))} s), **${speedup.toFixed(2)}×**. Each run's adapter
is byte-identical in every mode. With several runs' attempts on it, a worker computes one run's micro-batch while
another's result is on its way, so the round trips overlap with compute.`,
        );
    } else if (f.write) {
      writeJson(f.quick ? 'pool.quick' : 'pool', result);
      if (!f.quick) {
        const rows = windows
          .map(
            (w) =>
              `| ${w.weights} | ${w.start}–${w.start + Math.round(w.seconds)} s | ${w.tokensA} | ${w.tokensB} | ` +
              `${(100 * w.shareA).toFixed(1)} % | **${(100 * w.contendedShareA).toFixed(1)} %** | ` +
              `${(100 * w.target).toFixed(0)} ± 5 % |`,
          )
          .join('\n');
        replaceSection(
          'pool',
          'Standing pool: fair share and concurrent runs',
          `${provenance(started, 'npm run bench:pool')}

${f.workers} worker processes (wasm, one thread each) join a pool on the demo model. **Fair share:** two runs
that always have work (16 micro-batches a step) share the workers; per ${f.window} s window, the tokens of the
first attempts each run was handed (what the fair share charges; retries and straggler copies are not charged),
over the whole window and over the assignments made while both runs had micro-batches waiting (the share the
scheduler controls: at the tail of a step a run has nothing waiting, and the other run takes the free workers).
Workers take one micro-batch at a time (the pool's default).

| weights A:B | window | tokens A | tokens B | A's share, whole window | A's share while both had work waiting | target |
|---|---|---|---|---|---|---|
${rows}

**Concurrency:** four different runs (r = 4, 8, 2, 16 on different targets; ${f.steps} steps of 4 micro-batches each)
on the same workers, medians of ${f.repeats} side-by-side repeats after a warm-up round (the pool process's CPU in
brackets): one after another ${fmt(sequential)} s (${fmt(cpu('sequential'))} s); at once, each worker computing one
micro-batch at a time, ${fmt(oneAtATime.seconds)} s (${fmt(cpu('oneAtATime'))} s), **${(sequential / oneAtATime.seconds).toFixed(2)}×**;
at once with \`--runs-per-worker 4\` (the multi-adapter pass) ${fmt(concurrent)} s (${fmt(cpu('mixed'))} s),
**${speedup.toFixed(2)}×**. Goal ≥ 1.5×: **not met on this machine.** Each run's adapter is byte-identical in every
mode. Running runs at once can only fill idle time, and here there is none to fill: the two workers and the pool
share 2 cores, and the pool's own work (the runs' optimizer steps, parameter frames, result checks, spot-check
recomputations, ledgers) takes a third to half of a core (the figures in brackets), so the cores are busy in
every mode. With workers on their own
machines the pool's barrier time is the workers' idle time, which is what running runs at once recovers; that
needs more machines than this one to measure.

**The pass alone** (this process, no pool): ${passes
            .map(
              (p) =>
                `${p.runs} runs' micro-batches in ${fmt(p.separateMs)} ms as separate passes against ${fmt(p.mixedMs)} ms as one ` +
                `(${(p.separateMs / p.mixedMs).toFixed(2)}×)`,
            )
            .join(
              '; ',
            )}. After issue 17 the demo's kernels are compute-bound on wasm, so sharing the frozen products and
row-wise kernels across runs saves little here; where per-kernel overhead dominates (GPU backends) it should save
more (not measured: no GPU here).`,
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
