// Activation recomputation (shared/model/recompute.ts) changes memory, not results: the loss and
// every LoRA gradient are the same bits with and without it, for Llama and GPT-2, with dropout on
// (a recomputed module draws the same mask) and with a compact base; nothing leaks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '../../helpers/backend.ts';
import { checkLoraConfig, type LinearModule, type ModelConfig } from '../../../shared/config.ts';
import { adapterSpec, type AdapterState } from '../../../shared/lora/adapter.ts';
import { FrozenBase } from '../../../shared/lora/params.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { compactBase } from '../../../shared/model/compact-base.ts';
import { Rng } from '../../../shared/rng.ts';
import { computeGradients } from '../../../shared/train/gradients.ts';
import { randomAdapter, randomMicroBatch } from '../../helpers/compact.ts';
import { randomWeights, tinyConfig, tinyGpt2Config } from '../../helpers/tiny-model.ts';

const GPT2 = tinyGpt2Config();

test('recomputing each block in the backward pass gives the same loss and gradients, bit for bit', () => {
  const cases: [string, ModelConfig, LinearModule[], boolean][] = [
    ['llama', tinyConfig(), ['q_proj', 'v_proj', 'gate_proj', 'down_proj'], false],
    ['llama nf4', tinyConfig(), ['q_proj', 'o_proj', 'up_proj'], true],
    ['gpt2', GPT2, ['c_attn', 'c_fc'], false],
  ];
  let seed = 30;
  for (const [label, config, targetModules, compact] of cases) {
    const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules, dropout: 0.2 });
    const spec = adapterSpec(config, lora);
    const rng = new Rng(seed++);
    const adapter: AdapterState = randomAdapter(spec, rng);
    const weights = randomWeights(config, seed++);
    const base = new FrozenBase(
      config,
      compact ? compactBase(config, weights, { format: 'nf4', blockSize: 8 }) : weights,
    );
    const model = createModel(config);
    const mb = randomMicroBatch(config.vocab_size, seed++, { dropoutSeed: 5, maskLast: false });
    const plain = computeGradients(model, base, spec, adapter, lora, mb);
    const before = tf.memory().numTensors;
    const recomputed = computeGradients(model, base, spec, adapter, lora, mb, { recompute: true });
    assert.equal(tf.memory().numTensors, before, `${label}: no tensor outlives the step`);
    assert.equal(recomputed.lossSum, plain.lossSum, `${label}: loss`);
    for (const t of spec) assert.deepEqual(recomputed.grads.get(t.name), plain.grads.get(t.name), `${label} ${t.name}`);
  }
});
