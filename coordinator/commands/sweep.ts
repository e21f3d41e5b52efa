/**
 * `loramesh sweep`: LoRA paper Table 6 on our own task. Trains the demo task (reverse + uppercase)
 * in-process for every rank × target set, measures held-out eval loss and exact match, then runs
 * the analyses on the adapters (sweep-report.ts). Each run's folder keeps a result.json, so an
 * interrupted sweep started again with the same settings skips the runs it already finished.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import {
  checkLoraConfig,
  checkTrainConfig,
  type LinearModule,
  type LoraConfig,
  type TrainConfig,
} from '../../shared/config.ts';
import { accuracy, predict } from '../../shared/data/exact-match.ts';
import { toExample, type TaskSample } from '../../shared/data/demo-tasks.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { adaptedModules, type AdapterState } from '../../shared/lora/adapter.ts';
import { FrozenBase, withAdapter } from '../../shared/lora/params.ts';
import { createModel, linearShape, type CausalLM } from '../../shared/model/causal-lm.ts';
import type { Example } from '../../shared/train/micro-batch.ts';
import { baseMatrices } from '../io/analysis-io.ts';
import { demoExamples, demoTaskData } from '../io/dataset.ts';
import { loadWeights, openModelDir, type ModelDir } from '../io/model-dir.ts';
import { writeAtomic } from '../io/run-dir.ts';
import { acquireRunLock } from '../io/run-lock.ts';
import { runTraining } from '../run/train.ts';
import { compareSet, targetLabel, writeSweepReport } from './sweep-report.ts';
import type { SweepOptions, SweepRun } from './sweep-types.ts';

export type { SweepOptions, SweepRun } from './sweep-types.ts';

/** Small enough for the test suite: 2 ranks × 2 target sets, a few steps. */
export const QUICK: Partial<SweepOptions> = {
  ranks: [2, 4],
  targetSets: [['q_proj'], ['q_proj', 'v_proj']],
  steps: 4,
  globalBatch: 8,
  trainSize: 64,
  evalSize: 16,
  compare: [2, 4],
};

function checkSweep(o: SweepOptions, model: ModelDir): void {
  if (o.ranks.length === 0 || o.targetSets.length === 0)
    fail(ErrorCodes.CONFIG, '--ranks and --target-sets must each list at least one value');
  for (const targets of o.targetSets) {
    const lora = checkLoraConfig({ r: 1, targetModules: targets });
    for (const path of adaptedModules(model.config, lora)) {
      const [dOut, dIn] = linearShape(model.config, path);
      const tooBig = o.ranks.find((r) => r > Math.min(dOut, dIn));
      if (tooBig !== undefined)
        fail(
          ErrorCodes.CONFIG,
          `--ranks has ${tooBig}, more than min(d_out, d_in) = ${Math.min(dOut, dIn)} of ${path}`,
        );
    }
  }
  for (const r of o.compare)
    if (!o.ranks.includes(r))
      fail(ErrorCodes.CONFIG, `--compare ${o.compare.join(',')}: rank ${r} is not in --ranks ${o.ranks.join(',')}`);
}

export async function sweepCommand(
  o: SweepOptions,
  log: (line: string) => void = console.log,
): Promise<{ out: string; runs: SweepRun[] }> {
  const started = performance.now();
  const model = await openModelDir(o.model);
  checkSweep(o, model);
  const out = resolve(o.out);
  const weights = loadWeights(model).weights;
  const lm = createModel(model.config);
  const base = new FrozenBase(model.config, weights);
  const data = demoTaskData(o.trainSize, o.evalSize, o.seed);
  const examples = demoExamples(model.tokenizer, data);
  const evalExamples = data.eval.map((s) => toExample(model.tokenizer, s));
  const baseline = accuracy(predict(lm, base, model.tokenizer, data.eval));
  log(
    `sweep: ${o.ranks.length} ranks × ${o.targetSets.length} target sets, ` +
      `${o.steps} steps × ${o.globalBatch} sequences each; ` +
      `base model exact match ${(100 * baseline).toFixed(1)}%`,
  );
  const train = checkTrainConfig({
    steps: o.steps,
    globalBatch: o.globalBatch,
    microBatch: Math.min(8, o.globalBatch),
    lr: o.lr,
    warmupSteps: Math.min(10, Math.floor(o.steps / 10)),
    seed: o.seed,
  });
  const jobs = o.targetSets.flatMap((targets) => o.ranks.map((rank) => ({ rank, targets, seed: o.seed })));
  if (o.seedRun) jobs.push({ rank: o.compare[1], targets: compareSet(o.targetSets), seed: o.seed + 1 });
  const context: SweepContext = {
    o: { ...o, out },
    model,
    weights,
    lm,
    base,
    train,
    examples,
    evalExamples,
    evalSamples: data.eval,
  };
  const runs: SweepRun[] = [];
  for (const job of jobs) {
    const run = await trainOne(job, context);
    runs.push(run);
    log(
      `  r=${String(run.rank).padEnd(2)} ${run.label.padEnd(8)} seed ${run.seed}: ` +
        `eval loss ${run.evalLoss.toFixed(4)}, exact match ${(100 * run.exactMatch).toFixed(1)}% ` +
        `(${run.trainSeconds.toFixed(1)} s)`,
    );
  }
  base.dispose();
  // Summed per run, so runs reused from an earlier invocation count with the time they took then.
  const trainSeconds = runs.reduce((sum, run) => sum + run.trainSeconds, 0);
  const matrices = baseMatrices(model.config, weights, `--model ${o.model}`);
  writeSweepReport(
    { options: o, out, runs, baseline, base: { config: model.config, dir: model.dir, matrices }, trainSeconds },
    log,
  );
  log(`sweep done in ${((performance.now() - started) / 1000).toFixed(0)} s; results in ${out}`);
  return { out, runs };
}

