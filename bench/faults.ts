/**
 * `npm run bench:faults`: how fast the mesh recovers. (1) A worker process SIGKILLed while it
 * holds a micro-batch: time until the coordinator reassigns it (socket close), and until that
 * step completes. (2) A worker frozen with SIGSTOP (socket open, silent): time until the
 * heartbeat drops it, with the default 5 s interval. (3) Coordinator SIGKILL, then
 * `train --resume`: time from the restart to the next completed step.
 * Writes bench/results/faults.json and the table in bench/RESULTS.md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '../node/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../shared/config.ts';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { runTraining } from '../coordinator/run/train.ts';

await initBackend('wasm');
const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-faults-'));
const cli = fileURLToPath(new URL('../coordinator/cli.ts', import.meta.url));
const model = await openModelDir(DEMO_MODEL_DIR);
const lora = checkLoraConfig({ r: 8, alpha: 16 });
const train = checkTrainConfig({ steps: 10, globalBatch: 16, microBatch: 4, seed: 1 });
const examples = demoExamples(model.tokenizer, demoTaskData(256, 8, 1));

let trials = 0; // each trial gets its own run folder
async function trial(signal: 'SIGKILL' | 'SIGSTOP', heartbeatMs: number, steps: number) {
  let url = '';
  let victim: ChildProcess | null = null;
  let hitAt = 0;
  let noticedAt = 0;
  let stepDoneAt = 0;
  await runTraining({
    model,
    examples,
    config: {
      run: { lora, train: { ...train, steps } },
      deployment: {
        outDir: join(root, 'runs'),
        runId: `${signal}-${heartbeatMs}-${++trials}`,
        localWorkers: 2,
        backend: 'wasm',
        cacheDir: join(root, 'cache'),
        heartbeatMs,
      },
    },
    workerOutput: 'ignore',
    progress: false,
    log: (line) => {
      url = /listening on (ws:\S+)/.exec(line)?.[1] ?? url;
      if (hitAt && !noticedAt && /(left holding|missed a heartbeat)/.test(line)) noticedAt = performance.now();
    },
    onStep: async (m) => {
      if (m.step === 2) {
        // A slow victim (2 s per micro-batch) so it is sure to hold work when it is hit.
        victim = spawn(
          process.execPath,
          ['--import', 'tsx', cli, 'worker', url, '--backend', 'wasm', '--cache-dir', join(root, 'cache')],
          { stdio: 'ignore', env: { ...process.env, LORAMESH_FAULT: 'delay:2000' } },
        );
        await new Promise((r) => setTimeout(r, 3000));
      }
      if (m.step === 4)
        setTimeout(() => {
          victim!.kill(signal);
          hitAt = performance.now();
        }, 300);
      if (hitAt && !stepDoneAt && noticedAt) stepDoneAt = performance.now();
    },
  });
  (victim as ChildProcess | null)?.kill('SIGKILL');
  return { noticedMs: noticedAt - hitAt, stepDoneMs: stepDoneAt - hitAt };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const kills = [await trial('SIGKILL', 5000, 10), await trial('SIGKILL', 5000, 10), await trial('SIGKILL', 5000, 10)];
// Long enough that the run is still going when the heartbeat drops the frozen worker.
const stops = [await trial('SIGSTOP', 5000, 80)];

/**
 * Coordinator restart: kill a CLI run after step 7 (checkpoint at 5), time `train --resume` until its first new step.
 */
