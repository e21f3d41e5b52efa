// A browser tab on a compact base: the tab fetches only the run's compact base file (nf4 with double
// quantization) by sha256, loads it into compact weights, and computes every micro-batch of a run that
// ends with the adapter of the in-process run on the same compact base (≤ 1e-6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { COMPACT_CACHE_FOLDER } from '../../coordinator/io/compact-cache.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { browserSkipReason, exitIfStuckAfterTests, launchBrowser, startRun, tail, within } from '../helpers/browser.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();

test('a browser tab trains on an nf4 compact base it fetched alone; equal to the in-process run', {
  skip,
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-compact-'));
  const browser = await launchBrowser();
  try {
    writeTinyModelDir(join(root, 'model'), 5);
    const model = await openModelDir(join(root, 'model'));
    const lora = checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] });
    const train = checkTrainConfig({ steps: 2, globalBatch: 4, microBatch: 2, lr: 1e-2, warmupSteps: 0, seed: 3 });
    const examples = demoExamples(model.tokenizer, demoTaskData(16, 8, 3));
    const common = { model, examples, workerOutput: 'ignore' as const, progress: false };
    const cacheDir = join(root, 'cache');
    const config = (deployment: Partial<Deployment>): RunConfigInput => ({
      run: { lora, train, baseFormat: { format: 'nf4', blockSize: 8, doubleQuant: true } as never },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir, ...deployment },
    });
    const reference = await runTraining({
      ...common,
      config: config({ runId: 'reference', inProcess: true, localWorkers: 0 }),
      log: () => {},
    });
    const folder = join(cacheDir, COMPACT_CACHE_FOLDER);
    const record = JSON.parse(
      readFileSync(join(folder, readdirSync(folder).find((f) => f.endsWith('.json'))!), 'utf8'),
    );

    const fileRequests: string[] = [];
    browser.context.on('request', (req) => {
      const path = new URL(req.url()).pathname;
      if (path.startsWith('/files/')) fileRequests.push(path.slice('/files/'.length));
    });
    const run = startRun({ ...common, config: config({ runId: 'tab', localWorkers: 0, minWorkers: 1 }) });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const page = await browser.context.newPage();
    await page.goto(`${httpUrl}/join#backend=wasm`);
    const result = await within(90_000, `the run with one tab${tail(browser.console)}`, run.result);
    assert.deepEqual(fileRequests, [record.sha256], 'the compact file, and nothing else');
    const computed = await page.evaluate(() => window.loramesh.results.map((r) => `${r.step}/${r.index}`));
    assert.equal(new Set(computed).size, train.steps * 2, `computed: ${computed.join(', ')}`);
    const diff = maxAbsDiff(result.adapter, reference.adapter);
    assert.ok(diff <= 1e-6, `max abs diff ${diff}`);
  } finally {
    await browser.close();
    rmSync(root, { recursive: true, force: true });
  }
});
