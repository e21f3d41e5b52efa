// A frozen base held compact (shared/model/compact-base.ts) trains like the float32 base it
// dequantizes to: loss and every LoRA gradient of the compact path (compact kernels, custom
// gradients) equal plain autodiff on the dequantized float32 weights within 1e-5 relative
// (‖Δ‖_F / ‖ref‖_F), for Llama (untied), Qwen2 (q/k/v biases, tied) and GPT-2 (Conv1D weights
// stored (d_in, d_out), tied) in every format.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import '../../helpers/backend.ts';
import { checkLoraConfig, type LinearModule, type ModelConfig } from '../../../shared/config.ts';
import { adapterSpec, type AdapterState } from '../../../shared/lora/adapter.ts';
import { FrozenBase } from '../../../shared/lora/params.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { compactBase, compactTensorNames, dequantizedWeights } from '../../../shared/model/compact-base.ts';
import { CompactWeight } from '../../../shared/model/compact-linear.ts';
import type { BaseFormatSpec } from '../../../shared/quant/formats.ts';
import { Rng } from '../../../shared/rng.ts';
import { computeGradients } from '../../../shared/train/gradients.ts';
import { randomAdapter, randomMicroBatch } from '../../helpers/compact.ts';
import { randomWeights, tinyConfig, tinyGpt2Config } from '../../helpers/tiny-model.ts';
import { relativeL2Distance } from '../../../shared/train/relative-l2.ts';

const GPT2 = tinyGpt2Config();
const CONFIGS: [string, ModelConfig, LinearModule[]][] = [
  ['llama', tinyConfig(), ['q_proj', 'v_proj', 'down_proj']],
  ['qwen2', tinyConfig({ model_type: 'qwen2', tie_word_embeddings: true }), ['q_proj', 'k_proj', 'up_proj']],
  ['gpt2', GPT2, ['c_attn', 'c_proj', 'c_fc']],
];
const SPECS: BaseFormatSpec[] = [
  { format: 'f32' },
  { format: 'bf16' },
  { format: 'f16' },
  { format: 'int8', blockSize: 8 },
  { format: 'nf4', blockSize: 8 },
  { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 4 },
];

/** ‖a − b‖_F / ‖b‖_F */
const relative = (a: Float32Array, b: Float32Array) => relativeL2Distance([[b, a]]);

test('compact base: loss and LoRA gradients equal autodiff on the dequantized weights (≤ 1e-5 relative)', () => {
  let seed = 1;
  for (const [label, config, targets] of CONFIGS) {
    const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: targets });
    const spec = adapterSpec(config, lora);
    const rng = new Rng(seed++);
    const adapter: AdapterState = randomAdapter(spec, rng);
    const weights = randomWeights(config, seed++);
    const model = createModel(config);
    const mb = randomMicroBatch(config.vocab_size, seed++);
    for (const format of SPECS) {
      const what = `${label} ${JSON.stringify(format)}`;
      const compact = compactBase(config, weights, format);
      const compactCount = [...compact.values()].filter((w) => w instanceof CompactWeight).length;
      assert.equal(
        compactCount,
        compactTensorNames(config).size,
        `${what}: every linear and the embedding are compact`,
      );
      const fast = computeGradients(model, new FrozenBase(config, compact), spec, adapter, lora, mb);
      const plain = computeGradients(
        model,
        new FrozenBase(config, dequantizedWeights(config, weights, format), true),
        spec,
        adapter,
        lora,
        mb,
      );
      const lossGap = Math.abs(fast.lossSum - plain.lossSum) / Math.abs(plain.lossSum);
      assert.ok(lossGap <= 1e-5, `${what}: loss ${fast.lossSum} vs ${plain.lossSum}`);
      for (const t of spec) {
        const gap = relative(fast.grads.get(t.name)!, plain.grads.get(t.name)!);
        assert.ok(gap <= 1e-5, `${what} ${t.name}: gradient relative gap ${gap}`);
      }
      for (const w of compact.values()) if (w instanceof CompactWeight) w.dispose();
    }
  }
});
