/**
 * `loramesh extract` on the demo task, for docs/analysis.md: fully fine-tune every parameter of
 * models/demo-base on reverse + uppercase (the same data, batch and schedule as the demo's LoRA),
 * then extract LoRA adapters of several ranks from W_tuned − W_base and measure each one's
 * relative Frobenius error and held-out exact match against the full fine-tune's.
 *
 *   npx tsx scripts/extract-demo.ts [--steps 100] [--ranks 1,2,4,8,16,64] [--out runs/extract-demo]
 */
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '../node/backend.ts';
import { accuracy, predict } from '../shared/data/exact-match.ts';
import { toExample } from '../shared/data/demo-tasks.ts';
import { encodeSafetensors } from '../shared/formats/safetensors.ts';
import { FrozenBase, loraBranches, trainableParams, withLora } from '../shared/lora/params.ts';
import { createModel, parameterShapes } from '../shared/model/causal-lm.ts';
import { Rng } from '../shared/rng.ts';
import { tokenLossSum } from '../shared/train/gradients.ts';
import { packMicroBatch } from '../shared/train/micro-batch.ts';
import { adamwStep, clipGlobalNorm, initAdam, learningRate } from '../shared/train/optimizer.ts';
import { loraScaling } from '../shared/config.ts';
import { lineChartSvg } from '../shared/analysis/plot-lines.ts';
import { readAdapterDir } from '../coordinator/io/adapter-io.ts';
import { writeFigure, writeJson } from '../coordinator/io/analysis-io.ts';
import { markdownTable, meanByKind } from '../coordinator/commands/analyze.ts';
import { demoTaskData } from '../coordinator/io/dataset.ts';
import { DEMO_TRAIN } from '../coordinator/commands/demo.ts';
import { extractCommand } from '../coordinator/commands/extract.ts';
import { loadWeights, openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { describeModule } from '../shared/analysis/report.ts';

const o = new Command()
  .option('--steps <n>', 'full fine-tuning steps', '100')
  .option('--lr <x>', 'peak learning rate of the full fine-tune', '1e-3')
  .option('--ranks <list>', 'ranks to extract', '1,2,4,8,16,64')
  .option('--out <dir>', 'output folder', 'runs/extract-demo')
  .parse()
  .opts();
const ranks = String(o.ranks).split(',').map(Number);

await initBackend('wasm', console.log);
const base = await openModelDir(DEMO_MODEL_DIR);
const tok = base.tokenizer;
const lm = createModel(base.config);
const data = demoTaskData(2000, 200, DEMO_TRAIN.seed);
const tunedDir = join(o.out, 'full-ft');

if (!existsSync(join(tunedDir, 'model.safetensors'))) {
  // Every parameter trains, in float32 arrays; AdamW as the LoRA runs use (no weight decay).
  const weights = loadWeights(base).weights;
  const shapes = parameterShapes(base.config);
  const names = [...shapes.keys()];
  const params = new Map(names.map((n) => [n, weights.get(n)!.dataSync().slice() as Float32Array]));
  const adam = initAdam(params);
  const schedule = { lr: Number(o.lr), warmupSteps: 10, steps: Number(o.steps), minLrRatio: 0.1 };
  const rng = new Rng(DEMO_TRAIN.seed);
  const examples = data.train.map((s) => toExample(tok, s));
  for (let step = 0; step < schedule.steps; step++) {
    const mb = packMicroBatch(
      Array.from({ length: DEMO_TRAIN.globalBatch }, () => examples[rng.int(examples.length)]),
      tok.padId,
      0,
    );
    const { loss, grads } = tf.tidy(() => {
      const inputIds = tf.tensor2d(mb.inputIds, [mb.batch, mb.time], 'int32');
      const f = (...ps: tf.Tensor[]) =>
        tokenLossSum(
          lm.forward(trainableParams(base.config, new Map(names.map((n, i) => [n, ps[i]]))), inputIds),
          tf.tensor1d(mb.targets, 'int32'),
          tf.tensor1d(mb.lossMask),
        );
      const { value, grads } = tf.valueAndGrads(f)(names.map((n) => tf.tensor(params.get(n)!, shapes.get(n)!)));
      return { loss: value, grads };
    });
    const tokens = mb.lossMask.reduce((a, b) => a + b, 0);
    const gradArrays = new Map(names.map((n, i) => [n, (grads[i].dataSync() as Float32Array).map((g) => g / tokens)]));
    if ((step + 1) % 10 === 0)
      console.log(
        `full fine-tune step ${step + 1}/${schedule.steps}: loss ${(loss.dataSync()[0] / tokens).toFixed(4)}`,
      );
    tf.dispose([loss, ...grads]);
    clipGlobalNorm(gradArrays, 1);
    adamwStep(params, gradArrays, adam, learningRate(step, schedule), {
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0,
    });
  }
  mkdirSync(tunedDir, { recursive: true });
  writeFileSync(join(tunedDir, 'config.json'), JSON.stringify(base.rawConfig, null, 2) + '\n');
  for (const f of base.extraFiles) copyFileSync(join(base.dir, f), join(tunedDir, f));
  writeFileSync(
    join(tunedDir, 'model.safetensors'),
    encodeSafetensors(Object.fromEntries(names.map((n) => [n, { data: params.get(n)!, shape: shapes.get(n)! }])), {
      format: 'pt',
    }),
  );
}

const baseWeights = loadWeights(base).weights;
const frozen = new FrozenBase(base.config, baseWeights);
const tuned = await openModelDir(tunedDir);
const tunedBase = new FrozenBase(tuned.config, loadWeights(tuned).weights);
const fullAccuracy = accuracy(predict(lm, tunedBase, tok, data.eval));
console.log(`full fine-tune: held-out exact match ${(100 * fullAccuracy).toFixed(1)}%`);

const rows: { rank: number; relativeError: Record<string, number>; totalRelativeError: number; exactMatch: number }[] =
  [];
for (const rank of ranks) {
  const out = join(o.out, `extracted-r${rank}`);
  const { modules } = await extractCommand({ base: DEMO_MODEL_DIR, tuned: tunedDir, rank, out }, () => {});
  const adapter = readAdapterDir(out, base.config);
  const tensors = adapter.spec.map((t) => tf.tensor2d(adapter.state.get(t.name)!, t.shape));
  const exactMatch = accuracy(
    predict(
      lm,
      withLora(
        frozen,
        loraBranches(adapter.spec, (i) => tensors[i]),
        loraScaling(adapter.lora),
      ),
      tok,
      data.eval,
    ),
  );
  tf.dispose(tensors);
  const kinds = modules.map((m) => ({ ...m, kind: describeModule(m.module).kind }));
  const totalRelativeError = Math.sqrt(
    modules.reduce((s, m) => s + m.error ** 2, 0) / modules.reduce((s, m) => s + m.deltaNorm ** 2, 0),
  );
  rows.push({ rank, relativeError: meanByKind(kinds, (m) => m.relativeError), totalRelativeError, exactMatch });
  console.log(
    `rank ${rank}: relative error ${totalRelativeError.toFixed(3)}, exact match ${(100 * exactMatch).toFixed(1)}%`,
  );
}

const kinds = Object.keys(rows[0].relativeError);
console.log(
  markdownTable(
    ['rank', 'exact match', 'relative error (all modules)', ...kinds],
    rows.map((r) => [
      r.rank,
      `${(100 * r.exactMatch).toFixed(1)}%`,
      r.totalRelativeError.toFixed(3),
      ...kinds.map((k) => r.relativeError[k].toFixed(3)),
    ]),
  ),
);
writeJson(o.out, 'extract-demo.json', {
  steps: Number(o.steps),
  lr: Number(o.lr),
  fullFineTuneExactMatch: fullAccuracy,
  rows,
});
writeFigure(
  o.out,
  'extract-error',
  lineChartSvg({
    title: 'LoRA extracted from a full fine-tune: ‖ΔW − BA‖_F / ‖ΔW‖_F and exact match',
    xAxis: 'rank k',
    yAxis: 'relative error  |  exact match',
    columns: 2,
    panels: [
      {
        title: 'relative error, mean over layers',
        xLabels: ranks.map(String),
        series: kinds.map((k) => ({ name: k, values: rows.map((r) => r.relativeError[k]) })),
      },
      {
        title: 'held-out exact match',
        xLabels: ranks.map(String),
        series: [
          { name: 'extracted LoRA', values: rows.map((r) => r.exactMatch) },
          { name: 'full fine-tune', values: rows.map(() => fullAccuracy), dashed: true },
        ],
      },
    ],
  }),
);
console.log(`wrote ${o.out}`);
