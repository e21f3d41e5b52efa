// A distributed run on a Hugging Face-layout model (BF16 safetensors, SentencePiece-style
// tokenizer.json) and a prompt/completion JSONL file: workers fetch the base over HTTP and verify
// its sha256, eval loss goes down, PEFT files come out; the adapter merges into an HF directory
// that loads back with equal logits; a corrupted download is refused.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig, loraScaling } from '../../shared/config.ts';
import { encodeSafetensors, readSafetensorsHeader } from '../../shared/formats/safetensors.ts';
import { FrozenBase, loraBranches, withLora } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { LoraMeshError } from '../../shared/errors.ts';
import { loadJsonlDataset } from '../../coordinator/io/dataset.ts';
import { mergeCommand } from '../../coordinator/commands/merge.ts';
import { loadWeights, openModelDir } from '../../coordinator/io/model-dir.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { readAdapterDir } from '../../coordinator/io/adapter-io.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { fetchVerified } from '../../worker/node.ts';
import { sha256File } from '../../node/hash.ts';
import { randomArrays, tinyConfig } from '../helpers/tiny-model.ts';

const tokenizerFixture = fileURLToPath(new URL('../fixtures/tokenizers/sentencepiece-bpe/', import.meta.url));
const config = {
  ...tinyConfig({ vocab_size: 280, hidden_size: 32, intermediate_size: 64, max_position_embeddings: 64 }),
  bos_token_id: 1,
  eos_token_id: 2,
};
const arrays = randomArrays(config, 8, 0.2);
const words = ['hello', 'world', 'the', 'cat', 'sat', 'on', 'mat', 'a', 'dog', 'ran'];
const records = Array.from({ length: 60 }, (_, i) => ({
  prompt: `${words[i % 10]} ${words[(3 * i) % 10]} ->`,
  completion: ` ${words[(3 * i) % 10]} ${words[i % 10]}`,
}));

