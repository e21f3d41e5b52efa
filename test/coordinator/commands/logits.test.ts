// `loramesh logits` on the Hugging Face fixtures with their golden LoRA written as PEFT adapters: the
// logits are the float64 reference's logits_lora (≤ 1e-4), the greedy tokens are those of a full
// recompute without the KV cache (exactly, past mistral's window too), a compact base adds
// logits_compact, and bad flags are refused with LM_ERR_CONFIG naming the flag, value and expectation.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '../../helpers/backend.ts';
import { checkModelConfig } from '../../../shared/config.ts';
import { decodeSafetensors } from '../../../shared/formats/safetensors.ts';
import { FrozenBase, withAdapter } from '../../../shared/lora/params.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { loadSafetensorsFiles } from '../../../node/load-weights.ts';
import { logitsCommand, type LogitsOptions } from '../../../coordinator/commands/logits.ts';
import { readAdapterDir } from '../../../coordinator/io/adapter-io.ts';
import { writeGoldenAdapter } from '../../../scripts/interop/golden-adapter.ts';

const fixtures = fileURLToPath(new URL('../../fixtures/hf/', import.meta.url));
const cli = fileURLToPath(new URL('../../../coordinator/cli.ts', import.meta.url));
const quiet = () => {};
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-logits-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const golden = (name: string) =>
  decodeSafetensors(new Uint8Array(readFileSync(join(fixtures, name, 'golden.safetensors')))).tensors;

/** The golden input rows (B = 2, T = 8) as prompts. */
function goldenPrompts(name: string): number[][] {
  const ids = golden(name).get('input_ids')!;
  const [rows, time] = ids.shape;
  return Array.from({ length: rows }, (_, b) => Array.from(ids.data.subarray(b * time, (b + 1) * time)));
}

async function runLogits(name: string, options: Partial<LogitsOptions> = {}) {
  const adapter = writeGoldenAdapter(join(fixtures, name), join(root, name, 'adapter'));
  const out = join(root, name, `ref-${Math.random().toString(36).slice(2)}.safetensors`);
  await logitsCommand(
    { model: join(fixtures, name, 'f32'), adapter, promptIds: goldenPrompts(name), greedyTokens: 8, out, ...options },
    quiet,
  );
  return { adapter, ...decodeSafetensors(new Uint8Array(readFileSync(out))) };
}

for (const name of ['llama-tied-gqa', 'qwen2', 'gpt2', 'mistral']) {
  test(`${name}: logits of the golden prompts with the golden adapter equal the reference's logits_lora (≤ 1e-4)`, async () => {
    const { tensors, metadata } = await runLogits(name);
    const reference = golden(name).get('logits_lora')!;
    const [, time, vocab] = reference.shape;
    for (const k of [0, 1]) {
      const logits = tensors.get(`logits.${k}`)!;
      assert.deepEqual(logits.shape, [1, time, vocab]);
      const d = maxDiff(logits.data, reference.data.subarray(k * time * vocab, (k + 1) * time * vocab));
      assert.ok(d <= 1e-4, `prompt ${k}: max diff ${d}`);
      assert.deepEqual(tensors.get(`input_ids.${k}`)!.shape, [1, time]);
      assert.equal(tensors.get(`greedy.${k}`)!.dtype, 'I32');
      assert.deepEqual(tensors.get(`greedy.${k}`)!.shape, [8]);
    }
    assert.equal(tensors.has('logits_compact.0'), false);
    assert.equal(metadata.base_format, 'f32');
    assert.equal(metadata.greedy_tokens, '8');
    assert.equal(metadata.prompts, '2');
    assert.equal(metadata.generator, 'loramesh logits');
  });
}

