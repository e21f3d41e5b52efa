// `loramesh merge` on a Hugging Face fixture folder that has no tokenizer (the tokenizer is read only
// by commands that need it): the merged folder keeps the base's tensor names and gives the float64
// reference's logits_merged (≤ 1e-4).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '../../helpers/backend.ts';
import { checkModelConfig } from '../../../shared/config.ts';
import { decodeSafetensors, readSafetensorsHeader } from '../../../shared/formats/safetensors.ts';
import { FrozenBase } from '../../../shared/lora/params.ts';
import { createModel } from '../../../shared/model/causal-lm.ts';
import { loadSafetensorsFiles } from '../../../node/load-weights.ts';
import { mergeCommand } from '../../../coordinator/commands/merge.ts';
import { writeGoldenAdapter } from '../../../scripts/interop/golden-adapter.ts';

const fixtures = fileURLToPath(new URL('../../fixtures/hf/', import.meta.url));
let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-merge-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

for (const name of ['gpt2', 'mistral']) {
  test(`${name}: merging the golden adapter into the tokenizer-less f32 folder gives logits_merged (≤ 1e-4)`, async () => {
    const base = join(fixtures, name, 'f32');
    const adapter = writeGoldenAdapter(join(fixtures, name), join(root, name, 'adapter'));
    const out = await mergeCommand({ model: base, adapter, out: join(root, name, 'merged') }, () => {});
    const names = (file: string) =>
      [...readSafetensorsHeader(new Uint8Array(readFileSync(file))).entries.keys()].sort();
    assert.deepEqual(names(join(out, 'model.safetensors')), names(join(base, 'model.safetensors')));
    const config = checkModelConfig(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')));
    const { weights } = loadSafetensorsFiles(config, [join(out, 'model.safetensors')]);
    const golden = decodeSafetensors(new Uint8Array(readFileSync(join(fixtures, name, 'golden.safetensors')))).tensors;
    const ids = golden.get('input_ids')!;
    const logits = tf.tidy(() =>
      createModel(config)
        .forward(new FrozenBase(config, weights), tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number]))
        .dataSync(),
    );
    const reference = golden.get('logits_merged')!.data;
    let d = 0;
    for (let i = 0; i < reference.length; i++) d = Math.max(d, Math.abs(logits[i] - reference[i]));
    assert.ok(d <= 1e-4, `max diff ${d}`);
  });
}
