/**
 * The built-in demo (`npm start`): a coordinator and 2 local worker processes LoRA-fine-tune the
 * small pretrained model in models/demo-base to a skill it does not have — reverse AND uppercase a
 * string — and show held-out exact match before and after, samples, and the bytes moved.
 */
import { checkLoraConfig, checkTrainConfig } from '../../shared/config.ts';
import { type Prediction, accuracy, predict } from '../../shared/data/exact-match.ts';
import { FINETUNE_TAG, promptText } from '../../shared/data/demo-tasks.ts';
import { mergeAdapter, adapterSpec } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { initBackend, type BackendName } from '../../node/backend.ts';
import { DEMO_MODEL_DIR } from '../io/paths.ts';
import { DEMO_EVAL_SIZE, demoExamples, demoTaskData } from '../io/dataset.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';
import { runTraining } from '../run/train.ts';
import { isAbsolute, relative } from 'node:path';

export interface DemoOptions {
  localWorkers: number;
  steps?: number;
  out: string;
  backend: BackendName;
  /**
   * compute every micro-batch in this process instead of on the local workers: the same adapter bit for bit,
   * so the same report except the traffic lines (0 bytes moved). test/coordinator/commands/demo-readme.test.ts uses it.
   */
  inProcess?: boolean;
  /** where the report goes, a line at a time (default console.log) */
  print?: (line: string) => void;
}

export const DEMO_LORA = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] });
export const DEMO_TRAIN = checkTrainConfig({
  steps: 200,
  globalBatch: 32,
  microBatch: 8,
  lr: 3e-3,
  warmupSteps: 10,
  minLrRatio: 0.1,
  seed: 7,
});

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(2)} MB`;
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** A path as the user can type it from here: relative when under the working directory, else absolute. */
function shown(path: string): string {
  const fromHere = relative(process.cwd(), path);
  return fromHere.startsWith('..') || isAbsolute(fromHere) ? path : fromHere;
}

export async function runDemo(o: DemoOptions): Promise<void> {
  const started = performance.now();
  const print = o.print ?? console.log;
  await initBackend(o.backend, console.log);
  const dir = await openModelDir(DEMO_MODEL_DIR);
  const weights = loadWeights(dir).weights;
  const model = createModel(dir.config);
  const tok = dir.tokenizer;
  const train = { ...DEMO_TRAIN, steps: o.steps ?? DEMO_TRAIN.steps };
  const data = demoTaskData(2000, DEMO_EVAL_SIZE, train.seed);
  const modelParams = [...weights.values()].reduce((n, t) => n + t.size, 0);

  print(
    `loramesh demo: teach a pretrained ${(modelParams / 1e6).toFixed(2)}M-parameter Llama-style model ` +
      `a new skill with LoRA on ${o.localWorkers} workers`,
  );
  print(`  base model  ${shown(dir.dir)} (pretrained on copy C, reverse R, uppercase U)`);
  print(
    `  new skill   ${promptText(FINETUNE_TAG, 'hello')} → ${'hello'.split('').reverse().join('').toUpperCase()}  ` +
      '(reverse + uppercase; never seen in pretraining)',
  );
  const baseParams = new FrozenBase(dir.config, weights);
  const before = predict(model, baseParams, tok, data.eval);
  print(
    `  held-out exact match BEFORE: ${pct(accuracy(before))} ` +
      `(${before.filter((p) => p.correct).length}/${DEMO_EVAL_SIZE})`,
  );

  const result = await runTraining({
    model: dir,
    examples: demoExamples(tok, data),
    config: {
      run: { lora: DEMO_LORA, train },
      deployment: {
        outDir: o.out,
        inProcess: !!o.inProcess,
        localWorkers: o.inProcess ? 0 : o.localWorkers,
        backend: o.backend,
      },
    },
    workerOutput: 'ignore',
    log: () => {},
  });

  const merged = new FrozenBase(
    dir.config,
    mergeAdapter(dir.config, weights, adapterSpec(dir.config, DEMO_LORA), result.adapter, DEMO_LORA),
  );
  const after = predict(model, merged, tok, data.eval);
  const last = result.metrics[result.metrics.length - 1];
  print(`  trained ${train.steps} steps × ${train.globalBatch} sequences, final loss ${last.loss.toFixed(4)}`);
  print(
    `  held-out exact match AFTER:  ${pct(accuracy(after))} ` +
      `(${after.filter((p) => p.correct).length}/${DEMO_EVAL_SIZE})`,
  );
  print('  samples (held-out):');
  for (let i = 0; i < 5; i++) showSample(print, before[i], after[i]);
  const moved = result.bytesUp + result.bytesDown;
  print(
    `  bytes moved: ${mb(result.bytesUp)} up + ${mb(result.bytesDown)} down = ${mb(moved)} ` +
      `for ${result.adapterParameters} LoRA parameters`,
  );
  const perStep = moved / train.steps;
  print(
    `  per step: ${mb(perStep)} ` +
      `(${train.globalBatch / train.microBatch} micro-batch gradients up, new A/B down to each worker)`,
  );
  print(
    `  full fine-tuning of all ${modelParams} parameters would move ${mb(result.fullFineTuneBytes)} ` +
      `(${(result.fullFineTuneBytes / moved).toFixed(1)}× more)`,
  );
  print(
    `  adapter (PEFT layout): ${shown(result.runDir)}/adapter_model.safetensors + adapter_config.json; ` +
      `metrics: ${shown(result.runDir)}/metrics.jsonl`,
  );
  print(`  done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

function showSample(print: (line: string) => void, before: Prediction, after: Prediction): void {
  const s = before.sample;
  print(
    `    ${promptText(s.tag, s.input).padEnd(12)} expected ${s.output.padEnd(9)} ` +
      `base: ${JSON.stringify(before.predicted).padEnd(12)} ` +
      `adapted: ${JSON.stringify(after.predicted)} ${after.correct ? '✓' : '✗'}`,
  );
}
