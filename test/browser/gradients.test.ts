// Browser backends compute the same gradients as Node: a one-step run whose only worker is a
// headless Chromium tab, once per backend: WebGPU and WebGL (both on SwiftShader, software) and wasm. The page keeps
// each micro-batch it computed (window.loramesh.results: the micro-batch as assigned, the LoRA
// parameters it held, its loss sum and gradients); this test recomputes each in Node on the wasm
// backend with computeGradients and requires ≤ 1e-4 relative L2 per tensor. The runs share seed
// and config, so the coordinator's deterministic sampler hands both tabs the same micro-batches,
// and the GPU backends are also compared with browser wasm directly. The run starts from a random nonzero
// adapter: with B = 0 (the usual init) every lora_A gradient is exactly zero and proves nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { adapterSpec, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { Rng } from '../../shared/rng.ts';
import { computeGradients } from '../../shared/train/gradients.ts';
import type { MicroBatch } from '../../shared/train/micro-batch.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { loadWeights, openModelDir } from '../../coordinator/io/model-dir.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import {
  browserSkipReason,
  exitIfStuckAfterTests,
  launchBrowser,
  screenshotPath,
  startRun,
  tail,
  within,
  type Browser,
} from '../helpers/browser.ts';

const skip = browserSkipReason() ?? false;
exitIfStuckAfterTests();

const TOLERANCE = 1e-4;

interface PlainResult {
  step: number;
  index: number;
  paramVersion: number;
  lossSum: number;
  tokenCount: number;
  computeMs: number;
  microBatch: {
    batch: number;
    time: number;
    dropoutSeed: number;
    inputIds: number[];
    targets: number[];
    lossMask: number[];
  };
  params: Record<string, number[]>;
  grads: Record<string, number[]>;
}