async function restart(): Promise<{ toNextStepMs: number; resumedAt: number }> {
  const runDir = join(root, 'runs', 'restart');
  const args = [
    '--import',
    'tsx',
    cli,
    'train',
    '--backend',
    'wasm',
    '--local-workers',
    '2',
    '--checkpoint-every',
    '5',
    '--eval-every',
    '1000',
  ];
  const env = { ...process.env, LORAMESH_CACHE: join(root, 'cache') };
  const steps = () =>
    existsSync(join(runDir, 'metrics.jsonl'))
      ? readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
          .trim()
          .split('\n')
          .filter((l) => l.includes('"loss"')).length
      : 0;
  const waitFor = (child: ChildProcess, cond: () => boolean) =>
    new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        if (cond()) {
          clearInterval(timer);
          resolve();
        }
      }, 10);
      child.once('exit', () => clearInterval(timer));
    });
  const first = spawn(
    process.execPath,
    [
      ...args,
      '--steps',
      '60',
      '--global-batch',
      '16',
      '--micro-batch',
      '4',
      '--out',
      join(root, 'runs'),
      '--run-id',
      'restart',
    ],
    { stdio: 'ignore', env },
  );
  await waitFor(first, () => steps() >= 7);
  first.kill('SIGKILL');
  await new Promise((r) => first.once('exit', r));
  const t0 = performance.now();
  const second = spawn(process.execPath, [...args, '--resume', runDir], { stdio: 'ignore', env });
  await waitFor(second, () => steps() === 5); // truncated to the checkpoint…
  await waitFor(second, () => steps() >= 6); // …then one new step
  const toNextStepMs = performance.now() - t0;
  second.kill('SIGKILL');
  return { toNextStepMs, resumedAt: 5 };
}
const restarts = [await restart()];
rmSync(root, { recursive: true, force: true });
const result = {
  date: new Date().toISOString(),
  killedWorker: {
    noticedMs: median(kills.map((k) => k.noticedMs)),
    stepDoneMs: median(kills.map((k) => k.stepDoneMs)),
    trials: kills,
  },
  silentWorker: { heartbeatMs: 5000, noticedMs: stops[0].noticedMs, stepDoneMs: stops[0].stepDoneMs },
  coordinatorRestart: restarts[0],
};
console.log(
  `SIGKILLed worker holding a micro-batch: reassigned after ${result.killedWorker.noticedMs.toFixed(0)} ms ` +
    `(median of 3), its step done ${result.killedWorker.stepDoneMs.toFixed(0)} ms after the kill`,
);
console.log(
  `silent (SIGSTOP) worker, 5 s heartbeat: dropped after ${result.silentWorker.noticedMs.toFixed(0)} ms ` +
    '(bound: 2 intervals); its micro-batch was copied to a peer past its deadline, so steps did not wait',
);
console.log(
  'coordinator SIGKILLed, `train --resume` started: ' +
    `next step completed after ${result.coordinatorRestart.toNextStepMs.toFixed(0)} ms ` +
    '(process start, model load, workers rejoin)',
);
writeFileSync(join(import.meta.dirname, 'results', 'faults.json'), JSON.stringify(result, null, 2) + '\n');
const table = [
  '<!-- faults-table:start -->',
  `Measured ${result.date.slice(0, 10)} on this 2-core machine, demo model, ` +
    '2 local workers + a victim worker (2 s per micro-batch).',
  '',
  '| event | noticed after | step completed after |',
  '|---|---:|---:|',
  '| worker SIGKILLed while holding a micro-batch (median of 3) ' +
    `| ${result.killedWorker.noticedMs.toFixed(0)} ms | ${result.killedWorker.stepDoneMs.toFixed(0)} ms |`,
  '| worker frozen (SIGSTOP), heartbeat 5 s (bound 10 s) ' +
    `| ${result.silentWorker.noticedMs.toFixed(0)} ms | – (its work was copied past its deadline) |`,
  '| coordinator SIGKILLed, then `train --resume` (2 local workers) | – ' +
    `| ${result.coordinatorRestart.toNextStepMs.toFixed(0)} ms from restart to the next completed step |`,
  '<!-- faults-table:end -->',
].join('\n');
const resultsPath = join(import.meta.dirname, 'RESULTS.md');
let md = existsSync(resultsPath) ? readFileSync(resultsPath, 'utf8') : '# Benchmark results\n';
if (!md.includes('<!-- faults-table:start -->'))
  md +=
    '\n## Recovery from faults (`npm run bench:faults`)\n\n<!-- faults-table:start -->\n<!-- faults-table:end -->\n';
writeFileSync(resultsPath, md.replace(/<!-- faults-table:start -->[\s\S]*<!-- faults-table:end -->/, table));
