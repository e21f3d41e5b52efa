// loramesh's model + LoRA against an independent PyTorch reference (scripts/reference/, computed in
// float64): logits, loss and every A/B gradient agree within 1e-4.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { checkLoraConfig, checkModelConfig, loraScaling, type LinearModule } from '../../shared/config.ts';
import { decodeSafetensors } from '../../shared/formats/safetensors.ts';
import { adapterSpec, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase, loraBranches, withLora } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { computeGradients } from '../../shared/train/gradients.ts';

const dir = new URL('../fixtures/golden/', import.meta.url);
const meta = JSON.parse(readFileSync(new URL('llama-lora.json', dir), 'utf8'));
const { tensors } = decodeSafetensors(new Uint8Array(readFileSync(new URL('llama-lora.safetensors', dir))));
const get = (name: string) => tensors.get(name) ?? assert.fail(`fixture lacks ${name}`);
const config = checkModelConfig(meta.model_config);
const lora = checkLoraConfig({
  r: meta.lora.r,
  alpha: meta.lora.alpha,
  targetModules: meta.lora.target_modules as LinearModule[],
});
const spec = adapterSpec(config, lora);
const weights = new Map<string, tf.Tensor>();
for (const [name, t] of tensors)
  if (name.startsWith('model.') || name === 'lm_head.weight') weights.set(name, tf.tensor(t.data, t.shape));
const adapter: AdapterState = new Map(
  spec.map((t) => [t.name, get(`lora.${t.modulePath}.${t.which}`).data as Float32Array]),
);
const model = createModel(config);
const mb = {
  batch: meta.batch,
  time: meta.seq_len,
  dropoutSeed: 0,
  inputIds: get('input_ids').data as Int32Array,
  targets: get('targets').data as Int32Array,
  lossMask: get('loss_mask').data as Float32Array,
};

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const [label, plain] of [
  ['fast path', false],
  ['plain autodiff', true],
] as const) {
  test(`${label}: logits, loss and A/B gradients match PyTorch (≤ 1e-4)`, () => {
    const base = new FrozenBase(config, weights, plain);
    const logits = tf.tidy(() => {
      const branches = loraBranches(spec, (i) => tf.tensor2d(adapter.get(spec[i].name)!, spec[i].shape));
      return model
        .forward(withLora(base, branches, loraScaling(lora)), tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32'))
        .dataSync();
    });
    const logitDiff = maxDiff(logits, get('logits').data);
    assert.ok(logitDiff <= 1e-4, `logits differ by ${logitDiff}`);
    const result = computeGradients(model, base, spec, adapter, lora, mb);
    assert.equal(result.tokenCount, meta.token_count);
    assert.ok(
      Math.abs(result.lossSum - meta.loss_sum) <= 1e-4 * Math.abs(meta.loss_sum),
      `loss ${result.lossSum} vs ${meta.loss_sum}`,
    );
    assert.equal(result.grads.size, 2 * 7 * meta.model_config.num_hidden_layers);
    for (const t of spec) {
      const diff = maxDiff(result.grads.get(t.name)!, get(`grad.${t.modulePath}.${t.which}`).data);
      assert.ok(diff <= 1e-4, `${t.name}: gradient differs by ${diff}`);
    }
  });
}
