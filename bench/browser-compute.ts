/**
 * `npm run bench:browser-compute [-- --steps 40 --arithmetic simd128|relaxed-fma]`: the demo model's
 * LoRA step in a headless-Chromium tab's wasm next to the same step in Node's wasm. A demo run (one
 * micro-batch of 32 demo examples per step, r 8 on q/v) whose only worker is the join page; the page
 * keeps each micro-batch it computed with its compute time and the LoRA parameters it held. Then
 * this process (wasm, 1 thread, the same arithmetic) computes every one of those micro-batches with
 * the same parameters, each right after the other, and the ratio is the median of per-micro-batch
 * ratios, over the last micro-batches the page keeps (40 steps: both engines long past their wasm tier-up). The tab's thread count is what its backend
 * reports (the page is not cross-origin isolated, so tfjs runs one thread there). Writes
 * bench/results/browser-compute.json and a section of bench/RESULTS.md.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { selectArithmetic } from '../kernels/arithmetic.ts';
import { initBackend } from '../node/backend.ts';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { loadWeights, openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { ARITHMETIC_VARIANTS, type ArithmeticVariant } from '../shared/arithmetic.ts';
import { checkTrainConfig } from '../shared/config.ts';
import { adapterSpec, type AdapterState } from '../shared/lora/adapter.ts';
import { FrozenBase } from '../shared/lora/params.ts';
import { createModel } from '../shared/model/causal-lm.ts';
import { baseForKernels } from '../shared/model/compact-base.ts';
import { computeGradients } from '../shared/train/gradients.ts';
import type { MicroBatch } from '../shared/train/micro-batch.ts';
import { browserSkipReason, launchBrowser, startRun, tail, within } from '../test/helpers/browser.ts';
import { DEMO_LORA } from './compute-workloads.ts';
import { fmt, provenance, replaceSection, writeJson } from './lib/results.ts';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '40' },
    arithmetic: { type: 'string', default: 'simd128' },
    'no-write': { type: 'boolean', default: false },
  },
});
const skip = browserSkipReason();
if (skip) throw new Error(skip);
const steps = Number(values.steps);
if (!Number.isInteger(steps) || steps < 3) throw new Error(`--steps should be an integer ≥ 3, got ${values.steps}`);
const arithmetic = values.arithmetic as ArithmeticVariant;
if (!ARITHMETIC_VARIANTS.includes(arithmetic))
  throw new Error(`--arithmetic should be one of ${ARITHMETIC_VARIANTS.join(', ')}, got ${values.arithmetic}`);
await initBackend('wasm', () => {});
selectArithmetic(arithmetic);

const GLOBAL_BATCH = 32; // the compute bench's demo micro-batch (bench/compute-workloads.ts)
const model = await openModelDir(DEMO_MODEL_DIR);
const examples = demoExamples(model.tokenizer, demoTaskData(4 * GLOBAL_BATCH, 1, 3));
const train = checkTrainConfig({ steps, globalBatch: GLOBAL_BATCH, microBatch: GLOBAL_BATCH, lr: 1e-3, seed: 1 });
const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-compute-'));
const browser = await launchBrowser();
interface TabResult {
  computeMs: number;
  lossSum: number;
  microBatch: {
    batch: number;
    time: number;
    dropoutSeed: number;
    inputIds: number[];
    targets: number[];
    lossMask: number[];
  };
  params: Record<string, number[]>;
}
let tab: TabResult[];
let adapter = '';
try {
  const run = startRun({
    model,
    examples,
    workerOutput: 'ignore',
    progress: false,
    config: {
      run: { lora: DEMO_LORA, train, arithmetic },
      deployment: {
        outDir: join(root, 'runs'),
        runId: 'browser-compute',
        localWorkers: 0,
        minWorkers: 1,
        backend: 'wasm',
        cacheDir: join(root, 'cache'),
      },
      limits: { defence: { spotCheck: 0, probation: 0 } },
    },
  });
  const page = await browser.context.newPage();
  await page.goto(`${await within(60_000, 'coordinator start', run.httpUrl)}/join#backend=wasm`);
  await within(10 * 60_000, `the run with one wasm tab${tail(browser.console)}`, run.result);
  adapter = (await page.evaluate(() => window.loramesh.status.adapter)) ?? '';
  tab = await page.evaluate(() =>
    window.loramesh.results.map((r) => ({
      computeMs: r.computeMs,
      lossSum: r.lossSum,
      microBatch: {
        batch: r.microBatch.batch,
        time: r.microBatch.time,
        dropoutSeed: r.microBatch.dropoutSeed,
        inputIds: Array.from(r.microBatch.inputIds),
        targets: Array.from(r.microBatch.targets),
        lossMask: Array.from(r.microBatch.lossMask),
      },
      params: Object.fromEntries(Object.entries(r.params).map(([k, v]) => [k, Array.from(v)])),
    })),
  );
} finally {
  await browser.close();
  rmSync(root, { recursive: true, force: true });
}

// The same micro-batches and parameters in Node, as a worker holds the base.
const spec = adapterSpec(model.config, DEMO_LORA);
const base = new FrozenBase(model.config, baseForKernels(model.config, loadWeights(model).weights));
const causalLm = createModel(model.config);
const node = tab.map((r) => {
  const mb: MicroBatch = {
    ...r.microBatch,
    inputIds: Int32Array.from(r.microBatch.inputIds),
    targets: Int32Array.from(r.microBatch.targets),
    lossMask: Float32Array.from(r.microBatch.lossMask),
  };
  const params: AdapterState = new Map(Object.entries(r.params).map(([k, v]) => [k, Float32Array.from(v)]));
  const t0 = performance.now();
  const result = computeGradients(causalLm, base, spec, params, DEMO_LORA, mb);
  return { ms: performance.now() - t0, lossSum: result.lossSum };
});
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
// The page keeps its last few results: with enough steps they are all past the engines' warm-up.
const skipped = tab.length === steps ? 2 : 0;
const warm = tab.slice(skipped).map((r, i) => ({ tab: r.computeMs, node: node[i + skipped].ms }));
const row = {
  arithmetic,
  tabAdapter: adapter,
  microBatch: `${tab[0].microBatch.batch} × ${tab[0].microBatch.time}`,
  steps: tab.length,
  tabMs: median(warm.map((w) => w.tab)),
  nodeMs: median(warm.map((w) => w.node)),
  ratio: median(warm.map((w) => w.tab / w.node)),
  lossGap: Math.max(...tab.map((r, i) => Math.abs(r.lossSum - node[i].lossSum) / Math.abs(node[i].lossSum))),
};
console.log(
  `demo step (${row.microBatch} tokens, ${arithmetic}): Chromium tab (${adapter}) ${fmt(row.tabMs)} ms, ` +
    `Node ${fmt(row.nodeMs)} ms, tab/Node ${row.ratio.toFixed(2)}× (median of ${warm.length}); ` +
    `loss sums agree to ${row.lossGap.toExponential(1)}`,
);
if (!values['no-write']) {
  const date = new Date().toISOString();
  const command = `npm run bench:browser-compute -- ${process.argv.slice(2).join(' ')}`.trim();
  writeJson(`browser-compute-${arithmetic}`, { date, command, row });
  replaceSection(
    `browser-compute-${arithmetic}`,
    `The demo step in a headless-Chromium tab vs Node (wasm, ${arithmetic})`,
    `${provenance(date, command)} Each of the tab's micro-batches computed again in Node (1 thread) with the ` +
      `parameters the tab held; medians over the last ${warm.length} steps of ${steps}.\n\n` +
      '| micro-batch (tokens) | Chromium tab | ms/step, tab | ms/step, Node | tab / Node (median of pairs) | loss sums agree to |\n' +
      '|---|---|---:|---:|---:|---:|\n' +
      `| ${row.microBatch} | ${adapter} | ${fmt(row.tabMs)} | ${fmt(row.nodeMs)} | **${row.ratio.toFixed(2)}×** | ` +
      `${row.lossGap.toExponential(1)} |`,
  );
}
process.exit(0);
