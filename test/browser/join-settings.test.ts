// The join page's fragment settings and refusals: an unknown #backend is an error (no silent
// substitute); a wrong #token is refused by the coordinator and the tab stops instead of
// reconnecting in a loop; with the right token and no #backend the tab picks the best backend
// (headless Chromium: WebGPU on SwiftShader, reported as slow), runs cross-origin isolated, and
// computes the run's micro-batch.
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

test('fragment settings: bad #backend errors, wrong #token is refused once, auto picks WebGPU (slow on SwiftShader)', {
  skip,
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-settings-'));
  let browser: Browser | null = null;
  try {
    browser = await launchBrowser();
    writeTinyModelDir(join(root, 'model'), 5);
    const model = await openModelDir(join(root, 'model'));
    const lora = checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] });
    const train = checkTrainConfig({ steps: 1, globalBatch: 2, microBatch: 2, lr: 1e-2, warmupSteps: 0, seed: 4 });
    const examples = demoExamples(model.tokenizer, demoTaskData(8, 8, 4));
    const token = 'join-token-42';
    const run = startRun({
      model,
      examples,
      progress: false,
      config: {
        run: { lora, train },
        deployment: { token, outDir: join(root, 'runs'), runId: 'settings', localWorkers: 0, minWorkers: 1 },
      },
    });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const workers = async () =>
      ((await (await fetch(`${httpUrl}/api/status`)).json()) as { workers: WorkerInfo[] }).workers;

    const badBackend = await browser.context.newPage();
    await badBackend.goto(`${httpUrl}/join#backend=cuda`);
    await waitForState(badBackend, 'error');
    assert.match(
      (await badBackend.textContent('#state-detail'))!,
      /LM_ERR_CONFIG: #backend should be one of webgpu, webgl, wasm, got "cuda"/,
    );

    const wrongToken = await browser.context.newPage();
    await wrongToken.goto(`${httpUrl}/join#backend=wasm&token=wrong`);
    await waitForState(wrongToken, 'error');
    assert.match(
      (await wrongToken.textContent('#state-detail'))!,
      /LM_ERR_AUTH: the coordinator refused the join token \(close 1008\)/,
    );
    // No time window needed: the tab decides in the socket's close handler either to end ('error',
    // awaited above) or to log "reconnecting in …" and retry; there is no other way back in.
    const log = await wrongToken.evaluate(() => window.loramesh.log);
    assert.equal(
      log.filter((l) => l.includes('connected to ws://')).length,
      1,
      `one attempt, no reconnect loop:\n${log.join('\n')}`,
    );
    assert.ok(!log.some((l) => l.includes('reconnecting in')), `no reconnect scheduled:\n${log.join('\n')}`);
    assert.ok(
      log.some((l) => l.includes('LM_ERR_AUTH')),
      log.join('\n'),
    );
    assert.equal(await wrongToken.evaluate(() => window.loramesh.status.state), 'error');
    assert.deepEqual(await workers(), []);

    const auto = await browser.context.newPage();
    await auto.goto(`${httpUrl}/join#token=${token}`);
    await within(90_000, `the auto-backend tab's run${tail(browser.console)}`, run.result);
    const status = await auto.evaluate(() => window.loramesh.status);
    assert.equal(status.backend, 'webgpu');
    assert.match(status.adapter, /swiftshader/i);
    assert.equal(status.slow, true);
    assert.equal(await auto.textContent('#slow'), 'slow (software device): correct, but expect little throughput');
    assert.ok(status.done >= 1);
    assert.equal(status.state, 'finished');
    assert.equal(
      await auto.evaluate(() => crossOriginIsolated),
      true,
      'COOP/COEP make the page cross-origin isolated (wasm threads)',
    );
  } finally {
    await browser?.close();
    rmSync(root, { recursive: true, force: true });
  }
});
