// The join page keeps the base model in Cache Storage: a reload makes zero /files/ requests and
// joins again; a corrupted cache entry is detected (sha256) and fetched again; a second tab of the
// same browser joins from the cache too. The run waits for 2 workers, so the coordinator stays up
// through the reloads; the second tab lets it start and finish. The tab that reloads leaves with a
// clean close, so the coordinator's table never holds a stale worker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import type { WorkerInfo } from '../../coordinator/engine/mesh.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import {
  browserSkipReason,
  exitIfStuckAfterTests,
  launchBrowser,
  startRun,
  tail,
  waitForState,
  within,
  type Browser,
} from '../helpers/browser.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();

test('a reload joins from the browser cache (0 /files/ requests); a corrupt entry is fetched again', {
  skip,
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-cache-'));
  let browser: Browser | null = null;
  try {
    browser = await launchBrowser();
    writeTinyModelDir(join(root, 'model'), 4);
    const model = await openModelDir(join(root, 'model'));
    const weightFiles = model.files.filter((f) => f.name.endsWith('.safetensors'));
    const lora = checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] });
    const train = checkTrainConfig({ steps: 2, globalBatch: 4, microBatch: 2, lr: 1e-2, warmupSteps: 0, seed: 2 });
    const examples = demoExamples(model.tokenizer, demoTaskData(16, 8, 2));
    const run = startRun({
      model,
      examples,
      progress: false,
      config: {
        run: { lora, train },
        deployment: { outDir: join(root, 'runs'), runId: 'cache', localWorkers: 0, minWorkers: 2 },
      },
    });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const workers = async () =>
      ((await (await fetch(`${httpUrl}/api/status`)).json()) as { workers: WorkerInfo[] }).workers;

    const fileRequests: string[] = [];
    browser.context.on('request', (req) => {
      if (new URL(req.url()).pathname.startsWith('/files/')) fileRequests.push(req.url());
    });
    const page = await browser.context.newPage();
    const joinUrl = `${httpUrl}/join#backend=wasm`;

    await page.goto(joinUrl);
    await waitForState(page, 'ready').catch((err) => assert.fail(`${err.message}${tail(browser!.console)}`));
    assert.equal(
      fileRequests.length,
      weightFiles.length,
      `first visit downloads each weight file once: ${fileRequests.join(', ')}`,
    );
    assert.equal((await workers()).length, 1);

    fileRequests.length = 0;
    await page.reload();
    await waitForState(page, 'ready');
    assert.deepEqual(fileRequests, [], 'a reload reads the weights from Cache Storage');
    assert.ok((await page.textContent('#base'))!.includes('from the browser cache'));
    const logLines = await page.evaluate(() => window.loramesh.log);
    assert.ok(
      logLines.some((l) => /read from the browser cache, sha256 verified/.test(l)),
      logLines.join('\n'),
    );
    // The old page closed its socket on pagehide: one worker, not a stale one plus the new one.
    const afterReload = await workers();
    assert.equal(afterReload.length, 1, JSON.stringify(afterReload));
    assert.equal(afterReload[0].state, 'ready');

    // Corrupt the cached bytes (same length, one bit flipped): the page must refuse and refetch them.
    const key = `${httpUrl}/files/${weightFiles[0].sha256}`;
    await page.evaluate(async (url) => {
      const cache = await caches.open('loramesh-base-files-v1');
      const bytes = new Uint8Array(await (await cache.match(url))!.arrayBuffer());
      bytes[bytes.length - 1] ^= 1;
      await cache.put(url, new Response(bytes));
    }, key);
    fileRequests.length = 0;
    await page.reload();
    await waitForState(page, 'ready');
    assert.deepEqual(fileRequests, [key], 'the corrupt entry is downloaded again, nothing else');
    const corruptLog = await page.evaluate(() => window.loramesh.log);
    assert.ok(
      corruptLog.some((l) => /cached copy of model\.safetensors is corrupt/.test(l)),
      corruptLog.join('\n'),
    );

    // A second tab joins from the repaired cache; with 2 workers the run starts and finishes.
    fileRequests.length = 0;
    const second = await browser.context.newPage();
    await second.goto(joinUrl);
    const result = await within(60_000, `the run with two cached tabs${tail(browser.console)}`, run.result);
    assert.deepEqual(fileRequests, [], 'the second tab used the cache');
    assert.equal(result.metrics.length, train.steps);
    // Every micro-batch was computed by one of the tabs (the coordinator may also hand a slow one
    // to a second worker, so the count can exceed steps × micro-batches).
    const computed = (
      await Promise.all(
        [page, second].map((p) => p.evaluate(() => window.loramesh.results.map((r) => `${r.step}/${r.index}`))),
      )
    ).flat();
    assert.equal(new Set(computed).size, train.steps * 2, `computed: ${computed.join(', ')}`);
  } finally {
    await browser?.close();
    rmSync(root, { recursive: true, force: true });
  }
});
