// Hugging Face checkpoints against independent PyTorch references (scripts/reference/
// gen_hf_golden.py, float64): a tied GQA Llama, a Qwen2 with q/k/v biases and linear RoPE
// scaling, a GPT-2 with Conv1D weights and a Mistral with a sliding window (4 < T = 8), loaded
// from F32, BF16 and sharded files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { checkLoraConfig, checkModelConfig, loraScaling, type LinearModule } from '../../shared/config.ts';
import { peftAdapterConfig, peftKey } from '../../shared/formats/peft.ts';
import { decodeSafetensors } from '../../shared/formats/safetensors.ts';
import { adapterSpec, fanInFanOut, mergeAdapter, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase, loraBranches, withLora } from '../../shared/lora/params.ts';
import { createModel, type ParamSource } from '../../shared/model/causal-lm.ts';
import { computeGradients } from '../../shared/train/gradients.ts';
import { loadSafetensorsFiles } from '../../node/load-weights.ts';

const root = fileURLToPath(new URL('../fixtures/hf/', import.meta.url));

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const name of ['llama-tied-gqa', 'qwen2', 'gpt2', 'mistral']) {
  const dir = join(root, name);
  const meta = JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8'));
  const golden = decodeSafetensors(new Uint8Array(readFileSync(join(dir, 'golden.safetensors')))).tensors;
  const get = (key: string) => golden.get(key)?.data ?? assert.fail(`${name}: golden lacks ${key}`);
  const load = (variant: string, files = ['model.safetensors']) => {
    const config = checkModelConfig(JSON.parse(readFileSync(join(dir, variant, 'config.json'), 'utf8')));
    return {
      config,
      weights: loadSafetensorsFiles(
        config,
        files.map((f) => join(dir, variant, f)),
      ).weights,
    };
  };
  const { config, weights } = load('f32');
  const model = createModel(config);
  const lora = checkLoraConfig({
    r: meta.lora.r,
    alpha: meta.lora.alpha,
    targetModules: meta.lora.target_modules as LinearModule[],
  });
  const spec = adapterSpec(config, lora);
  const adapter: AdapterState = new Map(
    spec.map((t) => [t.name, get(`lora.${t.modulePath}.${t.which}`) as Float32Array]),
  );
  const mb = {
    batch: meta.batch,
    time: meta.seq_len,
    dropoutSeed: 0,
    inputIds: get('input_ids') as Int32Array,
    targets: get('targets') as Int32Array,
    lossMask: get('loss_mask') as Float32Array,
  };
  const logitsOf = (params: ParamSource) =>
    tf.tidy(() => model.forward(params, tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32')).dataSync());
  const withAdapter = (base: FrozenBase) =>
    withLora(
      base,
      loraBranches(spec, (i) => tf.tensor2d(adapter.get(spec[i].name)!, spec[i].shape)),
      loraScaling(lora),
    );

  test(`${name}: F32 checkpoint logits match PyTorch (≤ 1e-4)`, () => {
    const d = maxDiff(logitsOf(new FrozenBase(config, weights)), get('logits_f32'));
    assert.ok(d <= 1e-4, `max diff ${d}`);
  });

  test(`${name}: BF16 checkpoint loads as float32 and matches PyTorch on the same BF16 values (≤ 1e-4)`, () => {
    const bf16 = load('bf16');
    const d = maxDiff(logitsOf(new FrozenBase(bf16.config, bf16.weights)), get('logits_bf16'));
    assert.ok(d <= 1e-4, `max diff ${d}`);
  });

  // Gradients reach |g| ≈ 30 here, where float32 itself resolves ~2e-6: the bound is 1e-4 of the
  // tensor's scale, max(1, max|g|), i.e. absolute 1e-4 for unit-sized gradients.
  test(`${name}: LoRA logits and A/B gradients match PyTorch (≤ 1e-4, relative to scale)`, () => {
    const base = new FrozenBase(config, weights);
    const d = maxDiff(logitsOf(withAdapter(base)), get('logits_lora'));
    assert.ok(d <= 1e-4, `logits differ by ${d}`);
    const result = computeGradients(model, base, spec, adapter, lora, mb);
    assert.ok(
      Math.abs(result.lossSum - meta.loss_sum) <= 1e-4 * Math.abs(meta.loss_sum),
      `loss ${result.lossSum} vs ${meta.loss_sum}`,
    );
    assert.equal(result.grads.size, 2 * meta.lora_modules.length);
    for (const t of spec) {
      const reference = get(`grad.${t.modulePath}.${t.which}`);
      const scale = Math.max(1, ...Array.from(reference, Math.abs));
      const g = maxDiff(result.grads.get(t.name)!, reference);
      assert.ok(g <= 1e-4 * scale, `${t.name}: gradient differs by ${g} (scale ${scale})`);
    }
  });

  test(`${name}: merged model logits equal base + adapter logits (≤ 1e-5)`, () => {
    const unmerged = logitsOf(withAdapter(new FrozenBase(config, weights)));
    const merged = logitsOf(new FrozenBase(config, mergeAdapter(config, weights, spec, adapter, lora)));
    const d = maxDiff(merged, unmerged);
    assert.ok(d <= 1e-5, `max diff ${d}`);
  });

  test(`${name}: PEFT keys, shapes and config fields match what PEFT writes`, () => {
    const keys = spec
      .map((t) => ({ key: peftKey(t.modulePath, t.which), shape: t.shape }))
      .sort((a, b) => a.key.localeCompare(b.key));
    const expected = [...meta.peft_keys].sort((a: { key: string }, b: { key: string }) => a.key.localeCompare(b.key));
    assert.deepEqual(keys, expected);
    const written = peftAdapterConfig(lora, 'base', fanInFanOut(config, lora)) as unknown as Record<string, unknown>;
    for (const [field, value] of Object.entries(meta.peft_config))
      assert.deepEqual(written[field], value, `adapter_config.${field}`);
  });
}

// The window must be what makes mistral match: without it the same weights give other logits.
test('mistral: the sliding window is applied (ignoring it moves the logits by > 1e-2)', () => {
  const dir = join(root, 'mistral');
  const raw = JSON.parse(readFileSync(join(dir, 'f32', 'config.json'), 'utf8'));
  assert.equal(raw.sliding_window, 4);
  const golden = decodeSafetensors(new Uint8Array(readFileSync(join(dir, 'golden.safetensors')))).tensors;
  const ids = golden.get('input_ids')!;
  const logitsWith = (sliding_window: number | null) => {
    const config = checkModelConfig({ ...raw, sliding_window });
    const { weights } = loadSafetensorsFiles(config, [join(dir, 'f32', 'model.safetensors')]);
    return tf.tidy(() =>
      createModel(config)
        .forward(new FrozenBase(config, weights), tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number]))
        .dataSync(),
    );
  };
  const reference = golden.get('logits_f32')!.data;
  assert.ok(maxDiff(logitsWith(4), reference) <= 1e-4);
  const withoutWindow = maxDiff(logitsWith(null), reference);
  assert.ok(withoutWindow > 1e-2, `ignoring the window changes the logits by only ${withoutWindow}`);
});

test('llama-tied-gqa: a sharded checkpoint (index + 2 files) loads the same tensors as the single file', () => {
  const dir = join(root, 'llama-tied-gqa');
  const config = checkModelConfig(JSON.parse(readFileSync(join(dir, 'sharded', 'config.json'), 'utf8')));
  const index = JSON.parse(readFileSync(join(dir, 'sharded', 'model.safetensors.index.json'), 'utf8'));
  const files = [...new Set(Object.values(index.weight_map) as string[])].sort();
  const sharded = loadSafetensorsFiles(
    config,
    files.map((f) => join(dir, 'sharded', f)),
  );
  const single = loadSafetensorsFiles(config, [join(dir, 'f32', 'model.safetensors')]);
  assert.equal(sharded.weights.size, single.weights.size);
  for (const [n, t] of single.weights) assert.equal(maxDiff(sharded.weights.get(n)!.dataSync(), t.dataSync()), 0, n);
  assert.equal(new Set([...sharded.stored.values()].map((s) => s.file)).size, 2);
});
