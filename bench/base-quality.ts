/**
 * `npm run bench:quality` (issue 16, quality): what holding the frozen base compact costs the demo
 * task. For each base (float32 without --base-format, bf16, int8, nf4, nf4 with double
 * quantization) and each seed, the demo's LoRA (DEMO_LORA, DEMO_TRAIN with the seed changed, data
 * demoTaskData(2000, DEMO_EVAL_SIZE, seed)) is trained in-process on that base, then measured on the
 * held-out set: exact match of the base alone, of the adapter served on the same compact base it
 * was trained on, of the adapter merged into the original float32 weights (QLoRA's mismatch: the
 * quantization error is no longer there), and the run's final eval loss (on the base it trained on).
 * Writes bench/results/base-quality.json and the base-quality section of bench/RESULTS.md
 * (quick mode: base-quality.quick.json only).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as tf from '@tensorflow/tfjs-core';
import { DEMO_LORA, DEMO_TRAIN } from '../coordinator/commands/demo.ts';
import { compactBaseFile } from '../coordinator/io/compact-cache.ts';
import { DEMO_EVAL_SIZE, demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { loadWeights, openModelDir, type ModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { runTraining } from '../coordinator/run/train.ts';
import { initBackend } from '../node/backend.ts';
import { loadCompactBaseFile } from '../node/compact-file.ts';
import { toExample } from '../shared/data/demo-tasks.ts';
import { accuracy, predict } from '../shared/data/exact-match.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { adapterSpec, mergeAdapter } from '../shared/lora/adapter.ts';
import { FrozenBase, withAdapter } from '../shared/lora/params.ts';
import { createModel } from '../shared/model/causal-lm.ts';
import { type BaseFormatSpec, describeBaseSpec, resolveBaseSpec } from '../shared/quant/formats.ts';
import { cliFlags, machine, type Machine, provenance, replaceSection, writeJson } from './lib/results.ts';
import {
  GOAL_BASE,
  GOAL_POINTS,
  type QualityGoal,
  qualityGoal,
  type QualityRun,
  type QualitySummary,
  type Spread,
  summarise,
} from './lib/quality.ts';

/** The bases compared; null: no --base-format, the float32 path. */
export const QUALITY_BASES: { label: string; spec: BaseFormatSpec | null }[] = [
  { label: 'float32', spec: null },
  { label: 'bf16', spec: { format: 'bf16' } },
  { label: 'int8', spec: { format: 'int8' } },
  { label: 'nf4', spec: { format: 'nf4' } },
  { label: 'nf4+dq', spec: { format: 'nf4', doubleQuant: true } },
];

export interface QualityBenchOptions {
  quick: boolean;
  /** write bench/results and RESULTS.md (default true; the smoke test passes false) */
  write?: boolean;
  /** default full [7, 8, 9], quick [7] */
  seeds?: number[];
  /** optimizer steps per run (default full DEMO_TRAIN.steps, quick 50) */
  steps?: number;
  /** training examples per run (default 2000, the demo's) */
  trainSize?: number;
  /** held-out examples (default DEMO_EVAL_SIZE) */
  evalSize?: number;
  /** which bases, by label (default all of QUALITY_BASES) */
  bases?: string[];
  command?: string;
  log?: (line: string) => void;
}

export interface QualityResult {
  date: string;
  machine: Machine;
  command: string;
  quick: boolean;
  backend: string;
  settings: { lora: typeof DEMO_LORA; steps: number; globalBatch: number; trainSize: number; evalSize: number };
  seeds: number[];
  bases: { label: string; format: string }[];
  runs: QualityRun[];
  summaries: QualitySummary[];
  goal: QualityGoal | null;
}

