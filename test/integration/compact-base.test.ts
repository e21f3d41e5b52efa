// Quantize once, serve once: with a compact base format the coordinator quantizes the tiny model once
// (a cache miss), two worker processes fetch only that file by sha256, and the mesh ends with the very
// adapter of the in-process run on the same compact base, bit for bit, for int8 and nf4 with double
// quantization; the second run of a format reuses the cached file (no second quantization), a damaged
// cache entry is quantized again to the same bytes, and the compact run is not the float32 one.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import type { BaseFormatSpec } from '../../shared/quant/formats.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { COMPACT_CACHE_FOLDER } from '../../coordinator/io/compact-cache.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
const train = checkTrainConfig({ steps: 4, globalBatch: 8, microBatch: 2, lr: 1e-2, seed: 9 });
let root = '';
let cache = '';
let base: Omit<RunOptions, 'config' | 'log'>;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-compact-'));
  cache = join(root, 'cache');
  writeTinyModelDir(join(root, 'model'), 4);
  const model = await openModelDir(join(root, 'model'));
  base = {
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(64, 8, 9)),
    workerOutput: 'ignore',
    progress: false,
  };
});
after(() => rmSync(root, { recursive: true, force: true }));

/** A run and its log lines about the base. */
async function run(
  name: string,
  baseFormat: BaseFormatSpec | null,
  deployment: Partial<Deployment>,
): Promise<{ result: RunResult; lines: string[] }> {
  const lines: string[] = [];
  const result = await runTraining({
    ...base,
    log: (line) => line.startsWith('base: ') && lines.push(line),
    config: {
      run: { lora, train, baseFormat: baseFormat as never },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir: cache, runId: name, ...deployment },
    },
  });
  return { result, lines };
}

/** The cache's records: one per quantized base, with its sha256. */
const cached = () =>
  readdirSync(join(cache, COMPACT_CACHE_FOLDER))
    .filter((f) => f.endsWith('.json'))
    .map((f) => ({ key: f.slice(0, -5), ...JSON.parse(readFileSync(join(cache, COMPACT_CACHE_FOLDER, f), 'utf8')) }));

const inProcess = { inProcess: true, localWorkers: 0 };
/** each format's cache key, from its runs' log lines */
const keys = new Map<string, string>();

const FORMATS: [string, BaseFormatSpec][] = [
  ['int8', { format: 'int8', blockSize: 8 }],
  ['nf4-dq', { format: 'nf4', blockSize: 8, doubleQuant: true, doubleQuantBlockSize: 4 }],
];

for (const [label, format] of FORMATS) {
  test(`${label}: 2 worker processes on the compact file equal the in-process run bit for bit`, async () => {
    const reference = await run(`${label}-ref`, format, inProcess);
    assert.equal(reference.lines.length, 1, reference.lines.join('\n'));
    assert.match(reference.lines[0], /cache miss, quantized in \d+\.\d s/);
    const mesh = await run(`${label}-mesh`, format, { localWorkers: 2 });
    assert.equal(maxAbsDiff(mesh.result.adapter, reference.result.adapter), 0);
    assert.deepEqual(
      mesh.result.metrics.map((m) => m.loss),
      reference.result.metrics.map((m) => m.loss),
    );
    // the second run of the format took the cached file: no second quantization
    assert.equal(mesh.lines.length, 1, mesh.lines.join('\n'));
    assert.match(mesh.lines[0], /cache hit, verified in/);
    // the workers fetched the compact file, never the float32 checkpoint
    const entry = cached().find((c) => mesh.lines[0].includes(c.key))!;
    keys.set(label, entry.key);
    assert.ok(existsSync(join(cache, entry.sha256)), 'the compact file in the workers’ cache');
    const checkpoint = base.model.files.find((f) => f.name === 'model.safetensors')!;
    assert.equal(existsSync(join(cache, checkpoint.sha256)), false, 'the checkpoint never downloaded');
    assert.ok(entry.bytes < 0.6 * checkpoint.bytes, `${entry.bytes} bytes for a ${checkpoint.bytes}-byte checkpoint`);
    // run_config.json records the base format; resume keeps it
    const stored = JSON.parse(readFileSync(join(mesh.result.runDir, 'run_config.json'), 'utf8'));
    assert.equal(stored.baseFormat.format, format.format);
    if (label === 'int8') {
      // --recompute: every worker recomputes its blocks in the backward pass; the adapter is the same
      const recomputed = await run(`${label}-recompute`, format, { localWorkers: 2, recompute: true });
      assert.equal(maxAbsDiff(recomputed.result.adapter, reference.result.adapter), 0);
    }
  });
}

test('one cache entry per format; a damaged one is quantized again to the same bytes; float32 differs', async () => {
  const entries = cached();
  assert.equal(entries.length, FORMATS.length);
  const int8 = entries.find((e) => e.key === keys.get('int8'))!;
  const path = join(cache, COMPACT_CACHE_FOLDER, `${int8.key}.safetensors`);
  const bytes = readFileSync(path);
  bytes[bytes.length - 1] ^= 0xff;
  writeFileSync(path, bytes);
  const again = await run('damaged', FORMATS[0][1], inProcess);
  assert.match(again.lines.join('\n'), /does not match its record; quantizing again/);
  assert.match(again.lines.join('\n'), /cache miss, quantized/);
  assert.equal(cached().find((e) => e.key === int8.key)!.sha256, int8.sha256, 'deterministic: the same bytes');
  const float = await run('float', null, inProcess);
  assert.deepEqual(float.lines, [], 'a float32 run quantizes nothing');
  assert.ok(maxAbsDiff(float.result.adapter, again.result.adapter) > 0);
});
