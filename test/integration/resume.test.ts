// Coordinator SIGKILL at a seeded random step (LORAMESH_TEST_SEED picks another), then `loramesh
// train --resume`: the final adapter equals an uninterrupted run (≤ 1e-6), the ledger has every step
// exactly once with every micro-batch used once (nothing trained twice or skipped), and the killed
// coordinator's workers exit with it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { decodePeftAdapter } from '../../shared/formats/peft.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { seededRng } from '../helpers/seed.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';
import { until } from '../helpers/wait.ts';

let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-resume-'));
});
after(() => rmSync(root, { recursive: true, force: true }));
const cli = fileURLToPath(new URL('../../coordinator/cli.ts', import.meta.url));
const flags = [
  '--rank',
  '4',
  '--alpha',
  '8',
  '--targets',
  'q_proj,v_proj',
  '--steps',
  '30',
  '--global-batch',
  '8',
  '--micro-batch',
  '2',
  '--lr',
  '0.01',
  '--warmup',
  '3',
  '--seed',
  '5',
  '--train-size',
  '64',
];

const lines = (path: string) =>
  existsSync(path)
    ? readFileSync(path, 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l))
    : [];

/** Worker processes started by a coordinator that used this cache folder (they carry --exit-with-parent). */
const workersOf = (cacheDir: string) =>
  execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes('--exit-with-parent') && l.includes(cacheDir));

test(
  'coordinator SIGKILLed mid-run, then --resume: ' + 'same adapter as an uninterrupted run, every step once',
  async (t) => {
    writeTinyModelDir(join(root, 'model'), 9);
    const model = await openModelDir(join(root, 'model'));
    const reference = await runTraining({
      model,
      examples: demoExamples(model.tokenizer, demoTaskData(64, 200, 5)),
      config: {
        run: {
          lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] }),
          train: checkTrainConfig({ steps: 30, globalBatch: 8, microBatch: 2, lr: 0.01, warmupSteps: 3, seed: 5 }),
        },
        deployment: { outDir: join(root, 'runs'), runId: 'reference', inProcess: true, localWorkers: 0 },
      },
      progress: false,
      log: () => {},
    });

    const runDir = join(root, 'runs', 'crash');
    const common = [
      '--import',
      'tsx',
      cli,
      'train',
      '--backend',
      'wasm',
      '--local-workers',
      '2',
      '--checkpoint-every',
      '5',
      '--eval-every',
      '1000',
    ];
    const killAfter = 8 + seededRng(t, 1).int(15); // steps 8 … 22
    t.diagnostic(`killing the coordinator after step ${killAfter}`);
    const first = spawn(
      process.execPath,
      [...common, ...flags, '--model', join(root, 'model'), '--out', join(root, 'runs'), '--run-id', 'crash'],
      { stdio: 'ignore', env: { ...process.env, LORAMESH_CACHE: join(root, 'cache') } },
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (lines(join(runDir, 'metrics.jsonl')).filter((l) => l.loss !== undefined).length >= killAfter) {
          clearInterval(timer);
          first.kill('SIGKILL');
          resolve();
        }
      }, 20);
      first.once('exit', () => {
        clearInterval(timer);
        reject(new Error('the first run ended before it was killed'));
      });
    });
    await new Promise((r) => first.once('exit', r));
    // The workers notice their parent is gone and exit: wait for that, up to 10 s, then assert.
    const orphans = () => workersOf(join(root, 'cache'));
    await until(() => orphans().length === 0, "the killed coordinator's workers to exit", 10_000, 100).catch(() => {});
    assert.deepEqual(orphans(), [], 'workers of the killed coordinator should exit with it');

    execFileSync(process.execPath, [...common, '--resume', runDir], {
      stdio: 'ignore',
      env: { ...process.env, LORAMESH_CACHE: join(root, 'cache') },
      timeout: 120_000,
    });
    const { tensors } = {
      tensors: decodePeftAdapter(new Uint8Array(readFileSync(join(runDir, 'adapter_model.safetensors')))),
    };
    let diff = 0;
    for (const [path, m] of tensors) {
      for (const [which, data] of [
        ['A', m.A],
        ['B', m.B],
      ] as const) {
        const ref = reference.adapter.get(`${path}.lora_${which}`)!;
        for (let i = 0; i < ref.length; i++) diff = Math.max(diff, Math.abs(ref[i] - data[i]));
      }
    }
    assert.ok(diff <= 1e-6, `killed after ${killAfter} steps, resumed: max abs diff ${diff}`);
    const ledger = lines(join(runDir, 'ledger.jsonl'));
    assert.deepEqual(
      ledger.map((l) => l.step),
      Array.from({ length: 30 }, (_, i) => i + 1),
      'each step exactly once in the ledger',
    );
    for (const l of ledger) {
      assert.equal(l.microBatches.length, 4);
      for (const mb of l.microBatches)
        assert.equal(mb.attempts.filter((a: { outcome: string }) => a.outcome === 'used').length, 1);
    }
    assert.deepEqual(
      lines(join(runDir, 'metrics.jsonl'))
        .filter((l) => l.loss !== undefined)
        .map((l) => l.step),
      Array.from({ length: 30 }, (_, i) => i + 1),
    );
  },
);