export async function runBaseQualityBench(opts: QualityBenchOptions): Promise<QualityResult> {
  const log = opts.log ?? console.log;
  const seeds = opts.seeds ?? (opts.quick ? [7] : [7, 8, 9]);
  const steps = opts.steps ?? (opts.quick ? 50 : DEMO_TRAIN.steps);
  const trainSize = opts.trainSize ?? 2000;
  const evalSize = opts.evalSize ?? DEMO_EVAL_SIZE;
  const bases = opts.bases
    ? opts.bases.map((label) => QUALITY_BASES.find((b) => b.label === label) ?? unknownBase(label))
    : QUALITY_BASES;
  const command = opts.command ?? `npm run bench:quality${opts.quick ? ' -- --quick' : ''}`;
  const date = new Date().toISOString();
  const backend = await initBackend('wasm'); // the demo's default backend
  const dir = await openModelDir(DEMO_MODEL_DIR);
  const weights = loadWeights(dir).weights;
  const scratch = mkdtempSync(join(tmpdir(), 'loramesh-bench-quality-'));
  const runs: QualityRun[] = [];
  try {
    const frozen = new Map<string, FrozenBase>();
    for (const b of bases) frozen.set(b.label, await frozenBaseOf(dir, weights, b.spec, join(scratch, 'cache'), log));
    const total = seeds.length * bases.length;
    for (const seed of seeds) {
      for (const b of bases) {
        const run = await trainAndMeasure(dir, weights, frozen.get(b.label)!, b, seed, {
          steps,
          trainSize,
          evalSize,
          scratch,
          progress: (line) => log(`    ${line}`),
        });
        runs.push(run);
        log(`  [${runs.length}/${total}] ${describeRun(run)}`);
      }
    }
    for (const base of frozen.values()) base.dispose();
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  const summaries = summarise(runs);
  const result: QualityResult = {
    date,
    machine: machine(),
    command,
    quick: opts.quick,
    backend: backend.name,
    settings: { lora: DEMO_LORA, steps, globalBatch: DEMO_TRAIN.globalBatch, trainSize, evalSize },
    seeds,
    bases: bases.map((b) => ({ label: b.label, format: b.spec ? describeBaseSpec(b.spec) : 'float32 tensors' })),
    runs,
    summaries,
    goal: qualityGoal(summaries),
  };
  for (const line of summaryLines(result)) log(line);
  if (opts.write ?? true) writeQualityResults(result, log);
  return result;
}

function unknownBase(label: string): never {
  fail(
    ErrorCodes.CONFIG,
    `bases has ${JSON.stringify(label)}; expected labels of ${QUALITY_BASES.map((b) => b.label)}`,
  );
}

/** The frozen base a run with this spec computes on: the float32 tensors, or its compact base file as a run loads it. */
async function frozenBaseOf(
  dir: ModelDir,
  weights: Map<string, tf.Tensor>,
  spec: BaseFormatSpec | null,
  cacheDir: string,
  log: (line: string) => void,
): Promise<FrozenBase> {
  if (!spec) return new FrozenBase(dir.config, weights);
  const resolved = resolveBaseSpec(spec);
  // The same cache the runs below use: they find this very file (a cache hit), so the bits match.
  const file = await compactBaseFile(dir, resolved, cacheDir, (line) => log(`  ${line}`));
  return new FrozenBase(dir.config, loadCompactBaseFile(dir.config, file.path, resolved));
}

async function trainAndMeasure(
  dir: ModelDir,
  weights: Map<string, tf.Tensor>,
  base: FrozenBase,
  b: { label: string; spec: BaseFormatSpec | null },
  seed: number,
  o: { steps: number; trainSize: number; evalSize: number; scratch: string; progress: (line: string) => void },
): Promise<QualityRun> {
  const started = performance.now();
  const model = createModel(dir.config);
  const tok = dir.tokenizer;
  const data = demoTaskData(o.trainSize, o.evalSize, seed);
  const exactMatch = (params: Parameters<typeof predict>[1]) => 100 * accuracy(predict(model, params, tok, data.eval));
  const before = exactMatch(base);
  const train = { ...DEMO_TRAIN, steps: o.steps, seed };
  const result = await runTraining({
    model: dir,
    examples: demoExamples(tok, data),
    evalExamples: data.eval.map((s) => toExample(tok, s)),
    weights,
    config: {
      run: { lora: DEMO_LORA, train, baseFormat: b.spec ? resolveBaseSpec(b.spec) : null },
      deployment: {
        outDir: join(o.scratch, 'runs'),
        inProcess: true,
        localWorkers: 0,
        backend: 'wasm',
        cacheDir: join(o.scratch, 'cache'),
        evalEvery: o.steps, // eval loss before and after training only
      },
    },
    workerOutput: 'ignore',
    progress: false,
    log: () => {},
    onStep: (r) => {
      if (r.step % 50 === 0 && r.step < o.steps) o.progress(`${b.label} seed ${seed}: step ${r.step}/${o.steps}`);
    },
  });
  const sameBase = withAdapter(base, result.adapter, DEMO_LORA, exactMatch);
  const mergedWeights = mergeAdapter(
    dir.config,
    weights,
    adapterSpec(dir.config, DEMO_LORA),
    result.adapter,
    DEMO_LORA,
  );
  const merged = new FrozenBase(dir.config, mergedWeights);
  const mergedMatch = exactMatch(merged);
  merged.dispose();
  for (const [name, t] of mergedWeights) if (t !== weights.get(name)) t.dispose();
  return {
    base: b.label,
    seed,
    exactMatchBefore: before,
    exactMatchSameBase: sameBase,
    exactMatchMerged: mergedMatch,
    evalLossBefore: result.evalLosses[0].loss,
    evalLoss: result.evalLosses[result.evalLosses.length - 1].loss,
    trainLoss: result.metrics[result.metrics.length - 1].loss,
    seconds: (performance.now() - started) / 1000,
  };
}

const pct = (x: number) => `${x.toFixed(1)} %`;
const signed = (x: number, digits = 1) => `${x >= 0 ? '+' : '−'}${Math.abs(x).toFixed(digits)}`;
const meanSd = (s: Spread, digits = 1) => `${s.mean.toFixed(digits)} ± ${s.sd.toFixed(digits)}`;

export function describeRun(r: QualityRun): string {
  return (
    `seed ${r.seed} ${r.base.padEnd(7)}: base alone ${pct(r.exactMatchBefore)}, ` +
    `adapted on the same base ${pct(r.exactMatchSameBase)}, merged into float32 ${pct(r.exactMatchMerged)}, ` +
    `eval loss ${r.evalLoss.toFixed(4)} (before ${r.evalLossBefore.toFixed(3)}), ${r.seconds.toFixed(0)} s`
  );
}

/** One line per base (mean ± sample sd over seeds; Δ: paired by seed against float32) and the goal's line. */
export function summaryLines(r: QualityResult): string[] {
  const lines = r.summaries.map((s) => {
    const vs = s.vsFloat32;
    return (
      `${s.base.padEnd(7)} over ${s.exactMatchSameBase.n} seed${s.exactMatchSameBase.n === 1 ? '' : 's'}: ` +
      'exact match same base ' +
      `${meanSd(s.exactMatchSameBase)} %${vs ? ` (Δ float32 ${signed(vs.sameBase.mean)} points)` : ''}, ` +
      `merged into float32 ${meanSd(s.exactMatchMerged)} %${vs ? ` (Δ ${signed(vs.merged.mean)})` : ''}, ` +
      `eval loss ${meanSd(s.evalLoss, 4)}${vs ? ` (Δ ${signed(vs.evalLoss.mean, 4)})` : ''}, ` +
      `base alone ${meanSd(s.exactMatchBefore)} %`
    );
  });
  return [...lines, goalLine(r)];
}

function goalLine(r: QualityResult): string {
  const paired = r.summaries.find((s) => s.base === GOAL_BASE)?.vsFloat32?.sameBase;
  if (!r.goal || !paired)
    return `goal (NF4 within ${GOAL_POINTS} points of float32): not judged, nf4 or float32 did not run`;
  return (
    `goal (NF4 within ${GOAL_POINTS} points of float32, adapter on the base it trained on): ` +
    `${r.goal.met ? 'met' : 'MISSED'} on the mean, nf4 − float32 = ${signed(r.goal.sameBase)} points ` +
    `(per seed ${signed(paired.min)} to ${signed(paired.max)}, sd ${paired.sd.toFixed(1)} over ${paired.n} ` +
    `seed${paired.n === 1 ? '' : 's'}; merged into float32: ${signed(r.goal.merged)})`
  );
}

export function writeQualityResults(r: QualityResult, log: (line: string) => void): void {
  if (r.quick) {
    log(`  wrote ${writeJson('base-quality.quick', r)} (quick mode leaves RESULTS.md alone)`);
    return;
  }
  log(`  wrote ${writeJson('base-quality', r)}`);
  const cell = (s: Spread, digits = 1) => `${meanSd(s, digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
  const delta = (s: Spread | undefined, digits = 1) =>
    s ? `${signed(s.mean, digits)} (${signed(s.min, digits)} to ${signed(s.max, digits)})` : '—';
  const { settings: t } = r;
  const body = [
    provenance(r.date, r.command, r.machine),
    '',
    `The demo task (reverse + uppercase), LoRA r ${t.lora.r} α ${t.lora.alpha} on ${t.lora.targetModules.join('/')}, ` +
      `${t.steps} steps × ${t.globalBatch} sequences from ${t.trainSize} training examples, trained in-process ` +
      `(${r.backend} backend) on each base, seeds ${r.seeds.join(', ')} (seed: data, split, adapter init and ` +
      `order). Held-out exact match on ${t.evalSize} examples, greedy; eval loss: mean held-out token loss on the ` +
      'base the run trained on. "Same base": the adapter served unmerged on the compact base it trained on; ' +
      '"merged": merged into the original float32 weights (the quantization error is then gone from under it). ' +
      'One example is 0.5 points.',
    '',
    '| base | seed | base alone | same base | merged into float32 | eval loss | train loss | time |',
    '|---|---|---|---|---|---|---|---|',
    ...r.runs.map(
      (x) =>
        `| ${x.base} | ${x.seed} | ${pct(x.exactMatchBefore)} | ${pct(x.exactMatchSameBase)} ` +
        `| ${pct(x.exactMatchMerged)} | ${x.evalLoss.toFixed(4)} | ${x.trainLoss.toFixed(4)} | ${x.seconds.toFixed(0)} s |`,
    ),
    '',
    'Over the seeds: mean ± sample standard deviation (min–max); Δ is paired by seed against float32, mean (min to max).',
    '',
    '| base | format | exact match, same base | Δ points | merged into float32 | Δ points | eval loss | Δ |',
    '|---|---|---|---|---|---|---|---|',
    ...r.summaries.map((s) => {
      const vs = s.vsFloat32 ?? undefined;
      return (
        `| ${s.base} | ${r.bases.find((b) => b.label === s.base)?.format} | ${cell(s.exactMatchSameBase)} | ${delta(vs?.sameBase)} ` +
        `| ${cell(s.exactMatchMerged)} | ${delta(vs?.merged)} | ${cell(s.evalLoss, 4)} | ${delta(vs?.evalLoss, 4)} |`
      );
    }),
    '',
    `${goalLine(r).replace(/^goal/, 'Goal')}.`,
  ].join('\n');
  replaceSection('base-quality', 'Quality on a compact base (`npm run bench:quality`)', body);
  log('  updated bench/RESULTS.md (base-quality)');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await runBaseQualityBench(cliFlags());