/** What every run of a sweep shares: one copy of the base weights, the data, the training config. */
interface SweepContext {
  o: SweepOptions;
  model: ModelDir;
  weights: Map<string, tf.Tensor>;
  lm: CausalLM;
  base: FrozenBase;
  train: TrainConfig;
  examples: Example[];
  evalExamples: Example[];
  evalSamples: TaskSample[];
}

async function trainOne(
  job: { rank: number; targets: LinearModule[]; seed: number },
  ctx: SweepContext,
): Promise<SweepRun> {
  const { o, model, weights, lm, base, examples, evalExamples, evalSamples } = ctx;
  const train = { ...ctx.train, seed: job.seed };
  const label = targetLabel(job.targets);
  const runId = `r${job.rank}-${label.replace(/\+/g, '-')}${job.seed === o.seed ? '' : `-seed${job.seed}`}`;
  const runDir = join(o.out, 'runs', runId);
  const lora = checkLoraConfig({ r: job.rank, alpha: o.alpha, targetModules: job.targets });
  const resultPath = join(runDir, 'result.json');
  const settings = { lora, train, trainSize: o.trainSize, evalSize: o.evalSize, model: model.dir };
  if (existsSync(resultPath)) {
    const saved = JSON.parse(readFileSync(resultPath, 'utf8')) as { settings: unknown; run: SweepRun };
    if (JSON.stringify(saved.settings) === JSON.stringify(settings)) return saved.run;
  }
  if (existsSync(runDir)) {
    // A run of an older sweep (other settings) or one cut off before result.json: redone from
    // scratch, since training refuses a folder that already holds a run. The lock proves no
    // other process is training in it.
    acquireRunLock(runDir).release();
    rmSync(runDir, { recursive: true, force: true });
  }
  const t0 = performance.now();
  const result = await runTraining({
    model,
    examples,
    evalExamples,
    config: {
      run: { lora, train },
      deployment: { evalEvery: train.steps, outDir: join(o.out, 'runs'), runId, inProcess: true, localWorkers: 0 },
    },
    weights,
    progress: false,
    log: () => {},
  });
  const trainSeconds = (performance.now() - t0) / 1000;
  const exactMatch = exactMatchWith(lm, base, model, result.adapter, lora, evalSamples);
  const run: SweepRun = {
    runId,
    runDir: result.runDir,
    rank: job.rank,
    seed: job.seed,
    targets: job.targets,
    label,
    adapterParameters: result.adapterParameters,
    evalLossBefore: result.evalLosses[0].loss,
    evalLoss: result.evalLosses[result.evalLosses.length - 1].loss,
    exactMatch,
    trainSeconds,
  };
  writeAtomic(resultPath, JSON.stringify({ settings, run }, null, 2) + '\n');
  return run;
}

/** Held-out exact match of base + LoRA branch (no merge, so the base tensors are shared by every run). */
function exactMatchWith(
  lm: CausalLM,
  base: FrozenBase,
  model: ModelDir,
  adapter: AdapterState,
  lora: LoraConfig,
  samples: TaskSample[],
): number {
  return withAdapter(base, adapter, lora, (params) => accuracy(predict(lm, params, model.tokenizer, samples)));
}
