// The live dashboard in a real (headless) Chromium: it lists both workers with their backends and
// its loss curve grows while the run trains. A screenshot is saved to test/artifacts/.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { startRun, within } from '../helpers/browser.ts';

const artifacts = join(import.meta.dirname, '..', 'artifacts');
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-dash-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

test('dashboard shows both workers with their backends and a loss curve that updates', async () => {
  writeTinyModelDir(join(root, 'model'), 2);
  const model = await openModelDir(join(root, 'model'));
  const run = startRun({
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(64, 8, 1)),
    workerOutput: 'ignore',
    progress: false,
    config: {
      run: {
        lora: checkLoraConfig({ r: 2, alpha: 4 }),
        train: checkTrainConfig({ steps: 60, globalBatch: 8, microBatch: 2, seed: 1 }),
      },
      deployment: {
        outDir: join(root, 'runs'),
        runId: 'dash',
        localWorkers: 2,
        backend: 'wasm',
        cacheDir: join(root, 'cache'),
      },
    },
  });
  const url = await within(30_000, 'coordinator start', run.httpUrl);
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll('#workers tr').length === 2, null, { timeout: 60_000 });
    const rows = await page.$$eval('#workers tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    assert.equal(rows.length, 2);
    for (const r of rows) {
      assert.equal(r[2], 'node');
      assert.equal(r[3], 'wasm');
      // Node turns relaxed SIMD on (node/backend.ts): both variants are offered
      assert.equal(r[4], 'simd128, relaxed-fma');
      assert.match(r[1] ?? '', /^local-[12]$/);
    }
    const points = async () => Number((await page.getAttribute('#train-line', 'data-points')) ?? 0);
    await page.waitForFunction(
      () => Number(document.getElementById('train-line')?.getAttribute('data-points') ?? 0) >= 3,
      null,
      { timeout: 60_000 },
    );
    const first = await points();
    await page.waitForFunction(
      (n) => Number(document.getElementById('train-line')?.getAttribute('data-points') ?? 0) > n + 5,
      first,
      { timeout: 60_000 },
    );
    assert.ok((await points()) > first, 'the loss curve should grow while training');
    assert.match((await page.textContent('#bytes-vs-full')) ?? '', /full fine-tuning: .* more/);
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });
  } finally {
    await browser.close();
    await run.result;
  }
});
