// A volunteer's path through a relay: a `loramesh relay` process serves the join page, and a headless Chromium tab
// opened there fetches the base model through the relay (/files/ passed through, every sha256 checked in the tab),
// trains behind it, and the run ends with the in-process run's adapter for the same reduction block (≤ 1e-4, the
// browser join test's bound). The root sees only the relay; its ledger names the tab behind it.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import '../helpers/backend.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { browserSkipReason, exitIfStuckAfterTests, launchBrowser, startRun, tail, within } from '../helpers/browser.ts';
import { cliSpawner } from '../helpers/cli-process.ts';
import { blockRun } from '../helpers/block-run.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();
const RELAY = 'relay-secret';

test('a browser tab joins through a relay: the join page, the base and the steps pass through it', {
  skip,
  timeout: 150_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-relay-'));
  const browser = await launchBrowser();
  const logs: string[] = [];
  const children: ChildProcess[] = [];
  try {
    const { train, common, config, reference } = await blockRun(root);

    const run = startRun({
      ...common,
      config: config({ runId: 'relayed-tab', localWorkers: 0, minWorkers: 1, port: 0, relayToken: RELAY }),
    });
    const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
    const relay = cliSpawner(logs, children)('[relay]', [
      'relay',
      `${httpUrl.replace(/^http/, 'ws')}/ws`,
      '--token',
      RELAY,
      '--name',
      'edge',
    ]);
    const relayWs = await within(
      30_000,
      `the relay's address\n${logs.join('\n')}`,
      new Promise<string>((resolve) =>
        relay.stdout!.on('data', (chunk: Buffer) => {
          const url = /loramesh worker (ws:\S+)/.exec(chunk.toString())?.[1];
          if (url) resolve(url);
        }),
      ),
    );
    const relayHttp = relayWs.replace(/^ws/, 'http').replace(/\/ws$/, '');
    const page = await browser.context.newPage();
    await page.goto(`${relayHttp}/join#backend=wasm&name=tab`);
    const result = await within(
      120_000,
      `the relayed run with a browser tab${tail(browser.console)}\n${run.log.slice(-10).join('\n')}\n${logs.slice(-10).join('\n')}`,
      run.result,
    );
    const status = await page.evaluate(() => window.loramesh.status);
    assert.equal(status.state, 'finished');
    assert.equal(status.done, train.steps * 4, 'the tab computed every micro-batch');
    // the root saw the relay, never the tab; the relay saw the tab
    const relayId = run.log.map((l) => /^worker (\S+) \(edge, node\/relay\) joined/.exec(l)?.[1]).find(Boolean);
    assert.ok(relayId, run.log.join('\n'));
    assert.ok(!run.log.some((l) => /\(tab, browser/.test(l)), 'the tab never joined the root');
    const tabId = logs
      .map((l) => /^\[relay\] .*worker (\S+) \(tab, browser\/wasm[^)]*\) joined/.exec(l)?.[1])
      .find(Boolean);
    assert.ok(tabId, logs.join('\n'));
    // the root's ledger names the tab behind the relay for every micro-batch it used
    const ledger = readFileSync(join(root, 'runs', 'relayed-tab', 'ledger.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { microBatches: { attempts: { outcome: string; computedBy?: string }[] }[] });
    assert.equal(ledger.length, train.steps);
    const used = ledger.flatMap((s) => s.microBatches.flatMap((m) => m.attempts.filter((a) => a.outcome === 'used')));
    assert.equal(used.length, train.steps * 4);
    for (const a of used) assert.equal(a.computedBy, `${relayId}/${tabId}`);
    const diff = maxAbsDiff(result.adapter, reference.adapter);
    assert.ok(diff <= 1e-4, `max abs diff ${diff}`);
    console.log(`# browser tab behind a relay: max abs diff ${diff.toExponential(2)}`);
  } finally {
    for (const c of children)
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGKILL');
        await once(c, 'exit');
      }
    await browser.close();
    rmSync(root, { recursive: true, force: true });
  }
});
