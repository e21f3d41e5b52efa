// Runs computing at once through the pool's lanes (coordinator/pool/lanes.ts) end bit-identical to each
// run trained alone (`train --in-process`), with different ranks, targets, data, micro-batch shapes
// and weights, while their micro-batches interleave in fair-share order.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import '../../helpers/backend.ts';
import { demoExamples, demoTaskData } from '../../../coordinator/io/dataset.ts';
import { type ModelDir, openModelDir } from '../../../coordinator/io/model-dir.ts';
import { PoolLanes, type Served } from '../../../coordinator/pool/lanes.ts';
import type { RunConfigInput } from '../../../coordinator/run/run-config.ts';
import { runTraining, type RunResult } from '../../../coordinator/run/train.ts';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import { maxAbsDiff } from '../../../shared/lora/adapter.ts';
import { writeTinyModelDir } from '../../helpers/tiny-model.ts';

let root = '';
let model: ModelDir;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-lanes-'));
  writeTinyModelDir(join(root, 'model'), 6);
  model = await openModelDir(join(root, 'model'));
});
after(() => rmSync(root, { recursive: true, force: true }));

const RUNS = {
  a: {
    lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] }),
    train: checkTrainConfig({ steps: 6, globalBatch: 8, microBatch: 2, lr: 1e-2, seed: 3 }),
    data: [64, 3],
  },
  b: {
    lora: checkLoraConfig({ r: 8, alpha: 8, targetModules: ['k_proj', 'o_proj', 'down_proj'] }),
    train: checkTrainConfig({ steps: 4, globalBatch: 12, microBatch: 4, lr: 5e-3, seed: 9 }),
    data: [48, 5],
  },
  c: {
    lora: checkLoraConfig({ r: 2, alpha: 4, targetModules: ['gate_proj'] }),
    train: checkTrainConfig({ steps: 5, globalBatch: 6, microBatch: 3, lr: 2e-2, seed: 1 }),
    data: [30, 8],
  },
} as const;
type Name = keyof typeof RUNS;

function run(name: Name, folder: string, lanes?: { pool: PoolLanes; weight: number }): Promise<RunResult> {
  const r = RUNS[name];
  const config: RunConfigInput = {
    run: { lora: r.lora, train: r.train },
    deployment: { outDir: join(root, folder), runId: name, inProcess: true, backend: 'wasm', localWorkers: 0 },
  };
  return runTraining({
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(r.data[0], 4, r.data[1])),
    config,
    progress: false,
    log: () => {},
    executor: lanes ? (parts) => lanes.pool.lane(name, { weight: lanes.weight, priority: 0 }, parts) : undefined,
  });
}

test('three runs through the lanes at once: each adapter bit-identical to the run alone; micro-batches interleave', async () => {
  const alone = new Map<Name, RunResult>();
  for (const name of Object.keys(RUNS) as Name[]) alone.set(name, await run(name, 'alone'));
  const served: Served[] = [];
  const pool = new PoolLanes((s) => served.push(s));
  const weights: Record<Name, number> = { a: 3, b: 1, c: 1 };
  const together = await Promise.all(
    (Object.keys(RUNS) as Name[]).map((name) => run(name, 'pool', { pool, weight: weights[name] })),
  );
  for (const result of together) {
    const name = result.runId as Name;
    assert.equal(result.step, RUNS[name].train.steps);
    assert.equal(maxAbsDiff(result.adapter, alone.get(name)!.adapter), 0, `${name}: same bits as alone`);
  }
  // every micro-batch once, and the runs took turns: no run's micro-batches all came before another's
  for (const name of Object.keys(RUNS) as Name[]) {
    const t = RUNS[name].train;
    assert.equal(served.filter((s) => s.run === name).length, t.steps * (t.globalBatch / t.microBatch), name);
  }
  const first = (name: Name) => served.findIndex((s) => s.run === name);
  const last = (name: Name) => served.map((s) => s.run).lastIndexOf(name);
  for (const x of Object.keys(RUNS) as Name[])
    for (const y of Object.keys(RUNS) as Name[])
      if (x !== y)
        assert.ok(first(x) < last(y), `${x} started before ${y} ended: ${served.map((s) => s.run).join('')}`);
});
