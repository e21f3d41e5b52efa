/**
 * `npm run bench:browser-real -- --model DIR [--base-format nf4] [--backends wasm,webgpu]
 * [--tokens 32] [--cap-min 20]`: a headless-Chromium worker (the /join page) joins a run on a
 * real-shaped checkpoint (scripts/make-checkpoint.ts) held as a compact base, downloads and
 * verifies the compact file, and computes one 1 × tokens micro-batch, once per browser backend
 * (wasm; WebGPU, here on SwiftShader: correctness, not speed). Each run has --heartbeat-ms 60000
 * and the stated time cap; the coordinator's own recomputations (spot checks, probation) are off so
 * the figure is the tab's. Prints the download, the compute time the tab reports and the loss, and
 * writes bench/results/browser-real-<model>.json and a section of bench/RESULTS.md.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '../node/backend.ts';
import { examplesFor } from '../coordinator/io/dataset.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import { checkLoraConfig, checkTrainConfig } from '../shared/config.ts';
import { resolveBaseSpec } from '../shared/quant/formats.ts';
import { browserSkipReason, launchBrowser, startRun, tail, within } from '../test/helpers/browser.ts';
import { fmt, provenance, replaceSection, writeJson } from './lib/results.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    'base-format': { type: 'string', default: 'nf4' },
    backends: { type: 'string', default: 'wasm,webgpu' },
    tokens: { type: 'string', default: '32' },
    'cap-min': { type: 'string', default: '20' },
    'no-write': { type: 'boolean', default: false },
  },
});
if (!values.model)
  throw new Error('--model DIR is required (npm run make-checkpoint -- --shape qwen2.5-0.5b --out DIR)');
const skip = browserSkipReason();
if (skip) throw new Error(skip);
await initBackend('wasm');
const model = await openModelDir(values.model);
const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-real-'));
const tokens = Number(values.tokens);
const capMs = Number(values['cap-min']) * 60_000;
const dataFile = join(root, 'data.jsonl');
writeFileSync(
  dataFile,
  Array.from({ length: 4 }, (_, i) =>
    JSON.stringify({ text: `line ${i}: ${'the quick brown fox jumps over the lazy dog '.repeat(8)}` }),
  ).join('\n'),
);
const data = await examplesFor(
  { kind: 'jsonl', path: dataFile, maxTokens: tokens, pack: false, evalFraction: 0, seed: 1 },
  model,
  () => {},
);
const lora = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] });
const train = checkTrainConfig({ steps: 1, globalBatch: 1, microBatch: 1, lr: 1e-4, warmupSteps: 0, seed: 1 });
const baseFormat = resolveBaseSpec({ format: values['base-format'] });
const rows: Record<string, unknown>[] = [];
for (const backend of values.backends!.split(',')) {
  const browser = await launchBrowser();
  const started = performance.now();
  try {
    const run = startRun({
      model,
      examples: data.train,
      workerOutput: 'ignore',
      progress: false,
      config: {
        run: { lora, train, baseFormat },
        deployment: {
          outDir: join(root, 'runs'),
          runId: backend,
          localWorkers: 0,
          minWorkers: 1,
          backend: 'wasm',
          cacheDir: join(root, 'cache'),
          heartbeatMs: 60_000,
        },
        limits: { defence: { spotCheck: 0, probation: 0 } },
      },
    });
    const httpUrl = await within(capMs, 'coordinator start', run.httpUrl);
    console.log(
      `${backend}: coordinator up after ${fmt((performance.now() - started) / 1000)} s; opening the join page`,
    );
    const page = await browser.context.newPage();
    const joinedAt = performance.now();
    await page.goto(`${httpUrl}/join#backend=${backend}`);
    const result = await within(capMs, `the run with one ${backend} tab${tail(browser.console)}`, run.result);
    const computed = await page.evaluate(() =>
      window.loramesh.results.map((r) => ({ computeMs: r.computeMs, lossSum: r.lossSum, tokens: r.tokenCount })),
    );
    const status = await page.evaluate(() => window.loramesh.status);
    const row = {
      backend,
      tabSeconds: (performance.now() - joinedAt) / 1000,
      computeMs: computed[0]?.computeMs,
      loss: computed[0] ? computed[0].lossSum / computed[0].tokens : null,
      microBatches: computed.length,
      finalLoss: result.metrics.at(-1)?.loss,
      adapter: status.adapter ?? '',
    };
    rows.push(row);
    console.log(
      `${backend}${row.adapter ? ` (${row.adapter})` : ''}: ${row.microBatches} micro-batch(es) of 1 × ${tokens} tokens, ` +
        `compute ${fmt((row.computeMs ?? 0) / 1000)} s, loss ${fmt(Number(row.loss))}, tab joined to run done in ${fmt(row.tabSeconds)} s`,
    );
  } catch (err) {
    rows.push({ backend, error: (err as Error).message.slice(0, 400) });
    console.log(`${backend}: failed: ${(err as Error).message.slice(0, 2000)}`);
  } finally {
    await browser.close();
  }
}
rmSync(root, { recursive: true, force: true });
const name = basename(values.model.replace(/\/$/, ''));
if (!values['no-write']) {
  const date = new Date().toISOString();
  const command = `npm run bench:browser-real -- ${process.argv.slice(2).join(' ')}`;
  writeJson(`browser-real-${name}`, { date, command, baseFormat: values['base-format'], tokens, rows });
  const table = [
    '| browser backend | micro-batches | compute (s) | loss | join page open → run done (s) |',
    '|---|---|---|---|---|',
    ...rows.map((r) =>
      r.error
        ? `| ${r.backend} | failed: ${String(r.error).replace(/\|/g, '/').split('\n')[0]} | | | |`
        : `| ${r.backend}${r.adapter ? ` (${r.adapter})` : ''} | ${r.microBatches} | ${fmt(Number(r.computeMs) / 1000)} | ${fmt(Number(r.loss))} | ${fmt(Number(r.tabSeconds))} |`,
    ),
  ].join('\n');
  replaceSection(
    `browser-real-${name}`,
    `A headless-Chromium worker on ${name}, ${values['base-format']} base, 1 × ${tokens} tokens`,
    `${provenance(date, command)} Time cap ${values['cap-min']} min per backend; --heartbeat-ms 60000.\n\n${table}`,
  );
}
process.exit(0);
