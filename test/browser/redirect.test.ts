// A headless Chromium tab joins a coordinator with an ingestion thread (--ingest-threads 1): it says hello to the
// coordinator's address from the join page, is sent on (`redirect`) to the thread's port, and trains there; the
// run ends with the in-process run's adapter for the same reduction block (≤ 1e-4, the browser join test's bound).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import '../helpers/backend.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { browserSkipReason, exitIfStuckAfterTests, launchBrowser, startRun, tail, within } from '../helpers/browser.ts';
import { blockRun } from '../helpers/block-run.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();

test('a browser tab is sent to an ingestion thread, trains there, and the run equals the in-process run', {
  skip,
  timeout: 150_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-redirect-'));
  const browser = await launchBrowser();
  try {
    const { train, common, config, reference } = await blockRun(root);

    const run = startRun({
      ...common,
      config: config({ runId: 'threaded-tab', localWorkers: 0, minWorkers: 1, ingestThreads: 1, port: 0 }),
    });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const page = await browser.context.newPage();
    await page.goto(`${httpUrl}/join#backend=wasm&name=tab`);
    const result = await within(
      120_000,
      `the threaded run with a browser tab${tail(browser.console)}\n${run.log.slice(-10).join('\n')}`,
      run.result,
    );
    const status = await page.evaluate(() => window.loramesh.status);
    assert.equal(status.state, 'finished');
    assert.equal(status.done, train.steps * 4, 'the tab computed every micro-batch');
    // the tab said hello to the main thread, was sent on and joined the thread, never the main thread's mesh
    const port = /^ingestion threads: 1, on ports (\d+)$/.exec(run.log.find((l) => l.startsWith('ingestion')) ?? '');
    assert.ok(port, run.log.join('\n'));
    assert.notEqual(port[1], new URL(httpUrl).port);
    assert.ok(
      run.log.some((l) => /^ingest 0: worker \S+ \(tab, browser\/wasm[^)]*\) joined/.test(l)),
      run.log.join('\n'),
    );
    assert.ok(!run.log.some((l) => /^worker \S+ \(tab, browser\/wasm[^)]*\) joined/.test(l)), 'not on the main thread');
    const diff = maxAbsDiff(result.adapter, reference.adapter);
    assert.ok(diff <= 1e-4, `max abs diff ${diff}`);
    result.metrics.forEach((m, i) =>
      assert.ok(Math.abs(m.loss - reference.metrics[i].loss) <= 1e-4, `step ${i + 1}: ${m.loss}`),
    );
    console.log(`# browser tab behind an ingestion thread: max abs diff ${diff.toExponential(2)}`);
  } finally {
    await browser.close();
    rmSync(root, { recursive: true, force: true });
  }
});