let root = '';
let modelDir = '';
/** An HF-layout model folder (BF16 weights, the SentencePiece-style tokenizer fixture) and data.jsonl next to it. */
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-hf-'));
  modelDir = join(root, 'model');
  mkdirSync(modelDir);
  writeFileSync(
    join(modelDir, 'config.json'),
    JSON.stringify({ architectures: ['LlamaForCausalLM'], ...config, torch_dtype: 'bfloat16' }),
  );
  writeFileSync(
    join(modelDir, 'model.safetensors'),
    encodeSafetensors(Object.fromEntries([...arrays].map(([n, a]) => [n, { ...a, dtype: 'BF16' as const }])), {
      format: 'pt',
    }),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    copyFileSync(join(tokenizerFixture, f), join(modelDir, f));
  writeFileSync(join(root, 'data.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + '\n');
});
after(() => rmSync(root, { recursive: true, force: true }));

test(
  'HF model + JSONL prompt/completion: 2 workers download and verify the base, ' +
    'eval loss decreases, PEFT files are written, merge loads back',
  async () => {
    const model = await openModelDir(modelDir);
    const data = loadJsonlDataset(join(root, 'data.jsonl'), model.tokenizer, {
      maxTokens: 32,
      mode: 'truncate',
      evalFraction: 0.2,
      seed: 1,
    });
    assert.equal(data.format, 'prompt-completion');
    assert.equal(data.eval.length, 12);
    const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
    const train = checkTrainConfig({ steps: 24, globalBatch: 8, microBatch: 4, lr: 1e-2, warmupSteps: 2, seed: 3 });
    const cacheDir = join(root, 'cache');
    const result = await runTraining({
      model,
      examples: data.train,
      evalExamples: data.eval,
      config: {
        run: { lora, train },
        deployment: {
          evalEvery: 8,
          outDir: join(root, 'runs'),
          runId: 'hf',
          localWorkers: 2,
          backend: 'wasm',
          cacheDir,
        },
      },
      workerOutput: 'ignore',
      progress: false,
      log: () => {},
    });
    // The workers fetched the BF16 weights over HTTP into their content-addressed cache.
    const weightFile = model.files.find((f) => f.name === 'model.safetensors')!;
    assert.ok(existsSync(join(cacheDir, weightFile.sha256)));
    assert.equal(await sha256File(join(cacheDir, weightFile.sha256)), weightFile.sha256);
    const losses = result.evalLosses.map((e) => e.loss);
    assert.deepEqual(
      result.evalLosses.map((e) => e.step),
      [0, 8, 16, 24],
    );
    assert.ok(losses[3] < losses[0] * 0.8, `eval loss ${losses.join(' → ')}`);
    const adapterDir = result.runDir;
    const peftConfig = JSON.parse(readFileSync(join(adapterDir, 'adapter_config.json'), 'utf8'));
    assert.equal(peftConfig.r, 4);
    assert.equal(peftConfig.fan_in_fan_out, false);
    const { entries } = readSafetensorsHeader(
      new Uint8Array(readFileSync(join(adapterDir, 'adapter_model.safetensors'))),
    );
    assert.equal(entries.size, 2 * 4 * config.num_hidden_layers);
    assert.deepEqual(entries.get('base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight')?.shape, [16, 4]);

    // PEFT import: the written adapter reads back exactly, and training continues from it (the
    // continued run's first eval equals the finished run's last one).
    const reread = readAdapterDir(adapterDir, model.config);
    assert.equal(maxAbsDiff(reread.state, result.adapter), 0);
    assert.deepEqual(reread.lora.targetModules, lora.targetModules);
    const continued = await runTraining({
      model,
      examples: data.train,
      evalExamples: data.eval,
      initialAdapter: reread.state,
      config: {
        run: { lora: reread.lora, train: { ...train, steps: 2 } },
        deployment: { outDir: join(root, 'runs'), runId: 'continued', inProcess: true, localWorkers: 0 },
      },
      progress: false,
      log: () => {},
    });
    assert.ok(
      Math.abs(continued.evalLosses[0].loss - losses[3]) <= 1e-6,
      `continued from ${continued.evalLosses[0].loss}, finished at ${losses[3]}`,
    );

    // Merge: same tensor names and dtype as the base, tokenizer copied, logits equal base + adapter.
    const mergedDir = await mergeCommand({ model: modelDir, adapter: adapterDir, out: join(root, 'merged') }, () => {});
    const merged = await openModelDir(mergedDir);
    const mergedHeader = readSafetensorsHeader(new Uint8Array(readFileSync(join(mergedDir, 'model.safetensors'))));
    assert.deepEqual([...mergedHeader.entries.keys()].sort(), [...arrays.keys()].sort());
    assert.ok([...mergedHeader.entries.values()].every((e) => e.dtype === 'BF16'));
    assert.ok(existsSync(join(mergedDir, 'tokenizer.json')) && existsSync(join(mergedDir, 'tokenizer_config.json')));
    const lm = createModel(model.config);
    const ids = tf.tensor2d([data.eval[0].tokens.slice(0, 8)], [1, 8], 'int32');
    const spec = [...result.adapter.keys()].map((name) => ({
      name,
      modulePath: name.replace(/\.lora_[AB]$/, ''),
      which: name.endsWith('A') ? ('A' as const) : ('B' as const),
    }));
    const shapes = new Map(
      spec.map((t) => [
        t.name,
        t.which === 'A' ? [4, result.adapter.get(t.name)!.length / 4] : [result.adapter.get(t.name)!.length / 4, 4],
      ]),
    );
    const unmerged = lm
      .forward(
        withLora(
          new FrozenBase(model.config, loadWeights(model).weights),
          loraBranches(spec, (i) =>
            tf.tensor2d(result.adapter.get(spec[i].name)!, shapes.get(spec[i].name) as [number, number]),
          ),
          loraScaling(lora),
        ),
        ids,
      )
      .dataSync();
    const reloaded = lm.forward(new FrozenBase(merged.config, loadWeights(merged).weights), ids).dataSync();
    let diff = 0;
    for (let i = 0; i < unmerged.length; i++) diff = Math.max(diff, Math.abs(unmerged[i] - reloaded[i]));
    // The merged weights are rounded back to BF16 like the base: the bound is BF16's, not float32's.
    assert.ok(diff < 0.05, `merged BF16 model logits differ by ${diff}`);
  },
);

test('unsupported architectures and missing tensors are named in the error', async () => {
  const bad = join(root, 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'config.json'), JSON.stringify({ model_type: 'falcon', vocab_size: 10 }));
  await assert.rejects(
    openModelDir(bad),
    (e: unknown) =>
      e instanceof LoraMeshError && e.code === 'LM_ERR_MODEL' && /model_type "falcon" is not supported/.test(e.message),
  );
  const partial = join(root, 'partial');
  mkdirSync(partial);
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json'])
    copyFileSync(join(modelDir, f), join(partial, f));
  const withoutNorm = Object.fromEntries([...arrays].filter(([n]) => n !== 'model.norm.weight'));
  writeFileSync(join(partial, 'model.safetensors'), encodeSafetensors(withoutNorm));
  const opened = await openModelDir(partial);
  assert.throws(
    () => loadWeights(opened),
    (e: unknown) => e instanceof LoraMeshError && /missing tensor model\.norm\.weight/.test(e.message),
  );
});

test(
  'a download whose sha256 does not match the manifest is refused with LM_ERR_HASH, ' +
    'and a corrupt cache entry is replaced',
  async () => {
    const good = new Uint8Array([1, 2, 3, 4]);
    let served: Uint8Array = new Uint8Array([1, 2, 3, 5]);
    const server = createServer((_req, res) => res.end(served));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const cacheDir = join(root, 'cache2');
    const { createHash } = await import('node:crypto');
    const file = { name: 'model.safetensors', sha256: createHash('sha256').update(good).digest('hex'), bytes: 4 };
    await assert.rejects(
      fetchVerified(origin, file, cacheDir, () => {}),
      (e: unknown) => e instanceof LoraMeshError && e.code === 'LM_ERR_HASH' && /does not match/.test(e.message),
    );
    assert.ok(!existsSync(join(cacheDir, file.sha256)), 'a bad download must not enter the cache');
    served = good;
    const path = await fetchVerified(origin, file, cacheDir, () => {});
    assert.deepEqual(new Uint8Array(readFileSync(path)), good);
    writeFileSync(path, new Uint8Array([9, 9, 9, 9])); // corrupt the cache entry
    const lines: string[] = [];
    await fetchVerified(origin, file, cacheDir, (l) => lines.push(l));
    assert.deepEqual(new Uint8Array(readFileSync(path)), good);
    assert.ok(lines.some((l) => /corrupt/.test(l)));
    server.close();
  },
);
