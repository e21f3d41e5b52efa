/**
 * `npm run bench:pool-real -- --model DIR [--runs 3] [--base-format nf4] [--tokens 16] [--steps 2] [--no-write]`:
 * the standing pool at a real model's shapes (scripts/make-checkpoint.ts writes random-weight checkpoints at
 * Qwen2.5-0.5B's). One worker process joins a pool on the checkpoint (quantized once to --base-format); one
 * run trains alone, then --runs runs train at once. Reported: the pool process's peak RSS after the single run
 * and after the concurrent ones (the pool holds one base for every run's eval and spot checks, so it should not
 * grow by a base per run), the wall time of each phase, and the worker's peak RSS.
 * Writes bench/results/pool-real-<model>.json and a section of bench/RESULTS.md.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { demoTaskData } from '../coordinator/io/dataset.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import { Pool } from '../coordinator/pool/pool.ts';
import { spawnLocalWorkers, stopLocalWorkers } from '../coordinator/run/local-workers.ts';
import { initBackend } from '../node/backend.ts';
import { type BaseFormat, resolveBaseSpec } from '../shared/quant/formats.ts';
import { fmt, machine, peakRssBytes, provenance, replaceSection, writeJson } from './lib/results.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    runs: { type: 'string', default: '3' },
    'base-format': { type: 'string', default: 'nf4' },
    tokens: { type: 'string', default: '16' },
    steps: { type: 'string', default: '2' },
    'no-write': { type: 'boolean', default: false },
  },
});
if (!values.model)
  throw new Error('--model DIR is required (scripts/make-checkpoint.ts --shape qwen2.5-0.5b --out DIR)');
const [runs, tokens, steps] = [values.runs, values.tokens, values.steps].map(Number);
const ADMIN = 'bench-admin';
const gib = (b: number) => b / 2 ** 30;
const vmRss = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;

async function main(): Promise<void> {
  const started = new Date().toISOString();
  await initBackend('wasm', () => {});
  const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-pool-real-'));
  const model = await openModelDir(values.model!);
  const data = join(root, 'task.jsonl');
  writeFileSync(
    data,
    demoTaskData(64, 1, 3)
      .train.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output }))
      .join('\n') + '\n',
  );
  const baseFormat = resolveBaseSpec({ format: values['base-format'] as BaseFormat });
  const t0 = performance.now();
  const pool = await Pool.start({
    dir: join(root, 'pool'),
    model,
    baseFormat,
    adminToken: ADMIN,
    cacheDir: join(root, 'cache'),
    log: (line) => {
      if (/failed|quarantined|refused/.test(line)) console.log(line);
    },
  });
  const prepared = (performance.now() - t0) / 1000;
  console.log(`pool on ${model.dir} (${values['base-format']}), base file ready in ${prepared.toFixed(1)} s`);
  const workers = spawnLocalWorkers(1, `${pool.url.replace(/^http/, 'ws')}/ws`, {
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    stdio: 'inherit',
  });
  const call = async (method: string, path: string, token: string, body?: unknown, raw?: Buffer) => {
    const res = await fetch(`${pool.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: raw ? new Uint8Array(raw) : body ? JSON.stringify(body) : undefined,
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  try {
    const token = (await call('POST', '/pool/api/tenants', ADMIN, { name: 'bench', quotas: { maxConcurrentRuns: 16 } }))
      .token as string;
    const upload = await call('PUT', '/pool/api/uploads?name=task.jsonl', token, undefined, readFileSync(data));
    const uploadId = (upload.upload as { id: string }).id;
    const run = (seed: number, targets: string[]) => ({
      lora: { r: 8, alpha: 16, targetModules: targets },
      train: { steps, globalBatch: 2, microBatch: 1, lr: 1e-3, warmupSteps: 0, seed },
      data: { maxTokens: tokens, evalFraction: 0.05 },
    });
    const submitAndWait = async (list: ReturnType<typeof run>[]) => {
      const t = performance.now();
      const ids = await Promise.all(
        list.map(
          async (r, i) =>
            ((await call('POST', '/pool/api/runs', token, { uploadId, name: `r${i}`, run: r })).run as { id: string })
              .id,
        ),
      );
      for (const id of ids) {
        const settled = await pool.settled(id);
        if (settled?.state !== 'done') throw new Error(`run ${id} ended ${settled?.state}: ${settled?.error}`);
      }
      return (performance.now() - t) / 1000;
    };
    while (pool.mesh.readyCount() < 1) await new Promise((r) => setTimeout(r, 200));
    const single = await submitAndWait([run(1, ['q_proj', 'v_proj'])]);
    const afterOne = { peak: peakRssBytes(), rss: vmRss() };
    console.log(`1 run: ${single.toFixed(1)} s; pool peak RSS ${gib(afterOne.peak).toFixed(2)} GiB`);
    const targets = [['q_proj', 'v_proj'], ['k_proj', 'o_proj'], ['gate_proj', 'up_proj'], ['down_proj']];
    const concurrent = await submitAndWait(
      Array.from({ length: runs }, (_, i) => run(10 + i, targets[i % targets.length])),
    );
    const afterMany = { peak: peakRssBytes(), rss: vmRss() };
    console.log(
      `${runs} runs at once: ${concurrent.toFixed(1)} s; pool peak RSS ${gib(afterMany.peak).toFixed(2)} GiB ` +
        `(base loads in the pool process: ${pool.baseLoads})`,
    );
    const result = {
      date: started,
      machine: machine(),
      model: model.dir,
      baseFormat: values['base-format'],
      tokens,
      steps,
      runs,
      baseFileSeconds: prepared,
      singleRunSeconds: single,
      concurrentSeconds: concurrent,
      poolPeakRssAfterOne: afterOne.peak,
      poolPeakRssAfterMany: afterMany.peak,
      baseLoads: pool.baseLoads,
    };
    if (!values['no-write']) {
      const name = basename(model.dir);
      writeJson(`pool-real-${name}`, result);
      replaceSection(
        `pool-real-${name}`,
        `Standing pool at real shapes: ${name}`,
        `${provenance(started, `npm run bench:pool-real -- --model ${model.dir} --runs ${runs}`)}

A pool on a random-weight checkpoint at this model's exact shapes (${model.config.model_type}, quantized once to
${values['base-format']}), one worker process (wasm), LoRA r = 8 runs of ${steps} steps of 2 micro-batches of ≤ ${tokens}
tokens, with the default result checks (spot checks on each worker's first 2 results and 5 % of the rest,
recomputed in the pool process) and an eval set. One run alone: ${fmt(single)} s, the pool process's peak RSS
${fmt(gib(afterOne.peak))} GiB. Then ${runs} runs at once (different targets): ${fmt(concurrent)} s, peak RSS
${fmt(gib(afterMany.peak))} GiB, the base loaded ${pool.baseLoads} time(s) in the pool process: every run's eval and
spot checks use the pool's one copy (before this session's change each run built its own copy at its first spot
check or eval).`,
      );
    }
  } finally {
    await pool.close();
    await stopLocalWorkers(workers);
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
