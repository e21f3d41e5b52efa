// Low-bandwidth mode over real sockets: f32 equals the exact foundation run bit for bit; lossy
// codecs move fewer bytes with every frame counted and workers holding exactly the coordinator's
// shadow of the parameters (a spot check of every result proves it); local-steps mode over the
// mesh equals its single-process run bit for bit.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { adapterParameterCount, adapterSpec, maxAbsDiff } from '../../shared/lora/adapter.ts';
import { codecBytes, type CodecSpec } from '../../shared/protocol/wire-codec.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput, RunSettings } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
const train = checkTrainConfig({ steps: 8, globalBatch: 8, microBatch: 2, lr: 5e-3, seed: 4 });
const data = demoTaskData(64, 16, 4);
let root = '';
let base: Omit<RunOptions, 'config'>;
/** adapter parameters (values per full result frame) */
let P = 0;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-lowbw-'));
  writeTinyModelDir(join(root, 'model'), 6);
  const model = await openModelDir(join(root, 'model'));
  const examples = demoExamples(model.tokenizer, data);
  const evalExamples = demoExamples(model.tokenizer, { train: data.eval, eval: [] });
  base = {
    model,
    examples,
    evalExamples,
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
  };
  P = adapterParameterCount(adapterSpec(model.config, lora));
});
after(() => rmSync(root, { recursive: true, force: true }));
/**
 * The run's config: this file's settings (two local workers),
 * with these run settings, deployment fields and limits over them.
 */
const config = (
  run: Partial<RunSettings>,
  deployment: Partial<Deployment>,
  limits?: RunConfigInput['limits'],
): RunConfigInput => ({
  run: { lora, train, ...run },
  deployment: {
    evalEvery: 100,
    outDir: join(root, 'runs'),
    backend: 'wasm',
    cacheDir: join(root, 'cache'),
    localWorkers: 2,
    ...deployment,
  },
  limits,
});
const metrics = (runDir: string) =>
  readFileSync(join(runDir, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
    .filter((m) => m.loss !== undefined);

test('codec f32 over the mesh equals the single-process run bit for bit', async () => {
  const reference = await runTraining({
    ...base,
    config: config({}, { runId: 'ref', inProcess: true, localWorkers: 0 }),
  });
  const mesh = await runTraining({
    ...base,
    config: config({ wire: { up: { name: 'f32' }, down: { name: 'f32' } } }, { runId: 'f32' }),
  });
  assert.equal(maxAbsDiff(reference.adapter, mesh.adapter), 0);
  // every result frame: 4 bytes per value plus the message fields and WebSocket header
  for (const m of metrics(mesh.runDir)) {
    assert.ok(
      m.payload_up >= 4 * P * 4 && m.payload_up % (4 * P) === 0,
      'four f32 results per step (and any straggler copies)',
    );
    // this tiny adapter (P = 448) makes the fixed cost visible: ≤ 200 bytes per frame
    // (on the demo adapter it is small next to the payload: bench/RESULTS.md, `npm run bench:bandwidth`)
    assert.ok(
      m.bytes_up > m.payload_up && m.bytes_up - m.payload_up <= 200 * m.frames_up,
      `up ${m.bytes_up} for payload ${m.payload_up} in ${m.frames_up} frames`,
    );
    assert.equal(m.fp32_lora_bytes, 4 * P * (4 + 2), 'fp32 LoRA: 4 results up + params to 2 workers');
  }
});

test(
  'int8 both ways with block 32: 3.8× fewer payload bytes, ' +
    'every result checked against the coordinator’s shadow, close to f32',
  async () => {
    const int8: CodecSpec = { name: 'int8', blockSize: 32 };
    const f32 = await runTraining({
      ...base,
      config: config({}, { runId: 'f32-again', inProcess: true, localWorkers: 0 }),
    });
    // Spot-checking every result at tolerance 1e-6 (f32 up): a worker whose parameters differed from
    // the coordinator's shadow by even one delta would be quarantined and the run would stall.
    const checked = await runTraining({
      ...base,
      config: config(
        { wire: { up: { name: 'f32' }, down: int8 } },
        { runId: 'int8-down' },
        { defence: { spotCheck: 1, tolerance: 1e-6 } },
      ),
    });
    assert.equal(checked.metrics.length, train.steps);
    // int8 up with every result spot-checked: honest workers pass at the codec's tolerance floor.
    const run = await runTraining({
      ...base,
      config: config(
        { wire: { up: int8, down: int8 } },
        { runId: 'int8' },
        { defence: { spotCheck: 1, tolerance: 1e-3 } },
      ),
    });
    assert.equal(run.metrics.length, train.steps);
    const rows = metrics(run.runDir);
    for (const m of rows)
      assert.ok(
        m.payload_up >= 4 * codecBytes(P, int8) && m.payload_up % codecBytes(P, int8) === 0,
        'four int8 results per step (and any copies)',
      );
    // steps after the first send deltas: int8 values + scales to each of 2 workers
    for (const m of rows.slice(1)) assert.equal(m.payload_down, 2 * codecBytes(P, int8));
    for (const m of rows)
      assert.ok(
        m.bytes_up - m.payload_up <= 200 * m.frames_up,
        `up ${m.bytes_up} for payload ${m.payload_up} in ${m.frames_up} frames`,
      );
    const f32Loss = f32.evalLosses.at(-1)!.loss;
    const int8Loss = run.evalLosses.at(-1)!.loss;
    assert.ok(Math.abs(int8Loss - f32Loss) <= 0.02 * f32Loss, `eval loss int8 ${int8Loss} vs f32 ${f32Loss}`);
  },
);

test(
  'local steps (H=3) over the mesh equal the single-process run bit for bit; ' + 'the factor-averaging gap is logged',
  async () => {
    const local = { steps: 3, innerLr: 5e-3, outerLr: 0.7, outerMomentum: 0.9 };
    const short = { ...train, steps: 3 };
    const reference = await runTraining({
      ...base,
      config: config({ train: short, local }, { runId: 'local-ref', inProcess: true, localWorkers: 0 }),
    });
    const mesh = await runTraining({ ...base, config: config({ train: short, local }, { runId: 'local-mesh' }) });
    assert.equal(maxAbsDiff(reference.adapter, mesh.adapter), 0);
    const rows = metrics(mesh.runDir);
    for (const m of rows) {
      assert.equal(m.samples, 3 * train.globalBatch);
      assert.ok(m.factor_gap > 0 && m.factor_gap < 1, `gap ${m.factor_gap}`);
      assert.ok(
        m.payload_up >= 4 * 4 * P && m.payload_up % (4 * P) === 0,
        'one pseudo-gradient per job, 4 jobs (and any copies)',
      );
      assert.equal(
        m.fp32_lora_bytes,
        4 * P * (12 + 3 * 2),
        'sync fp32 for the same samples: 12 results + 3 steps × 2 workers of params',
      );
    }
    assert.ok(reference.evalLosses.at(-1)!.loss < reference.evalLosses[0].loss, 'local steps train');
  },
);
