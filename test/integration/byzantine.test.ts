// Byzantine volunteers: 1 of 5 workers sends sign-flipped gradients scaled ×10 on every
// micro-batch. Undefended, the run is visibly harmed; with spot checks (a secret 75 % of the
// micro-batches recomputed by the coordinator) the liar is quarantined, its results of the step
// are recomputed, and the final eval loss is within 5 % of the clean run.
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
import type { Deployment, RunConfigInput, RunSettings } from '../../coordinator/run/run-config.ts';
import { runTraining, type RunOptions } from '../../coordinator/run/train.ts';
import { writeTinyModelDir } from '../helpers/tiny-model.ts';

let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'loramesh-byz-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

test(
  '1 of 5 workers lies (×−10 gradients): harmful undefended; ' +
    'spot checks keep eval loss within 5 % (quarantine); trimmed mean beats undefended',
  async () => {
    writeTinyModelDir(join(root, 'model'), 14);
    const model = await openModelDir(join(root, 'model'));
    const data = demoTaskData(160, 32, 14);
    const options: Omit<RunOptions, 'config'> = {
      model,
      examples: demoExamples(model.tokenizer, data),
      evalExamples: data.eval.map((s) => toExample(model.tokenizer, s)),
      workerOutput: 'ignore',
      progress: false,
      workerEnv: (i): Record<string, string> => (i === 0 ? { LORAMESH_FAULT: 'byzantine:10' } : {}),
    };
    /**
     * The run's config: this test's settings,
     * with these deployment fields, defence settings and run settings over them.
     */
    const config = (
      deployment: Partial<Deployment>,
      defence?: Partial<DefenceConfig>,
      run?: Partial<RunSettings>,
    ): RunConfigInput => ({
      run: {
        lora: checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] }),
        train: checkTrainConfig({ steps: 25, globalBatch: 20, microBatch: 2, lr: 1e-2, warmupSteps: 2, seed: 14 }),
        ...run,
      },
      deployment: {
        evalEvery: 1000,
        outDir: join(root, 'runs'),
        backend: 'wasm',
        cacheDir: join(root, 'cache'),
        localWorkers: 5,
        ...deployment,
      },
      limits: { defence },
    });
    const finalEval = (r: { evalLosses: { loss: number }[] }) => r.evalLosses[r.evalLosses.length - 1].loss;
    const clean = await runTraining({
      ...options,
      config: config({ runId: 'clean', inProcess: true, localWorkers: 0 }),
      log: () => {},
    });
    // The default defence (spot checks + outlier screen) is switched off to see the harm, and the trimmed mean alone.
    const off = { spotCheck: 0, outlierFactor: 0, probation: 0 };
    const undefended = await runTraining({ ...options, config: config({ runId: 'undefended' }, off), log: () => {} });
    const lines: string[] = [];
    const defended = await runTraining({
      ...options,
      config: config({ runId: 'defended' }, { spotCheck: 0.75, tolerance: 1e-3 }),
      log: (l) => lines.push(l),
    });
    const robust = await runTraining({
      ...options,
      config: config({ runId: 'trimmed' }, off, { aggregation: 'trimmed-mean' }),
      log: () => {},
    });
    const [c, u, d, t] = [finalEval(clean), finalEval(undefended), finalEval(defended), finalEval(robust)];
    console.log(
      `eval loss: start ${clean.evalLosses[0].loss.toFixed(4)}, clean ${c.toFixed(4)}, undefended ${u.toFixed(4)}, ` +
        `spot-checked ${d.toFixed(4)}, trimmed mean ${t.toFixed(4)}`,
    );
    const start = clean.evalLosses[0].loss;
    // Harmed: training made the model worse than it started, while the clean run improved it.
    assert.ok(c < start && u > start && u > c * 1.1, `undefended eval loss ${u} vs start ${start} and clean ${c}`);
    assert.ok(Math.abs(d - c) <= 0.05 * c, `defended eval loss ${d} vs clean ${c}`);
    // Trimmed mean resists too, but how much depends on how many micro-batches the liar grabbed in
    // a step (pull scheduling); asserted: it beats the undefended run. (Measured: within 3.6 % of clean.)
    assert.ok(t < u && t < start, `trimmed-mean eval loss ${t} vs undefended ${u}`);
    assert.ok(
      lines.some((l) => /failed a spot check/.test(l) && /quarantining/.test(l)),
      'the liar was quarantined',
    );
  },
);
