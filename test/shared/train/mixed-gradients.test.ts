// The multi-adapter pass (shared/train/gradients.ts computeMixedGradientsAsync, issue 18): several runs'
// micro-batches with different ranks, targets, batch sizes and sequence lengths in one forward and backward
// give each run the loss and gradients of its micro-batch computed alone (computeGradients), bit for bit.
// Llama with grouped-query attention (the fused LoRA kernels), Qwen2 (q/k/v biases: the unfused path on
// those layers) and GPT-2 (biases everywhere, tied head).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../../helpers/backend.ts';
import { DEFAULT_LORA, type LinearModule, type ModelConfig } from '../../../shared/config.ts';
import { type AdapterState, adapterSpec } from '../../../shared/lora/adapter.ts';
import { FrozenBase } from '../../../shared/lora/params.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { baseForKernels } from '../../../shared/model/compact-base.ts';
import { Rng } from '../../../shared/rng.ts';
import {
  canMix,
  computeGradients,
  computeMixedGradientsAsync,
  type MixedJob,
} from '../../../shared/train/gradients.ts';
import type { MicroBatch } from '../../../shared/train/micro-batch.ts';
import { randomWeights, tinyConfig, tinyGpt2Config } from '../../helpers/tiny-model.ts';

function job(config: ModelConfig, r: number, targets: LinearModule[], batch: number, time: number, seed: number) {
  const rng = new Rng(seed);
  const lora = { ...DEFAULT_LORA, r, alpha: 2 * r, targetModules: targets };
  const spec = adapterSpec(config, lora);
  // B ≠ 0 (a run some steps in), so every A gets a gradient too
  const adapter: AdapterState = new Map(
    spec.map((t) => [t.name, Float32Array.from({ length: t.shape[0] * t.shape[1] }, () => 0.2 * rng.normal())]),
  );
  const n = batch * time;
  const ids = () => Int32Array.from({ length: n }, () => Math.floor(rng.next() * config.vocab_size));
  const mb: MicroBatch = {
    batch,
    time,
    inputIds: ids(),
    targets: ids(),
    lossMask: Float32Array.from({ length: n }, (_, i) => (i % time < 2 ? 0 : 1)),
    dropoutSeed: seed,
  };
  return { spec, adapter, lora, mb } satisfies MixedJob;
}

async function check(label: string, config: ModelConfig, jobs: MixedJob[]) {
  const model = createModel(config);
  const base = new FrozenBase(config, baseForKernels(config, randomWeights(config, 5)));
  assert.ok(canMix(base, jobs), `${label}: these jobs can share a pass`);
  const mixed = await computeMixedGradientsAsync(model, base, jobs);
  for (const [r, j] of jobs.entries()) {
    const alone = computeGradients(model, base, j.spec, j.adapter, j.lora, j.mb);
    assert.ok(Number.isFinite(alone.lossSum) && alone.lossSum > 0);
    assert.equal(mixed[r].lossSum, alone.lossSum, `${label}, run ${r}: loss bits`);
    assert.equal(mixed[r].tokenCount, alone.tokenCount);
    for (const t of j.spec) {
      const [got, want] = [mixed[r].grads.get(t.name)!, alone.grads.get(t.name)!];
      assert.ok(
        want.some((x) => x !== 0),
        `${label}, run ${r}: ${t.name} has a gradient`,
      );
      assert.deepEqual(got, want, `${label}, run ${r}: ${t.name} bits`);
    }
  }
  // the one-run pass is the run alone too
  const [single] = await computeMixedGradientsAsync(model, base, [jobs[1]]);
  const alone = computeGradients(model, base, jobs[1].spec, jobs[1].adapter, jobs[1].lora, jobs[1].mb);
  assert.equal(single.lossSum, alone.lossSum, `${label}: one run in the pass`);
}

test('multi-adapter pass: each run gets the bits of its micro-batch alone (Llama, GQA, fused LoRA kernels)', async () => {
  const config = tinyConfig();
  await check('llama', config, [
    job(config, 4, ['q_proj', 'v_proj'], 2, 7, 1),
    job(config, 8, ['k_proj', 'o_proj', 'down_proj'], 1, 12, 2),
    job(config, 2, ['up_proj'], 3, 5, 3),
    job(config, 3, ['q_proj', 'gate_proj'], 2, 9, 4),
  ]);
});

test('multi-adapter pass: Qwen2 (q/k/v biases) and GPT-2 (biases, tied head) give the bits of each run alone', async () => {
  const qwen = tinyConfig({ model_type: 'qwen2' } as never);
  await check('qwen2', qwen, [
    job(qwen, 4, ['q_proj', 'v_proj', 'o_proj'], 2, 6, 5),
    job(qwen, 2, ['k_proj', 'up_proj'], 1, 11, 6),
  ]);
  const gpt2 = tinyGpt2Config();
  await check('gpt2', gpt2, [
    job(gpt2, 4, ['c_attn'], 2, 8, 7),
    job(gpt2, 2, ['c_proj', 'c_fc'], 1, 13, 8),
    job(gpt2, 8, ['c_attn', 'c_fc'], 3, 4, 9),
  ]);
});

test('runs with dropout or LoRA on lm_head, and recomputing steps, are computed alone', () => {
  const config = tinyConfig();
  const base = new FrozenBase(config, baseForKernels(config, randomWeights(config, 5)));
  const plain = job(config, 4, ['q_proj'], 1, 4, 1);
  assert.ok(canMix(base, [plain]));
  assert.ok(!canMix(base, [plain, { ...plain, lora: { ...plain.lora, dropout: 0.1 } }]));
  assert.ok(!canMix(base, [plain], { recompute: true }));
  tf.dispose([]);
});
