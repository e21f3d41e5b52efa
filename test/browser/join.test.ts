// A headless Chromium tab (wasm backend) joins a run next to one Node worker process, computes
// micro-batches, and the run ends with the same adapter as the single-process reference
// (max abs diff ≤ 1e-4). The coordinator's worker table lists the tab as a browser worker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import type { WorkerInfo } from '../../coordinator/engine/mesh.ts';
import type { RunResult } from '../../coordinator/run/train.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import {
  browserSkipReason,
  exitIfStuckAfterTests,
  launchBrowser,
  screenshotPath,
  startRun,
  tail,
  within,
} from '../helpers/browser.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();

test('a browser tab (wasm) and a Node worker train together and equal the single-process run (≤ 1e-4)', {
  skip,
  timeout: 150_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-join-'));
  const browser = await launchBrowser();
  try {
    writeTinyModelDir(join(root, 'model'), 3);
    const model = await openModelDir(join(root, 'model'));
    const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
    const train = checkTrainConfig({ steps: 8, globalBatch: 8, microBatch: 2, lr: 1e-2, warmupSteps: 2, seed: 5 });
    const examples = demoExamples(model.tokenizer, demoTaskData(64, 8, 5));
    const common = { model, examples, workerOutput: 'ignore' as const, progress: false };
    const config = (deployment: Partial<Deployment>): RunConfigInput => ({
      run: { lora, train },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir: join(root, 'cache'), ...deployment },
    });

    const reference = await runTraining({
      ...common,
      config: config({ runId: 'reference', inProcess: true, localWorkers: 0 }),
      log: () => {},
    });

    const started = Date.now();
    const run = startRun({ ...common, config: config({ runId: 'browser-and-node', localWorkers: 1, minWorkers: 2 }) });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const page = await browser.context.newPage();
    await page.goto(`${httpUrl}/join#backend=wasm&name=${encodeURIComponent('tab <b>1</b>')}`);
    // Watch the coordinator's worker table while the run goes (the server closes when it ends).
    const seen = new Map<string, WorkerInfo>();
    const poll = setInterval(() => {
      fetch(`${httpUrl}/api/status`)
        .then((r) => r.json())
        .then((s: { workers: WorkerInfo[] }) => {
          for (const w of s.workers) seen.set(w.id, w);
        })
        .catch(() => {});
    }, 200);
    let result: RunResult;
    try {
      result = await within(
        120_000,
        `the mesh run with a browser tab${tail(browser.console)}\n${run.log.slice(-10).join('\n')}`,
        run.result,
      );
    } finally {
      clearInterval(poll);
    }
    const seconds = (Date.now() - started) / 1000;

    const status = await page.evaluate(() => window.loramesh.status);
    assert.equal(status.backend, 'wasm');
    assert.equal(status.slow, false, 'a forced wasm backend is not a fallback');
    assert.ok(status.done > 0, `the tab computed ${status.done} micro-batches${tail(browser.console)}`);
    assert.equal(await page.textContent('#done'), String(status.done));
    assert.equal(status.state, 'finished');
    const browserRows = [...seen.values()].filter((w) => w.platform === 'browser');
    assert.equal(browserRows.length, 1, `worker table: ${JSON.stringify([...seen.values()])}`);
    assert.equal(browserRows[0].backend, 'wasm');
    assert.equal(browserRows[0].name, 'tab <b>1</b>');
    // The page shows names and messages as text, never as markup.
    assert.equal(await page.locator('#worker-id b').count(), 0);
    assert.match((await page.textContent('#worker-id')) ?? '', /tab <b>1<\/b>/);

    const diff = maxAbsDiff(result.adapter, reference.adapter);
    assert.ok(diff <= 1e-4, `max abs diff ${diff}`);
    assert.equal(result.metrics.length, train.steps);
    result.metrics.forEach((m, i) =>
      assert.ok(
        Math.abs(m.loss - reference.metrics[i].loss) <= 1e-4,
        `step ${i + 1} loss ${m.loss} vs ${reference.metrics[i].loss}`,
      ),
    );

    await page.screenshot({ path: screenshotPath('join-wasm.png'), fullPage: true });
    console.log(
      `# browser + node worker: ${train.steps} steps in ${seconds.toFixed(1)} s, ` +
        `tab did ${status.done} of ${train.steps * 4} micro-batches, max abs diff ${diff.toExponential(2)}`,
    );
  } finally {
    await browser.close();
    rmSync(root, { recursive: true, force: true });
  }
});
