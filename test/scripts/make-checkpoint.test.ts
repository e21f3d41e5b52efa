// scripts/make-checkpoint.ts: the tiny shape written and opened the way a run opens a model (openModelDir,
// loadWeights), its values, determinism, shards, dtypes and refusals; the real shapes' configs checked
// against their published parameter counts (their weights are only written by hand: see the script).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import '../helpers/backend.ts';
import { loadWeights, openModelDir } from '../../coordinator/io/model-dir.ts';
import { SHAPE_NAMES, SHAPES, shapeConfig, TOKENIZER_FIXTURE, writeCheckpoint } from '../../scripts/make-checkpoint.ts';
import { checkModelConfig } from '../../shared/config.ts';
import { ErrorCodes } from '../../shared/errors.ts';
import { readSafetensorsHeader } from '../../shared/formats/safetensors.ts';
import { parameterShapes } from '../../shared/model/causal-lm.ts';
import { throwsCode } from '../helpers/assert.ts';

const root = mkdtempSync(join(tmpdir(), 'loramesh-make-checkpoint-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = () => join(root, `out-${dirs++}`);

const count = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const header = (path: string) => {
  const bytes = readFileSync(path);
  return readSafetensorsHeader(bytes.subarray(0, 8 + Number(bytes.readBigUInt64LE(0))), bytes.length);
};

test('the tiny shape opens with openModelDir: config, tokenizer, every parameter at its configured shape', async () => {
  const lines: string[] = [];
  const out = freshDir();
  const written = writeCheckpoint({ shape: 'tiny', out, seed: 3, log: (l) => lines.push(l) });
  const model = await openModelDir(out);

  assert.deepEqual(model.config, checkModelConfig(shapeConfig('tiny')));
  assert.equal(model.rawConfig.torch_dtype, 'bfloat16');
  assert.deepEqual(
    model.files.map((f) => f.name),
    ['config.json', 'model.safetensors'],
  );
  assert.deepEqual(model.extraFiles, ['tokenizer.json', 'tokenizer_config.json']);
  assert.equal(model.tokenizer.vocabSize, 267); // the byte-BPE fixture, below config.vocab_size
  assert.ok(model.config.vocab_size > model.tokenizer.vocabSize);
  assert.equal(
    readFileSync(join(out, 'tokenizer.json'), 'utf8'),
    readFileSync(join(TOKENIZER_FIXTURE, 'tokenizer.json'), 'utf8'),
  );

  const shapes = parameterShapes(model.config);
  const parameters = [...shapes.values()].reduce((n, s) => n + count(s), 0);
  assert.equal(parameters, 1_263_744);
  assert.equal(written.parameters, parameters);
  const file = model.files[1];
  assert.equal(written.weightBytes, file.bytes);
  assert.ok(file.bytes > 2 * parameters && file.bytes < 2 * parameters + 20_000); // bf16 plus the header
  assert.match(lines.at(-1)!, new RegExp(`${file.bytes.toLocaleString('en')} bytes of weights`));

  const { entries } = header(file.path);
  assert.deepEqual([...entries.keys()], [...shapes.keys()].sort());
  for (const [name, entry] of entries) {
    assert.equal(entry.dtype, 'BF16');
    assert.deepEqual(entry.shape, shapes.get(name));
  }

  const { weights } = loadWeights(model);
  assert.equal(weights.size, shapes.size);
  for (const [name, shape] of shapes) assert.deepEqual(weights.get(name)!.shape, shape, name);
  const values = (name: string) => weights.get(name)!.dataSync() as Float32Array;
  assert.ok(values('model.norm.weight').every((v) => v === 1));
  assert.ok(values('model.layers.0.self_attn.q_proj.bias').every((v) => v === 0));
  const embedding = values('model.embed_tokens.weight');
  const std = Math.sqrt(embedding.reduce((s, v) => s + v * v, 0) / embedding.length);
  assert.ok(Math.abs(std - 0.02) < 0.0005, `embedding std ${std}`); // initializer_range
  for (const t of weights.values()) t.dispose();
});

test('the bytes depend only on shape, seed and dtype; shards hold the same tensors', async () => {
  const [a, b, c] = [freshDir(), freshDir(), freshDir()];
  writeCheckpoint({ shape: 'tiny', out: a, seed: 7 });
  writeCheckpoint({ shape: 'tiny', out: b, seed: 7 });
  writeCheckpoint({ shape: 'tiny', out: c, seed: 8 });
  const hashOf = async (dir: string) => (await openModelDir(dir)).files[1].sha256;
  assert.equal(await hashOf(a), await hashOf(b));
  assert.notEqual(await hashOf(a), await hashOf(c));

  const sharded = freshDir();
  const written = writeCheckpoint({ shape: 'tiny', out: sharded, seed: 7, maxShardBytes: 1_000_000 });
  assert.equal(written.weightFiles.length, 3);
  const model = await openModelDir(sharded);
  assert.deepEqual(
    model.files.map((f) => f.name),
    [
      'config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ],
  );
  const index = JSON.parse(readFileSync(join(sharded, 'model.safetensors.index.json'), 'utf8'));
  const shapes = parameterShapes(model.config);
  assert.deepEqual(Object.keys(index.weight_map).sort(), [...shapes.keys()].sort());
  assert.equal(index.metadata.total_size, 2 * written.parameters);
  const whole = loadWeights(await openModelDir(a)).weights;
  const split = loadWeights(model).weights;
  for (const [name, t] of whole) assert.deepEqual(split.get(name)!.dataSync(), t.dataSync(), name);
  for (const t of [...whole.values(), ...split.values()]) t.dispose();
});

test('--dtype f32 writes F32 tensors and torch_dtype float32; the same values as bf16, unrounded', async () => {
  const [f32, bf16] = [freshDir(), freshDir()];
  writeCheckpoint({ shape: 'tiny', out: f32, dtype: 'f32' });
  writeCheckpoint({ shape: 'tiny', out: bf16, dtype: 'bf16' });
  const model = await openModelDir(f32);
  assert.equal(model.rawConfig.torch_dtype, 'float32');
  for (const entry of header(model.files[1].path).entries.values()) assert.equal(entry.dtype, 'F32');
  const name = 'model.layers.1.mlp.down_proj.weight';
  const wide = loadWeights(model).weights;
  const narrow = loadWeights(await openModelDir(bf16)).weights;
  const [x, y] = [wide.get(name)!.dataSync(), narrow.get(name)!.dataSync()];
  for (let i = 0; i < x.length; i += 97) assert.ok(Math.abs(x[i] - y[i]) <= Math.abs(x[i]) / 128, `${i}`);
  for (const t of [...wide.values(), ...narrow.values()]) t.dispose();
});

test('the real shapes are the published configs: they pass the config check with their parameter counts', () => {
  const published: Record<string, number> = {
    'qwen2.5-0.5b': 494_032_768,
    'smollm2-360m': 361_821_120,
    'llama-3.2-1b': 1_235_814_400,
  };
  for (const [shape, parameters] of Object.entries(published)) {
    const config = checkModelConfig(shapeConfig(shape as keyof typeof SHAPES));
    const total = [...parameterShapes(config).values()].reduce((n, s) => n + count(s), 0);
    assert.equal(total, parameters, shape);
  }
  const llama = checkModelConfig(SHAPES['llama-3.2-1b']);
  assert.equal(llama.model_type === 'llama' && llama.rope_scaling?.rope_type, 'llama3');
  const qwen = checkModelConfig(SHAPES['qwen2.5-0.5b']);
  assert.ok(qwen.model_type === 'qwen2' && qwen.sliding_window === null);
  assert.deepEqual(SHAPE_NAMES, ['qwen2.5-0.5b', 'smollm2-360m', 'llama-3.2-1b', 'tiny']);
});

test('refuses a bad shape, seed or dtype and a non-empty --out without --force; --force replaces weights', () => {
  const out = freshDir();
  throwsCode(() => writeCheckpoint({ shape: 'gpt-5' as never, out }), ErrorCodes.CONFIG, /--shape "gpt-5"/);
  throwsCode(() => writeCheckpoint({ shape: 'tiny', out, seed: -1 }), ErrorCodes.CONFIG, /--seed/);
  throwsCode(() => writeCheckpoint({ shape: 'tiny', out, dtype: 'f16' as never }), ErrorCodes.CONFIG, /--dtype/);
  assert.equal(existsSync(out), false);
  writeCheckpoint({ shape: 'tiny', out });
  writeFileSync(join(out, 'notes.txt'), 'mine');
  throwsCode(() => writeCheckpoint({ shape: 'tiny', out }), ErrorCodes.CONFIG, /not empty; pass --force/);
  writeCheckpoint({ shape: 'tiny', out, force: true, seed: 1, maxShardBytes: 1_000_000 });
  assert.equal(readFileSync(join(out, 'notes.txt'), 'utf8'), 'mine');
  assert.equal(existsSync(join(out, 'model.safetensors')), false); // replaced by shards
  writeCheckpoint({ shape: 'tiny', out, force: true, seed: 1 });
  assert.equal(existsSync(join(out, 'model.safetensors.index.json')), false); // no stale index
  assert.equal(existsSync(join(out, 'model-00001-of-00003.safetensors')), false);
});

test('the command line: writes a checkpoint and prints the bytes; exit 2 with usage on bad flags', () => {
  const script = join(import.meta.dirname, '../../scripts/make-checkpoint.ts');
  const run = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', script, ...args], { encoding: 'utf8' });
  const out = freshDir();
  const ok = run('--shape', 'tiny', '--out', out, '--seed', '2', '--dtype', 'f32');
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /^tiny: 1,263,744 parameters, 5\.1 MB of f32 weights in 1 file, seed 2/);
  assert.match(ok.stdout, /wrote .*: 5,\d{3},\d{3} bytes of weights \(5\.1 MB\)/);
  const usage = run('--shape', 'tiny');
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /^usage: npx tsx scripts\/make-checkpoint\.ts --shape qwen2\.5-0\.5b\|/);
  const bad = run('--shape', 'huge', '--out', freshDir());
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /LM_ERR_CONFIG: --shape "huge" is not one of/);
});
