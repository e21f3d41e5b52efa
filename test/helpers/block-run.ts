/**
 * The tiny run the browser topology tests share (test/browser/redirect.test.ts, relay-join.test.ts): a 3-layer
 * tiny model in `root`, 4 steps of 4 micro-batches with reduction block 2, and the in-process run's result to
 * compare a tab's run against; `config` builds a run config with the given deployment.
 */
import { join } from 'node:path';
import { demoExamples, demoTaskData } from '../../coordinator/io/dataset.ts';
import { openModelDir } from '../../coordinator/io/model-dir.ts';
import type { Deployment, RunConfigInput } from '../../coordinator/run/run-config.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { writeTinyModelDir } from './tiny-model.ts';

export async function blockRun(root: string) {
  writeTinyModelDir(join(root, 'model'), 3);
  const model = await openModelDir(join(root, 'model'));
  const lora = checkLoraConfig({ r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] });
  const train = checkTrainConfig({
    steps: 4,
    globalBatch: 8,
    microBatch: 2,
    lr: 1e-2,
    warmupSteps: 1,
    seed: 5,
    reductionBlock: 2,
  });
  const examples = demoExamples(model.tokenizer, demoTaskData(64, 8, 5));
  const common = { model, examples, workerOutput: 'ignore' as const, progress: false };
  const config = (deployment: Partial<Deployment>): RunConfigInput => ({
    run: { lora, train },
    deployment: { outDir: join(root, 'runs'), backend: 'wasm', cacheDir: join(root, 'cache'), ...deployment },
  });
  const reference = await runTraining({
    ...common,
    config: config({ runId: 'reference', inProcess: true, localWorkers: 0 }),
    log: () => {},
  });
  return { train, common, config, reference };
}
