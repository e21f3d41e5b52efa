// runTraining and the run's arithmetic variant: this process's kernels are made to use it before anything is
// computed (an --in-process run computes every step with them), it is recorded in run_config.json, and a
// coordinator whose engine lacks it stops with LM_ERR_ARITHMETIC before a run folder exists. The kernels are
// faked, so this holds whether or not this Node runs relaxed SIMD.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../../helpers/backend.ts';
import type { ArithmeticKernels, ArithmeticVariant } from '../../../shared/arithmetic.ts';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import type { LoraMeshError } from '../../../shared/errors.ts';
import { demoExamples, demoTaskData } from '../../../coordinator/io/dataset.ts';
import { type ModelDir, openModelDir } from '../../../coordinator/io/model-dir.ts';
import { runTraining } from '../../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../../helpers/tiny-model.ts';

let root = '';
let model: ModelDir;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-train-'));
  writeTinyModelDir(join(root, 'model'), 3);
  model = await openModelDir(join(root, 'model'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** kernels that support `supported` and record each selection */
function fakeKernels(supported: ArithmeticVariant[]): ArithmeticKernels & { selected: ArithmeticVariant[] } {
  const selected: ArithmeticVariant[] = [];
  return { supported: () => supported, select: (v) => void selected.push(v), selected };
}

const run = (runId: string, arithmetic: ArithmeticVariant, kernels: ArithmeticKernels, onStep = () => {}) =>
  runTraining({
    model,
    examples: demoExamples(model.tokenizer, demoTaskData(16, 200, 5)),
    config: {
      run: {
        lora: checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj'] }),
        train: checkTrainConfig({ steps: 2, globalBatch: 4, microBatch: 2, lr: 0.01, warmupSteps: 0, seed: 5 }),
        arithmetic,
      },
      deployment: { outDir: join(root, 'runs'), runId, inProcess: true, localWorkers: 0 },
    },
    arithmetic: kernels,
    progress: false,
    log: () => {},
    onStep,
  });

test('--in-process selects the run variant before its first step and records it in run_config.json', async () => {
  const kernels = fakeKernels(['simd128', 'relaxed-fma']);
  const atEachStep: ArithmeticVariant[][] = [];
  await run('relaxed', 'relaxed-fma', kernels, () => atEachStep.push([...kernels.selected]));
  // selected before the first step, and only ever the run's variant (a process may select again before each of
  // the run's computations: the standing pool holds runs of different variants)
  assert.equal(atEachStep.length, 2);
  assert.ok(atEachStep[0].length >= 1, 'selected before the first step');
  assert.ok(
    atEachStep.flat().every((v) => v === 'relaxed-fma'),
    `only the run's variant: ${atEachStep.flat().join(', ')}`,
  );
  const stored = JSON.parse(readFileSync(join(root, 'runs', 'relaxed', 'run_config.json'), 'utf8'));
  assert.equal(stored.arithmetic, 'relaxed-fma');
});

test('a coordinator whose engine lacks the variant stops with LM_ERR_ARITHMETIC before the run folder exists', async () => {
  const kernels = fakeKernels(['simd128']);
  await assert.rejects(
    run('refused', 'relaxed-fma', kernels),
    (err: LoraMeshError) =>
      err.code === 'LM_ERR_ARITHMETIC' &&
      /the run computes with arithmetic relaxed-fma; the coordinator supports simd128/.test(err.message),
  );
  assert.deepEqual(kernels.selected, []);
  assert.equal(existsSync(join(root, 'runs', 'refused')), false);
});

test('the default run selects simd128', async () => {
  const kernels = fakeKernels(['simd128']);
  await run('plain', 'simd128', kernels);
  assert.ok(kernels.selected.length >= 1);
  assert.deepEqual(new Set(kernels.selected), new Set(['simd128']));
});

test('a relaxed-fma run re-holds its base for the fma kernels without disposing the weights its caller passed', async () => {
  const { loadWeights } = await import('../../../coordinator/io/model-dir.ts');
  const weights = loadWeights(model).weights;
  const before = new Map([...weights].map(([name, t]) => [name, t.dataSync().slice()]));
  await runTraining({
    model,
    weights,
    examples: demoExamples(model.tokenizer, demoTaskData(16, 200, 5)),
    config: {
      run: {
        lora: checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj'] }),
        train: checkTrainConfig({ steps: 1, globalBatch: 4, microBatch: 2, lr: 0.01, warmupSteps: 0, seed: 5 }),
        arithmetic: 'relaxed-fma',
      },
      deployment: { outDir: join(root, 'runs'), runId: 'caller-weights', inProcess: true, localWorkers: 0 },
    },
    arithmetic: fakeKernels(['simd128', 'relaxed-fma']),
    progress: false,
    log: () => {},
  });
  for (const [name, t] of weights) {
    assert.equal(t.isDisposed, false, `${name} was disposed`);
    assert.deepEqual(t.dataSync(), before.get(name), `${name} changed`);
  }
});
