/**
 * Computes the LoRA gradients of one fixed micro-batch of the demo model on the backend named by
 * argv[2] and writes them as JSON (GradProbeResult) to the file argv[3]. A tfjs backend is
 * process-global, so test/integration/webgpu-node.test.ts runs this once per backend:
 *
 *   node --import tsx test/helpers/grad-probe.ts webgpu /tmp/grads-webgpu.json
 *
 * B is filled with non-zero values (initAdapter leaves it 0), so A gets a gradient too.
 */
import { writeFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { DEMO_LORA } from '../../coordinator/commands/demo.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { loadWeights, openModelDir } from '../../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../../coordinator/io/paths.ts';
import { adapterSpec, initAdapter } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { Rng } from '../../shared/rng.ts';
import { computeGradientsAsync } from '../../shared/train/gradients.ts';
import { packMicroBatch } from '../../shared/train/micro-batch.ts';
import { initBackend, type BackendName } from '../../node/backend.ts';

export interface GradProbeResult {
  backend: string;
  software: boolean;
  note: string;
  lossSum: number;
  tokenCount: number;
  /**
   * milliseconds of one computeGradientsAsync call (the worker path),
   * timed after a warm-up call that compiles the kernels
   */
  stepMs: number;
  grads: Record<string, number[]>;
}

const SEED = 3;
const MICRO_BATCH = 4;

const [backendArg, outPath] = process.argv.slice(2);
if (!outPath) throw new Error('usage: grad-probe.ts <backend> <out.json>');
const info = await initBackend(backendArg as BackendName, (line) => console.error(line));
const modelDir = await openModelDir(DEMO_MODEL_DIR);
const { config } = modelDir;
const base = new FrozenBase(config, loadWeights(modelDir).weights);
const model = createModel(config);
const spec = adapterSpec(config, DEMO_LORA);
const adapter = initAdapter(spec, DEMO_LORA, SEED);
const rng = new Rng(SEED + 1);
for (const t of spec)
  if (t.which === 'B')
    adapter.set(
      t.name,
      Float32Array.from({ length: t.shape[0] * t.shape[1] }, () => 0.05 * rng.normal()),
    );
const microBatch = packMicroBatch(
  demoExamples(modelDir.tokenizer, demoTaskData(MICRO_BATCH, 0, SEED)),
  modelDir.tokenizer.padId,
  0,
);

await computeGradientsAsync(model, base, spec, adapter, DEMO_LORA, microBatch); // warm-up: shader compilation on WebGPU
const started = performance.now();
const result = await computeGradientsAsync(model, base, spec, adapter, DEMO_LORA, microBatch);
const stepMs = performance.now() - started;

const out: GradProbeResult = {
  backend: tf.getBackend(),
  software: info.software,
  note: info.note,
  lossSum: result.lossSum,
  tokenCount: result.tokenCount,
  stepMs,
  grads: Object.fromEntries([...result.grads].map(([name, g]) => [name, Array.from(g)])),
};
writeFileSync(outPath, JSON.stringify(out));
// Dawn keeps the process alive while navigator.gpu is referenced, so end it explicitly.
process.exit(0);