test('gradients from browser WebGPU and WebGL (SwiftShader), browser wasm and Node wasm agree ' +
  '(≤ 1e-4 relative L2 per tensor)', {
  skip,
  timeout: 150_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-browser-grads-'));
  let browser: Browser | null = null;
  try {
    browser = await launchBrowser();
    writeTinyModelDir(join(root, 'model'), 7);
    const model = await openModelDir(join(root, 'model'));
    const lora = checkLoraConfig({
      r: 4,
      alpha: 8,
      targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    });
    const train = checkTrainConfig({ steps: 1, globalBatch: 4, microBatch: 2, lr: 1e-2, warmupSteps: 0, seed: 11 });
    const examples = demoExamples(model.tokenizer, demoTaskData(32, 8, 11));
    const spec = adapterSpec(model.config, lora);
    const rng = new Rng(3);
    const initialAdapter: AdapterState = new Map(
      spec.map((t) => [t.name, Float32Array.from({ length: t.shape[0] * t.shape[1] }, () => 0.2 * rng.normal())]),
    );

    const perBackend = new Map<string, PlainResult[]>();
    for (const backend of ['webgpu', 'webgl', 'wasm'] as const) {
      const started = Date.now();
      const run = startRun({
        model,
        examples,
        initialAdapter,
        progress: false,
        config: {
          run: { lora, train },
          deployment: { outDir: join(root, 'runs'), runId: backend, localWorkers: 0, minWorkers: 1 },
        },
      });
      const httpUrl = await within(30_000, 'coordinator start', run.httpUrl);
      const page = await browser.context.newPage();
      await page.goto(`${httpUrl}/join#backend=${backend}`);
      await within(120_000, `the ${backend} tab's run${tail(browser.console)}`, run.result);
      const status = await page.evaluate(() => window.loramesh.status);
      assert.equal(status.backend, backend);
      if (backend !== 'wasm') {
        // Headless Chromium's GPU is SwiftShader: the page and the coordinator call it slow.
        assert.match(status.adapter, /swiftshader/i);
        assert.equal(status.slow, true);
        assert.ok(
          run.log.some((l) => l.includes(`warning: worker`) && l.includes(`slow fallback backend (${backend}`)),
          run.log.join('\n'),
        );
      }
      if (backend === 'webgpu') {
        assert.match(status.limits, /maxBufferSize .+ maxStorageBufferBindingSize /);
        await page.screenshot({ path: screenshotPath('join-webgpu.png'), fullPage: true });
      }
      // No named functions inside evaluate: tsx wraps them in a __name helper the page lacks.
      const results: PlainResult[] = await page.evaluate(() =>
        window.loramesh.results.map((r) => ({
          step: r.step,
          index: r.index,
          paramVersion: r.paramVersion,
          lossSum: r.lossSum,
          tokenCount: r.tokenCount,
          computeMs: r.computeMs,
          microBatch: {
            batch: r.microBatch.batch,
            time: r.microBatch.time,
            dropoutSeed: r.microBatch.dropoutSeed,
            inputIds: Array.from(r.microBatch.inputIds),
            targets: Array.from(r.microBatch.targets),
            lossMask: Array.from(r.microBatch.lossMask),
          },
          params: Object.fromEntries(Object.entries(r.params).map(([k, v]) => [k, Array.from(v)])),
          grads: Object.fromEntries(Object.entries(r.grads).map(([k, v]) => [k, Array.from(v)])),
        })),
      );
      assert.equal(
        results.length,
        2,
        `the ${backend} tab computed ${results.length} micro-batches${tail(browser.console)}`,
      );
      perBackend.set(backend, results);
      console.log(
        `# ${backend} on ${status.adapter}: run ${((Date.now() - started) / 1000).toFixed(1)} s, ` +
          `compute ${results.map((r) => `${r.computeMs.toFixed(0)} ms`).join(' + ')}`,
      );
      await page.close();
    }

    const base = new FrozenBase(model.config, loadWeights(model).weights);
    const causalLm = createModel(model.config);
    let worst = 0;
    for (const [backend, results] of perBackend) {
      for (const r of results) {
        for (const t of spec)
          assert.deepEqual(
            r.params[t.name],
            Array.from(initialAdapter.get(t.name)!),
            `${backend} held the initial ${t.name}`,
          );
        const mb: MicroBatch = {
          ...r.microBatch,
          inputIds: Int32Array.from(r.microBatch.inputIds),
          targets: Int32Array.from(r.microBatch.targets),
          lossMask: Float32Array.from(r.microBatch.lossMask),
        };
        const params: AdapterState = new Map(Object.entries(r.params).map(([k, v]) => [k, Float32Array.from(v)]));
        const node = computeGradients(causalLm, base, spec, params, lora, mb);
        assert.equal(r.tokenCount, node.tokenCount);
        assert.ok(
          Math.abs(r.lossSum - node.lossSum) <= TOLERANCE * Math.abs(node.lossSum),
          `${backend} micro-batch ${r.index}: loss sum ${r.lossSum} vs Node ${node.lossSum}`,
        );
        for (const t of spec) {
          const expected = node.grads.get(t.name)!;
          assert.ok(Math.hypot(...expected) > 0, `${t.name} has a nonzero reference gradient`);
          const rel = relativeL2Distance([[expected, r.grads[t.name]]]);
          worst = Math.max(worst, rel);
          assert.ok(rel <= TOLERANCE, `${backend} micro-batch ${r.index} ${t.name}: relative L2 ${rel} vs Node wasm`);
        }
      }
    }
    // The tabs got the same micro-batches: compare the GPU backends with browser wasm directly too.
    const wasm = perBackend.get('wasm')!;
    for (const gpu of ['webgpu', 'webgl']) {
      for (const g of perBackend.get(gpu)!) {
        const w = wasm.find((x) => x.step === g.step && x.index === g.index)!;
        assert.deepEqual(g.microBatch.inputIds, w.microBatch.inputIds, 'the sampler is deterministic across runs');
        for (const t of spec) {
          const rel = relativeL2Distance([[w.grads[t.name], g.grads[t.name]]]);
          assert.ok(rel <= TOLERANCE, `${gpu} vs browser wasm, micro-batch ${g.index} ${t.name}: relative L2 ${rel}`);
        }
      }
    }
    console.log(
      `# worst relative L2 vs Node wasm over ${spec.length} tensors × 2 micro-batches × ` +
        `${perBackend.size} backends: ${worst.toExponential(2)}`,
    );
  } finally {
    await browser?.close();
    rmSync(root, { recursive: true, force: true });
  }
});
