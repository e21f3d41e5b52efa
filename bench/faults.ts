/**
 * `npm run bench:faults`: how fast the mesh recovers. (1) A worker process SIGKILLed while it
 * holds a micro-batch: time until the coordinator reassigns it (socket close), and until that
 * step completes. (2) A worker frozen with SIGSTOP (socket open, silent): time until the
 * heartbeat drops it, with the default 5 s interval. (3) Coordinator restart (see
 * bench/RESULTS.md, measured by the resume test when checkpoints exist).
 * Writes bench/results/faults.json and the table in bench/RESULTS.md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '../worker/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../shared/config.ts';
import { demoExamples, demoTaskData } from '../coordinator/dataset.ts';
import { openModelDir } from '../coordinator/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/paths.ts';
import { runTraining } from '../coordinator/train.ts';

await initBackend('wasm');
const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-faults-'));
const cli = fileURLToPath(new URL('../coordinator/cli.ts', import.meta.url));
const model = await openModelDir(DEMO_MODEL_DIR);
const lora = checkLoraConfig({ r: 8, alpha: 16 });
const train = checkTrainConfig({ steps: 10, globalBatch: 16, microBatch: 4, seed: 1 });
const examples = demoExamples(model.tokenizer, demoTaskData(256, 8, 1));

async function trial(signal: 'SIGKILL' | 'SIGSTOP', heartbeatMs: number, steps: number) {
  let url = '';
  let victim: ChildProcess | null = null;
  let hitAt = 0;
  let noticedAt = 0;
  let stepDoneAt = 0;
  await runTraining({
    model, lora, train: { ...train, steps }, examples, outDir: join(root, 'runs'), runId: `${signal}-${heartbeatMs}`, localWorkers: 2, backend: 'wasm',
    cacheDir: join(root, 'cache'), workerOutput: 'ignore', progress: false, heartbeatMs,
    log: (line) => {
      url = /listening on (ws:\S+)/.exec(line)?.[1] ?? url;
      if (hitAt && !noticedAt && /(left holding|missed a heartbeat)/.test(line)) noticedAt = performance.now();
    },
    onStep: async (m) => {
      if (m.step === 2) {
        // A slow victim (2 s per micro-batch) so it is sure to hold work when it is hit.
        victim = spawn(process.execPath, ['--import', 'tsx', cli, 'worker', url, '--backend', 'wasm', '--cache-dir', join(root, 'cache')], { stdio: 'ignore', env: { ...process.env, LORAMESH_FAULT: 'delay:2000' } });
        await new Promise((r) => setTimeout(r, 3000));
      }
      if (m.step === 4) setTimeout(() => { victim!.kill(signal); hitAt = performance.now(); }, 300);
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
rmSync(root, { recursive: true, force: true });
const result = {
  date: new Date().toISOString(),
  killedWorker: { noticedMs: median(kills.map((k) => k.noticedMs)), stepDoneMs: median(kills.map((k) => k.stepDoneMs)), trials: kills },
  silentWorker: { heartbeatMs: 5000, noticedMs: stops[0].noticedMs, stepDoneMs: stops[0].stepDoneMs },
};
console.log(`SIGKILLed worker holding a micro-batch: reassigned after ${result.killedWorker.noticedMs.toFixed(0)} ms (median of 3), its step done ${result.killedWorker.stepDoneMs.toFixed(0)} ms after the kill`);
console.log(`silent (SIGSTOP) worker, 5 s heartbeat: dropped after ${result.silentWorker.noticedMs.toFixed(0)} ms (bound: 2 intervals); its micro-batch was copied to a peer past its deadline, so steps did not wait`);
writeFileSync(join(import.meta.dirname, 'results', 'faults.json'), JSON.stringify(result, null, 2) + '\n');
const table = [
  '<!-- faults-table:start -->',
  `Measured ${result.date.slice(0, 10)} on this 2-core machine, demo model, 2 local workers + a victim worker (2 s per micro-batch).`,
  '',
  '| event | noticed after | step completed after |',
  '|---|---:|---:|',
  `| worker SIGKILLed while holding a micro-batch (median of 3) | ${result.killedWorker.noticedMs.toFixed(0)} ms | ${result.killedWorker.stepDoneMs.toFixed(0)} ms |`,
  `| worker frozen (SIGSTOP), heartbeat 5 s (bound 10 s) | ${result.silentWorker.noticedMs.toFixed(0)} ms | – (its work was copied past its deadline) |`,
  '<!-- faults-table:end -->',
].join('\n');
const resultsPath = join(import.meta.dirname, 'RESULTS.md');
let md = existsSync(resultsPath) ? readFileSync(resultsPath, 'utf8') : '# Benchmark results\n';
if (!md.includes('<!-- faults-table:start -->')) md += '\n## Recovery from faults (`npm run bench:faults`)\n\n<!-- faults-table:start -->\n<!-- faults-table:end -->\n';
writeFileSync(resultsPath, md.replace(/<!-- faults-table:start -->[\s\S]*<!-- faults-table:end -->/, table));
