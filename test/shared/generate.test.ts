// KV-cached generation equals recomputing the whole sequence at every step; sampling is seeded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { generate } from '../../shared/generate.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { randomWeights, tinyConfig } from '../helpers/tiny-model.ts';

const config = tinyConfig({ num_key_value_heads: 2 });
const model = createModel(config);
const base = new FrozenBase(config, randomWeights(config, 21, 0.5));

/** Greedy decoding without a cache: full forward over the growing sequence each step. */
function greedyNoCache(prompt: number[], steps: number): number[] {
  const seq = [...prompt];
  for (let i = 0; i < steps; i++) {
    const next = tf.tidy(() => {
      const logits = model.forward(base, tf.tensor2d(seq, [1, seq.length], 'int32'));
      return tf.argMax(tf.gather(logits, [seq.length - 1]), -1).dataSync()[0];
    });
    seq.push(next);
  }
  return seq.slice(prompt.length);
}

test('greedy generation with the KV cache equals recomputation without it', () => {
  const prompts = [
    [1, 5, 7, 3],
    [2, 9, 4, 4],
  ];
  const cached = generate(model, base, prompts, { maxNewTokens: 10 });
  prompts.forEach((p, b) => assert.deepEqual(cached[b], greedyNoCache(p, 10)));
});

test('generation releases its cache tensors', () => {
  const before = tf.memory().numTensors;
  generate(model, base, [[1, 2, 3]], { maxNewTokens: 5 });
  assert.equal(tf.memory().numTensors, before);
});

test('temperature sampling is reproducible per seed and top-p = tiny collapses to greedy', () => {
  const prompt = [[3, 4, 5]];
  const a = generate(model, base, prompt, { maxNewTokens: 8, temperature: 1.5, seed: 1 });
  const b = generate(model, base, prompt, { maxNewTokens: 8, temperature: 1.5, seed: 1 });
  assert.deepEqual(a, b);
  const outs = new Set(
    [1, 2, 3, 4, 5].map((seed) =>
      generate(model, base, prompt, { maxNewTokens: 8, temperature: 1.5, seed })[0].join(','),
    ),
  );
  assert.ok(outs.size > 1, 'different seeds should give different samples at temperature 1.5');
  const nucleus = generate(model, base, prompt, { maxNewTokens: 8, temperature: 1.5, topP: 1e-6, seed: 3 });
  assert.deepEqual(nucleus, generate(model, base, prompt, { maxNewTokens: 8 }));
});

test('generation stops a sequence at <eos> and refuses to run past the context', () => {
  const [out] = generate(model, base, [[1, 2]], {
    maxNewTokens: 12,
    eosId: generate(model, base, [[1, 2]], { maxNewTokens: 1 })[0][0],
  });
  assert.equal(out.length, 1);
  assert.throws(
    () => generate(model, base, [[1, 2]], { maxNewTokens: config.max_position_embeddings }),
    /context length/,
  );
});
