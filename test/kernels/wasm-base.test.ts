// A frozen base on wasm (shared/model/compact-base.ts, baseForKernels): its float32 matrices are held
// as compact f32, so every frozen product runs kernels/c/compact-gemm.c in the selected arithmetic
// variant, and a LoRA step's loss and gradients equal the float32 XNNPACK path (FrozenBase on the
// plain tensors) within 1e-5 relative (‖Δ‖_F / ‖ref‖_F), with the same bits twice, in both variants.
// Other backends keep the base as it is.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { initBackend } from '../../node/backend.ts';
import { selectArithmetic } from '../../kernels/arithmetic.ts';
import { checkLoraConfig, type LinearModule, type ModelConfig } from '../../shared/config.ts';
import { adapterSpec, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { baseForKernels, compactTensorNames } from '../../shared/model/compact-base.ts';
import { CompactWeight } from '../../shared/model/compact-linear.ts';
import { Rng } from '../../shared/rng.ts';
import { computeGradients } from '../../shared/train/gradients.ts';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';
import { randomAdapter, randomMicroBatch } from '../helpers/compact.ts';
import { randomWeights, tinyConfig, tinyGpt2Config } from '../helpers/tiny-model.ts';

await initBackend('wasm');

/** ‖a − b‖_F / ‖b‖_F */
const relative = (a: Float32Array, b: Float32Array) => relativeL2Distance([[b, a]]);

const CONFIGS: [string, ModelConfig, LinearModule[]][] = [
  ['llama', tinyConfig(), ['q_proj', 'v_proj', 'down_proj']],
  ['gpt2', tinyGpt2Config(), ['c_attn', 'c_proj', 'c_fc']],
];

test('on cpu the base is left as it is', async () => {
  await tf.setBackend('cpu');
  try {
    const config = tinyConfig();
    const weights = randomWeights(config, 1);
    assert.equal(baseForKernels(config, weights), weights);
    tf.dispose([...weights.values()] as tf.Tensor[]);
  } finally {
    await tf.setBackend('wasm');
  }
});

for (const variant of ['simd128', 'relaxed-fma'] as const)
  test(`wasm base (${variant}): float32 matrices held as compact f32; loss and LoRA gradients within 1e-5 of XNNPACK`, () => {
    let seed = 11;
    for (const [label, config, targets] of CONFIGS) {
      const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: targets });
      const spec = adapterSpec(config, lora);
      const rng = new Rng(seed++);
      const adapter: AdapterState = randomAdapter(spec, rng);
      const weights = randomWeights(config, seed++);
      const model = createModel(config);
      const mb = randomMicroBatch(config.vocab_size, seed++);
      const reference = computeGradients(model, new FrozenBase(config, weights), spec, adapter, lora, mb);

      const handed = new Map([...weights].map(([name, t]) => [name, tf.clone(t as tf.Tensor)]));
      const relaxed = baseForKernels(config, handed);
      assert.equal(baseForKernels(config, handed), relaxed, `${label}: a shared base converts once`);
      const compact = [...relaxed].filter(([, w]) => w instanceof CompactWeight);
      assert.deepEqual(compact.map(([name]) => name).sort(), [...compactTensorNames(config).keys()].sort(), label);
      assert.ok(
        compact.every(([name, w]) => (w as CompactWeight).spec.format === 'f32' && handed.get(name)!.isDisposed),
        `${label}: f32, the float32 tensors handed over are disposed`,
      );
      selectArithmetic(variant);
      try {
        const base = new FrozenBase(config, relaxed);
        const fused = computeGradients(model, base, spec, adapter, lora, mb);
        const again = computeGradients(model, base, spec, adapter, lora, mb);
        const lossGap = Math.abs(fused.lossSum - reference.lossSum) / Math.abs(reference.lossSum);
        assert.ok(lossGap <= 1e-6, `${label}: loss ${fused.lossSum} vs ${reference.lossSum}`);
        assert.equal(again.lossSum, fused.lossSum, `${label}: same loss twice`);
        for (const t of spec) {
          const gap = relative(fused.grads.get(t.name)!, reference.grads.get(t.name)!);
          assert.ok(gap <= 1e-5, `${label} ${t.name}: gradient relative gap ${gap}`);
          assert.deepEqual(again.grads.get(t.name), fused.grads.get(t.name), `${label} ${t.name}: same bits twice`);
        }
      } finally {
        selectArithmetic('simd128');
      }
      for (const w of relaxed.values()) w.dispose();
      tf.dispose([...weights.values()] as tf.Tensor[]);
    }
  });
