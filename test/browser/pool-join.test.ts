// A headless Chromium tab (wasm backend) joins a standing pool through the same /join page it uses to join a
// run: it loads the base once (pool-welcome), serves two runs submitted one after the other through their
// channels, and stays between them. Each run's adapter equals the run trained alone in-process, bit for bit.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import '../helpers/backend.ts';
import { demoTaskData, examplesFor } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { Pool } from '../../coordinator/pool/pool.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { decodeSafetensors } from '../../shared/formats/safetensors.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import {
  browserSkipReason,
  exitIfStuckAfterTests,
  launchBrowser,
  screenshotPath,
  tail,
  waitForState,
  within,
} from '../helpers/browser.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();
const ADMIN = 'pool-admin';

test('a browser tab joins a pool through /join, serves two runs and stays; each is the run alone, bit for bit', {
  skip,
  timeout: 150_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-pool-'));
  const browser = await launchBrowser();
  writeTinyModelDir(join(root, 'model'), 3);
  const model = await openModelDir(join(root, 'model'));
  const data = join(root, 'task.jsonl');
  const samples = demoTaskData(60, 1, 9).train;
  writeFileSync(
    data,
    samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output })).join('\n') + '\n',
  );
  const pool = await Pool.start({ dir: join(root, 'pool'), model, adminToken: ADMIN, log: () => {} });
  const call = async (method: string, path: string, token: string, body?: unknown, raw?: Buffer) => {
    const res = await fetch(`${pool.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: raw ? new Uint8Array(raw) : body ? JSON.stringify(body) : undefined,
    });
    return (await res.json()) as Record<string, unknown>;
  };
  try {
    const page = await browser.context.newPage();
    await page.goto(`${pool.url}/join#backend=wasm&name=tab`);
    await waitForState(page, 'ready');
    const token = (await call('POST', '/pool/api/tenants', ADMIN, { name: 'lab' })).token as string;
    const upload = await call('PUT', '/pool/api/uploads?name=task.jsonl', token, undefined, readFileSync(data));
    const uploadId = (upload.upload as { id: string }).id;
    const runs = [
      {
        lora: { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] },
        train: { steps: 4, globalBatch: 4, microBatch: 2, lr: 1e-2, seed: 2 },
      },
      {
        lora: { r: 2, alpha: 4, targetModules: ['up_proj'] },
        train: { steps: 3, globalBatch: 6, microBatch: 3, lr: 1e-2, seed: 3 },
      },
    ];
    for (const [i, run] of runs.entries()) {
      const id = (
        (await call('POST', '/pool/api/runs', token, { uploadId, name: `tab-${i}`, run })).run as { id: string }
      ).id;
      const settled = await within(90_000, `run ${i} in the tab`, pool.settled(id));
      assert.equal(settled?.state, 'done', `${JSON.stringify(settled)}${tail(browser.console)}`);
      // the same run alone, in this process
      const examples = await examplesFor(
        { kind: 'jsonl', path: data, pack: false, evalFraction: 0, seed: run.train.seed },
        model,
        () => {},
      );
      await runTraining({
        model,
        examples: examples.train,
        config: {
          run: { ...run, data: { kind: 'jsonl', path: data, pack: false, evalFraction: 0, seed: run.train.seed } },
          deployment: {
            outDir: join(root, 'alone'),
            runId: `alone-${i}`,
            inProcess: true,
            backend: 'wasm',
            localWorkers: 0,
          },
        } as never,
        progress: false,
        log: () => {},
      });
      const tensors = (dir: string) => decodeSafetensors(readFileSync(join(dir, 'adapter_model.safetensors'))).tensors;
      const [got, want] = [tensors(join(root, 'pool', 'runs', id)), tensors(join(root, 'alone', `alone-${i}`))];
      const diff = maxAbsDiff(
        new Map([...got].map(([n, t]) => [n, t.data as Float32Array])),
        new Map([...want].map(([n, t]) => [n, t.data as Float32Array])),
      );
      // simd128 (the runs' arithmetic) gives the same bits in Chromium as in Node
      assert.equal(diff, 0, `run ${i}: max abs diff ${diff} against the run alone`);
    }
    // the tab is still in the pool after both runs, with its base loaded once
    assert.equal(pool.mesh.readyCount(), 1);
    assert.equal(browser.console.filter((l) => l.includes('joined the pool as')).length, 1, tail(browser.console));
    await page.screenshot({ path: screenshotPath('pool-join.png'), fullPage: true });
  } finally {
    await browser.close();
    await pool.close();
    rmSync(root, { recursive: true, force: true });
  }
});
