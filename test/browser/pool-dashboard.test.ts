// The pool's dashboard in a real (headless) Chromium (issue 18): with tenant A's token it lists A's two runs,
// with loss curves that grow while they train, and the pool's workers, and nothing of tenant B's run; with
// the admin's token every run and its tenant; without a token only counts, no run names. Screenshots go to
// test/artifacts/.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import '../helpers/backend.ts';
import { demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { Pool } from '../../coordinator/pool/pool.ts';
import { spawnLocalWorkers, stopLocalWorkers } from '../../coordinator/run/local-workers.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, within } from '../helpers/browser.ts';

const ADMIN = 'pool-admin';
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-pool-dash-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

async function call(url: string, method: string, path: string, token: string, body?: unknown, raw?: Buffer) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: raw ? new Uint8Array(raw) : body ? JSON.stringify(body) : undefined,
  });
  return (await res.json()) as Record<string, unknown>;
}

test('pool dashboard: a tenant sees its runs with loss curves and the workers, not another tenant’s run', async () => {
  writeTinyModelDir(join(root, 'model'), 2);
  const model = await openModelDir(join(root, 'model'));
  const data = join(root, 'task.jsonl');
  const samples = demoTaskData(80, 1, 4).train;
  writeFileSync(
    data,
    samples.map((s) => JSON.stringify({ prompt: `${s.tag}:${s.input}=`, completion: s.output })).join('\n') + '\n',
  );
  const pool = await Pool.start({ dir: join(root, 'pool'), model, adminToken: ADMIN, log: () => {} });
  // every result 40 ms late: the runs last a few seconds, long enough to watch their curves grow
  const workers = spawnLocalWorkers(2, pool.url.replace(/^http/, 'ws') + '/ws', {
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    stdio: 'ignore',
    env: () => ({ LORAMESH_FAULT: 'delay:40' }),
  });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    const file = readFileSync(data);
    const tokens: Record<string, string> = {};
    for (const name of ['alpha-lab', 'beta-lab'])
      tokens[name] = (await call(pool.url, 'POST', '/pool/api/tenants', ADMIN, { name })).token as string;
    const submit = async (tenant: string, name: string, r: number, steps: number) => {
      const up = await call(pool.url, 'PUT', '/pool/api/uploads?name=task.jsonl', tokens[tenant], undefined, file);
      const uploadId = (up.upload as { id: string }).id;
      const lora = { r, alpha: 2 * r, targetModules: ['q_proj', 'v_proj'] };
      const train = { steps, globalBatch: 4, microBatch: 2, lr: 1e-2, seed: r };
      return (
        (await call(pool.url, 'POST', '/pool/api/runs', tokens[tenant], { uploadId, name, run: { lora, train } }))
          .run as { id: string }
      ).id;
    };
    const a1 = await submit('alpha-lab', 'alpha-summaries', 2, 60);
    const a2 = await submit('alpha-lab', 'alpha-sql', 4, 60);
    const b1 = await submit('beta-lab', 'beta-secret-project', 2, 60);

    const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
    await page.goto(`${pool.url}/#token=${tokens['alpha-lab']}`);
    await page.waitForFunction(() => document.querySelectorAll('#workers tr').length === 2, null, {
      timeout: 60_000,
    });
    const points = () =>
      page.$$eval('.run-line', (lines) => lines.map((l) => Number(l.getAttribute('data-points') ?? 0)));
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('.run-line')].filter((l) => Number(l.getAttribute('data-points')) >= 3).length ===
        2,
      null,
      { timeout: 60_000 },
    );
    const first = await points();
    await page.waitForFunction(
      (n) =>
        [...document.querySelectorAll('.run-line')].every((l, i) => Number(l.getAttribute('data-points')) > n[i] + 3),
      first,
      { timeout: 60_000 },
    );
    const runIds = await page.$$eval('#runs tr', (trs) => trs.map((tr) => (tr as HTMLElement).dataset.runId));
    assert.deepEqual(new Set(runIds), new Set([a1, a2]), "the page lists exactly the tenant's runs");
    const text = (await page.textContent('body')) ?? '';
    assert.ok(text.includes('alpha-summaries') && text.includes('alpha-sql'), 'its run names are shown');
    assert.ok(!text.includes('beta-secret-project') && !text.includes(b1), "no trace of the other tenant's run");
    const workerRows = await page.$$eval('#workers tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    for (const row of workerRows) {
      assert.match(row[1] ?? '', /^local-[12]$/);
      assert.equal(row[3], 'wasm');
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'pool-dashboard.png'), fullPage: true });

    // the admin sees every run with its tenant
    const admin = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
    await admin.goto(`${pool.url}/#token=${ADMIN}`);
    await admin.waitForFunction(() => document.querySelectorAll('#runs tr').length === 3, null, { timeout: 30_000 });
    assert.ok(((await admin.textContent('#runs')) ?? '').includes('beta-secret-project'));
    assert.equal(await admin.textContent('#runs-head th.tenant'), 'tenant');
    await admin.screenshot({ path: join(ARTIFACTS, 'pool-dashboard-admin.png'), fullPage: true });

    // no token: counts only
    const anonymous = await browser.newPage();
    await anonymous.goto(pool.url);
    await anonymous.waitForFunction(() => document.getElementById('runs-running')?.textContent !== '–', null, {
      timeout: 30_000,
    });
    const open = (await anonymous.textContent('body')) ?? '';
    for (const name of ['alpha-summaries', 'alpha-sql', 'beta-secret-project', a1, a2, b1])
      assert.ok(!open.includes(name), `the public view does not show ${name}`);
    assert.equal(await anonymous.$$eval('#runs tr', (trs) => trs.length), 0);
  } finally {
    await browser.close();
    await within(30_000, 'the pool to close', pool.close());
    await stopLocalWorkers(workers);
  }
});
