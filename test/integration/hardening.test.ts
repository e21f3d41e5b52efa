// A token holder that lies, against the default defence (spot checks on 5 % of results and the first
// 2 of every connection, the outlier screen at 10× the step's median norm, the overflow bound,
// finite-only updates): 3 workers, one of
// them the attacker. Finite-but-huge gradients (every value 1e30, or 3e38 whose float32 sum
// overflows) answered instantly, and sign-flipped gradients of normal size. Each run ends with a
// finite adapter, eval loss within 5 % of the clean run, the attacker quarantined and the
// rejections counted. (bench/attacks.ts measures the same on the demo task.)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '../helpers/backend.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { toExample } from '../../shared/data/demo-tasks.ts';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { DefenceConfig } from '../../coordinator/engine/defence.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

let root = '';
let options: RunOptions;
/** the same run with no attacker, in process: the eval loss every attacked run is held to */
let clean: RunResult;
before(async () => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-hardening-'));
  writeTinyModelDir(join(root, 'model'), 21);
  const model = await openModelDir(join(root, 'model'));
  const data = demoTaskData(96, 32, 21);
  options = {
    model,
    examples: demoExamples(model.tokenizer, data),
    evalExamples: data.eval.map((s) => toExample(model.tokenizer, s)),
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
    config: {
      run: {
        lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] }),
        train: checkTrainConfig({ steps: 16, globalBatch: 8, microBatch: 2, lr: 1e-2, warmupSteps: 2, seed: 21 }),
      },
      deployment: {
        evalEvery: 1000,
        outDir: join(root, 'runs'),
        backend: 'wasm',
        cacheDir: join(root, 'cache'),
        localWorkers: 3,
      },
    },
  };
  clean = await runTraining({ ...options, config: configWith({ runId: 'clean', inProcess: true, localWorkers: 0 }) });
});
after(() => rmSync(root, { recursive: true, force: true }));
const finalEval = (r: RunResult) => r.evalLosses[r.evalLosses.length - 1].loss;

/** options' config with these deployment fields and defence settings over it */
const configWith = (deployment: Partial<Deployment>, defence?: Partial<DefenceConfig>): RunConfigInput => ({
  ...options.config,
  deployment: { ...options.config.deployment, ...deployment },
  limits: { defence },
});

let runs = 0;
async function attacked(
  fault: string,
  defence: Partial<DefenceConfig> = {},
): Promise<{ run: RunResult; lines: string[] }> {
  const lines: string[] = [];
  const run = await runTraining({
    ...options,
    config: configWith({ runId: `${fault.replace(/[^a-z0-9]/gi, '-')}-${++runs}` }, defence),
    workerEnv: (i): Record<string, string> => (i === 0 ? { LORAMESH_FAULT: fault } : {}),
    log: (l) => lines.push(l),
  });
  return { run, lines };
}

function assertSurvived(name: string, { run, lines }: { run: RunResult; lines: string[] }, codes: string[]): void {
  for (const [tensor, v] of run.adapter) assert.ok(v.every(Number.isFinite), `${name}: ${tensor} is not finite`);
  const [c, a] = [finalEval(clean), finalEval(run)];
  console.log(
    `${name}: eval loss clean ${c.toFixed(4)}, attacked ${a.toFixed(4)}; ` +
      `rejections ${JSON.stringify(run.rejections)}, quarantined ${run.quarantined}`,
  );
  assert.ok(Math.abs(a - c) <= 0.05 * c, `${name}: eval loss ${a} vs clean ${c}`);
  assert.equal(run.step, options.config.run.train.steps, `${name}: the run completed`);
  assert.ok(run.quarantined >= 1 && lines.some((l) => /quarantin/i.test(l)), `${name}: the attacker was quarantined`);
  assert.ok(
    codes.some((code) => (run.rejections[code] ?? 0) > 0),
    `${name}: rejections ${JSON.stringify(run.rejections)} name one of ${codes}`,
  );
}

test(
  'finite-huge gradients (every value 1e30, answered instantly): ' +
    'refuted on the first results, attacker quarantined',
  async () => {
    assertSurvived('huge 1e30', await attacked('huge:1e30'), ['LM_ERR_SPOT_CHECK', 'LM_ERR_OUTLIER']);
  },
);

test(
  'the outlier screen alone (no spot checks, no probation) ' +
    'catches every value 1e30: recomputed, refuted, taken back',
  async () => {
    assertSurvived('huge 1e30, screen only', await attacked('huge:1e30', { spotCheck: 0, probation: 0 }), [
      'LM_ERR_OUTLIER',
    ]);
  },
);

test('every value 3e38 (a float32 sum of two overflows): refused by the overflow bound, never added', async () => {
  assertSurvived('huge 3e38', await attacked('huge:3e38'), ['LM_ERR_NON_FINITE']);
});

test("sign-flipped gradients of normal size: caught on the attacker's first results (probation)", async () => {
  assertSurvived('negated', await attacked('byzantine:1'), ['LM_ERR_SPOT_CHECK']);
});