// The KV-cached greedy path against argmax of a full forward per token; 8 + 8 positions run past the window of 4.
test('mistral: greedy tokens equal a full recompute per token (no KV cache), exactly', async () => {
  const { tensors, adapter } = await runLogits('mistral');
  const dir = join(fixtures, 'mistral', 'f32');
  const config = checkModelConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
  const base = new FrozenBase(config, loadSafetensorsFiles(config, [join(dir, 'model.safetensors')]).weights);
  const model = createModel(config);
  const loaded = readAdapterDir(adapter, config);
  goldenPrompts('mistral').forEach((prompt, k) => {
    const sequence = [...prompt];
    withAdapter(base, loaded.state, loaded.lora, (params) => {
      for (let step = 0; step < 8; step++) {
        const last = tf.tidy(() => {
          const logits = model.forward(params, tf.tensor2d(sequence, [1, sequence.length], 'int32'));
          return tf.argMax(tf.slice(logits, [sequence.length - 1, 0], [1, -1]), 1).dataSync()[0];
        });
        sequence.push(last);
      }
    });
    assert.deepEqual(Array.from(tensors.get(`greedy.${k}`)!.data), sequence.slice(prompt.length), `prompt ${k}`);
  });
});

test('a run folder recording an nf4 base adds logits_compact.k, which differ from the float-base logits', async () => {
  const adapter = writeGoldenAdapter(join(fixtures, 'qwen2'), join(root, 'qwen2-nf4'));
  writeFileSync(
    join(adapter, 'run_config.json'),
    JSON.stringify({ baseFormat: { format: 'nf4', blockSize: 32, doubleQuant: false } }),
  );
  const { tensors, metadata } = await runLogits('qwen2', { adapter });
  assert.equal(metadata.base_format, 'nf4/32');
  assert.match(metadata.base_format_source, /run_config\.json$/);
  const gap = maxDiff(tensors.get('logits_compact.0')!.data, tensors.get('logits.0')!.data);
  assert.ok(gap > 1e-3, `nf4 moved the logits by only ${gap}`);
  assert.deepEqual(tensors.get('logits_compact.1')!.shape, tensors.get('logits.1')!.shape);
});

test('bad inputs are refused with LM_ERR_CONFIG naming the flag, the value and what was expected', async () => {
  const model = join(fixtures, 'gpt2', 'f32');
  const out = join(root, 'bad.safetensors');
  const refused = (options: Partial<LogitsOptions>, pattern: RegExp) =>
    assert.rejects(
      logitsCommand({ model, promptIds: [[1, 2, 3]], greedyTokens: 8, out, ...options }, quiet),
      (err: Error & { code?: string }) => err.code === 'LM_ERR_CONFIG' && pattern.test(err.message),
    );
  await refused(
    {
      promptIds: [
        [1, 2],
        [5, 64],
      ],
    },
    /--prompt-ids 5,64 \(prompt 1\): token id 64 is outside the vocabulary \[0, 63\] of config.vocab_size 64/,
  );
  await refused(
    { greedyTokens: 62 },
    /--prompt-ids \(prompt 0, 3 tokens\) plus --greedy-tokens 62 is 65 positions; the model's context is 64/,
  );
  await refused({ promptIds: [] }, /--prompt-ids: expected at least one prompt/);
  await refused({ greedyTokens: 0 }, /--greedy-tokens should be an integer ≥ 1, got 0/);
  await refused({ out: root }, /--out .* is a directory; expected a file path/);
  const adapter = writeGoldenAdapter(join(fixtures, 'gpt2'), join(root, 'gpt2-int8'));
  writeFileSync(join(adapter, 'run_config.json'), JSON.stringify({ baseFormat: { format: 'int8' } }));
  await refused({ adapter, baseFormat: 'nf4' }, /--base-format nf4 contradicts .*run_config\.json.*baseFormat int8/);
});

test('CLI: a malformed --prompt-ids is one coded line, exit 2', () => {
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      cli,
      'logits',
      '--model',
      join(fixtures, 'gpt2', 'f32'),
      '--prompt-ids',
      '1,x',
      '--out',
      join(root, 'o'),
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr.trim(), /^loramesh: LM_ERR_CONFIG: option '--prompt-ids <ids>' argument '1,x' is invalid/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});
