// Distributed == single process: a coordinator with 1, 2 and 3 worker processes over loopback
// WebSockets ends 20 steps with the same adapter as the in-process reference (max abs diff ≤ 1e-6).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { decodeSafetensors } from '../../shared/formats/safetensors.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { maxAbsDiff } from '../../shared/lora/adapter.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
const train = checkTrainConfig({ steps: 20, globalBatch: 8, microBatch: 2, lr: 1e-2, warmupSteps: 2, seed: 5 });
let root = '';
let base: Omit<RunOptions, 'config'>;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-dist-'));
  writeTinyModelDir(join(root, 'model'), 3);
  const model = await openModelDir(join(root, 'model'));
  base = {
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(64, 8, 5)),
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
  };
});
after(() => rmSync(root, { recursive: true, force: true }));

const run = (name: string, extra: Pick<Partial<Deployment>, 'inProcess'> & { localWorkers: number }) =>
  runTraining({
    ...base,
    config: {
      run: { lora, train },
      deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir: join(root, 'cache'), runId: name, ...extra },
    },
  });

let reference: RunResult;

test('single-process reference trains (loss goes down)', async () => {
  reference = await run('reference', { inProcess: true, localWorkers: 0 });
  const first = reference.metrics[0].loss;
  const last = reference.metrics[reference.metrics.length - 1].loss;
  assert.ok(last < first, `loss ${first} → ${last}`);
});

for (const workers of [2, 1, 3]) {
  test(`${workers} worker process(es) over WebSockets equal the single-process run (≤ 1e-6)`, async () => {
    const result = await run(`mesh-${workers}`, { localWorkers: workers });
    const diff = maxAbsDiff(result.adapter, reference.adapter);
    assert.ok(diff <= 1e-6, `max abs diff ${diff}`);
    assert.equal(result.metrics.length, 20);
    result.metrics.forEach((m, i) =>
      assert.ok(
        Math.abs(m.loss - reference.metrics[i].loss) <= 1e-6,
        `step ${i + 1} loss ${m.loss} vs ${reference.metrics[i].loss}`,
      ),
    );
    // Only LoRA tensors moved: per step roughly one gradient set up per micro-batch
    // and one parameter set down per worker.
    const loraBytes = 4 * result.adapterParameters;
    assert.ok(result.bytesUp >= 20 * 4 * loraBytes, `bytes up ${result.bytesUp}`);
    assert.ok(result.bytesUp < 20 * 4 * loraBytes * 1.5 + 200_000, `bytes up ${result.bytesUp}`);
    const lines = readFileSync(join(result.runDir, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(lines.length, 20);
    assert.ok(lines.every((l) => l.bytes_up > 0 && l.bytes_down > 0 && Number.isFinite(l.loss)));
    // The adapter on disk is in PEFT layout and holds exactly the trained values.
    const { tensors } = decodeSafetensors(
      new Uint8Array(readFileSync(join(result.runDir, 'adapter_model.safetensors'))),
    );
    const a = tensors.get('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    const b = tensors.get('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight');
    assert.deepEqual(a?.shape, [4, 16]);
    assert.deepEqual(b?.shape, [8, 4]); // v_proj out = kv heads (2) × head size (4)
    assert.equal(tensors.size, 2 * 2 * 2);
    assert.deepEqual([...a!.data], [...result.adapter.get('model.layers.0.self_attn.q_proj.lora_A')!]);
    const config = JSON.parse(readFileSync(join(result.runDir, 'adapter_config.json'), 'utf8'));
    assert.equal(config.peft_type, 'LORA');
    assert.deepEqual(config.target_modules, ['q_proj', 'v_proj']);
  });
}

test('with train.reductionBlock 2, 2 worker processes equal the in-process run with the same block, bit for bit', async () => {
  const blocked = { ...train, reductionBlock: 2 };
  const withBlock = (name: string, extra: Pick<Partial<Deployment>, 'inProcess'> & { localWorkers: number }) =>
    runTraining({
      ...base,
      config: {
        run: { lora, train: blocked },
        deployment: {
          outDir: join(root, 'runs'),
          backend: 'wasm',
          cacheDir: join(root, 'cache'),
          runId: name,
          ...extra,
        },
      },
    });
  const alone = await withBlock('blocks-reference', { inProcess: true, localWorkers: 0 });
  const mesh = await withBlock('blocks-mesh', { localWorkers: 2 });
  assert.equal(maxAbsDiff(mesh.adapter, alone.adapter), 0);
  mesh.metrics.forEach((m, i) => assert.equal(m.loss, alone.metrics[i].loss, `step ${i + 1} loss`));
  // blocks of 2 of a step's 4 micro-batches add in another order than one block: other bits
  assert.ok(maxAbsDiff(alone.adapter, reference.adapter) > 0, 'the block changes the order of the sum');
  const stored = JSON.parse(readFileSync(join(mesh.runDir, 'run_config.json'), 'utf8'));
  assert.equal(stored.train.reductionBlock, 2, 'run_config.json records the block');
});
