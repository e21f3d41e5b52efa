/**
 * What `loramesh sweep` writes after training: sweep.json, table.md (eval loss and exact match per
 * rank × target set, the paper's Table 6; amplification per rank, Table 7; subspace similarity
 * summaries, Figures 3 and 4) and the figures, as JSON + SVG + PNG under the results folder.
 */
import { join } from 'node:path';
import { heatmapSvg } from '../../shared/analysis/plot-heatmap.ts';
import type { ModuleReport, SubspaceReport } from '../../shared/analysis/report.ts';
import { writeAtomic } from '../io/run-dir.ts';
import { writeFigure, writeJson } from '../io/analysis-io.ts';
import { analyzeOne, compareTwo, markdownTable, meanByKind, type Base } from './analyze.ts';
import type { LinearModule } from '../../shared/config.ts';
import type { SweepOptions, SweepRun } from './sweep-types.ts';

export interface SweepReportInput {
  options: SweepOptions;
  out: string;
  runs: SweepRun[];
  /** exact match of the base model without an adapter */
  baseline: number;
  base: Base;
  /** training time summed over runs (without the exact-match evaluation) */
  trainSeconds: number;
}

/** "q+v" for [q_proj, v_proj]. */
export const targetLabel = (targets: string[]) => targets.map((t) => t.replace(/_proj$/, '')).join('+');

/** The first target set holding both q_proj and v_proj (the paper's Figure 3 adapters), else the first set. */
export const compareSet = (sets: LinearModule[][]) =>
  sets.find((s) => s.includes('q_proj') && s.includes('v_proj')) ?? sets[0];

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const p3 = (x: number) => x.toPrecision(3);

/** Mean over layers per module kind of each amplification number (Table 7 rows). */
function amplificationRows(rank: number, modules: ModuleReport[]): (string | number)[][] {
  const amp = modules.filter((m) => m.amplification);
  const mean = (value: (m: ModuleReport) => number) => meanByKind(amp, value);
  const [delta, onDelta, onWeight, onRandom, factor, weight] = [
    mean((m) => m.amplification!.deltaNorm),
    mean((m) => m.amplification!.projectedOnDelta),
    mean((m) => m.amplification!.projectedOnWeight),
    mean((m) => m.amplification!.projectedOnRandom),
    mean((m) => m.amplification!.factor),
    mean((m) => m.amplification!.weightNorm),
  ];
  return Object.keys(delta).map((kind) => [
    rank,
    kind,
    p3(weight[kind]),
    p3(delta[kind]),
    p3(onDelta[kind]),
    p3(onWeight[kind]),
    p3(onRandom[kind]),
    p3(factor[kind]),
  ]);
}

/** Mean over layers per module kind of the φ summaries. */
function subspaceRows(what: string, modules: SubspaceReport[]): (string | number)[][] {
  const mean = (value: (m: SubspaceReport) => number) => meanByKind(modules, value);
  const [top1, top1Random, top1InAll, random1, all, randomAll] = [
    mean((m) => m.summary.top1),
    mean((m) => m.summary.top1Random),
    mean((m) => m.summary.top1InAll),
    mean((m) => m.summary.top1InAllRandom),
    mean((m) => m.summary.all),
    mean((m) => m.summary.allRandom),
  ];
  return Object.keys(top1).map((kind) => [
    what,
    kind,
    p3(top1[kind]),
    p3(top1Random[kind]),
    p3(top1InAll[kind]),
    p3(random1[kind]),
    p3(all[kind]),
    p3(randomAll[kind]),
  ]);
}

export function writeSweepReport(input: SweepReportInput, log: (line: string) => void): void {
  const { options: o, out, runs, base } = input;
  const files: string[] = [];
  // Per-run analyses: spectra, effective ranks, amplification of W.
  const analyses = new Map<string, ModuleReport[]>();
  const runSummaries = runs.map((run) => {
    const {
      modules,
      summary,
      files: written,
    } = analyzeOne(run.runDir, join(out, 'analysis', run.runId), base, o.seed, `r=${run.rank} ${run.label}`);
    analyses.set(run.runId, modules);
    files.push(...written);
    return { ...run, analysis: summary };
  });
  const main = runs.filter((r) => r.seed === o.seed);
  const find = (rank: number, label: string, seed = o.seed) =>
    runs.find((r) => r.rank === rank && r.label === label && r.seed === seed);

  // Table 6: rows target sets, columns ranks.
  const labels = o.targetSets.map(targetLabel);
  const cell = (label: string, rank: number, value: (r: SweepRun) => string) => {
    const run = find(rank, label);
    return run ? value(run) : '-';
  };
  const accuracyTable = markdownTable(
    ['targets \\ r', ...o.ranks.map(String)],
    labels.map((l) => [l, ...o.ranks.map((r) => cell(l, r, (run) => pct(run.exactMatch)))]),
  );
  const lossTable = markdownTable(
    ['targets \\ r', ...o.ranks.map(String)],
    labels.map((l) => [l, ...o.ranks.map((r) => cell(l, r, (run) => run.evalLoss.toFixed(4)))]),
  );
  const paramsTable = markdownTable(
    ['targets \\ r', ...o.ranks.map(String)],
    labels.map((l) => [l, ...o.ranks.map((r) => cell(l, r, (run) => String(run.adapterParameters)))]),
  );
  files.push(
    ...writeFigure(
      out,
      'sweep-exact-match',
      heatmapSvg({
        title: `Held-out exact match after ${o.steps} steps (base model: ${pct(input.baseline)})`,
        rowAxis: 'target modules',
        colAxis: 'rank r',
        annotate: true,
        panelWidth: 70 * o.ranks.length,
        format: (v: number) => (Number.isFinite(v) ? pct(v) : '-'),
        panels: [
          {
            title: 'exact match',
            values: labels.map((l) => o.ranks.map((r) => find(r, l)?.exactMatch ?? NaN)),
            rowLabels: labels,
            colLabels: o.ranks.map(String),
          },
        ],
      }),
    ),
  );

  // Figures 3 and 4 on the first set with q and v.
  const setLabel = targetLabel(compareSet(o.targetSets));
  const [low, high] = o.compare;
  const subspace: Record<string, { modules: SubspaceReport[] }> = {};
  const subspaceSummary: (string | number)[][] = [];
  const [lowRun, highRun, seedRun] = [find(low, setLabel), find(high, setLabel), find(high, setLabel, o.seed + 1)];
  if (lowRun && highRun && low !== high) {
    const name = `subspace-r${low}-vs-r${high}`;
    const result = compareTwo(lowRun.runDir, highRun.runDir, join(out, name), base.config, [`r=${low}`, `r=${high}`]);
    subspace[name] = { modules: result.modules };
    files.push(...result.files);
    subspaceSummary.push(...subspaceRows(`r=${low} vs r=${high}`, result.modules));
  }
  if (highRun && seedRun) {
    const name = `subspace-r${high}-seeds`;
    const result = compareTwo(highRun.runDir, seedRun.runDir, join(out, name), base.config, [
      `r=${high} seed ${o.seed}`,
      `r=${high} seed ${o.seed + 1}`,
    ]);
    subspace[name] = { modules: result.modules };
    files.push(...result.files);
    subspaceSummary.push(...subspaceRows(`r=${high} seed ${o.seed} vs ${o.seed + 1}`, result.modules));
  }

  // Table 7: amplification per rank on the compared target set, mean over layers.
  const ampRows = main
    .filter((r) => r.label === setLabel)
    .flatMap((r) => amplificationRows(r.rank, analyses.get(r.runId)!));
  const ampTable = markdownTable(
    ['r', 'module', '‖W‖_F', '‖ΔW‖_F', '‖UᵀWV‖ ΔW dirs', 'W top dirs', 'random dirs', 'amplification'],
    ampRows,
  );
  const subspaceTable = markdownTable(
    ['adapters', 'module', 'φ(1,1)', 'random', 'φ(1,r₂)', 'random', 'φ(r₁,r₂)', 'random'],
    subspaceSummary,
  );
  const effTable = markdownTable(
    ['run', 'mean entropy rank (per kind)', 'mean top-1 share of ‖ΔW‖²'],
    runSummaries.map((r) => [
      r.runId,
      Object.entries(r.analysis.entropyRank)
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join(', '),
      Object.entries(r.analysis.top1Share)
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join(', '),
    ]),
  );
  const md = [
    `# LoRA sweep on the demo task ` +
      `(${o.steps} steps × ${o.globalBatch} sequences, lr ${o.lr}, α ${o.alpha}, seed ${o.seed})`,
    '',
    `Base model exact match: ${pct(input.baseline)} on ${o.evalSize} held-out strings. ` +
      `Training time ${input.trainSeconds.toFixed(0)} s for ${runs.length} runs ` +
      '(in-process, wasm, on a shared 2-core machine).',
    '',
    '## Held-out exact match',
    '',
    accuracyTable,
    '',
    '## Held-out eval loss (mean token loss)',
    '',
    lossTable,
    '',
    '## Trainable parameters',
    '',
    paramsTable,
    '',
    `## Amplification (${setLabel}, mean over layers; k = r directions)`,
    '',
    ampTable,
    '',
    `## Subspace similarity (${setLabel}, mean over layers)`,
    '',
    subspaceTable,
    '',
    '## Effective rank of ΔW',
    '',
    effTable,
    '',
  ].join('\n');
  writeAtomic(join(out, 'table.md'), md);
  files.push(join(out, 'table.md'));
  files.push(
    writeJson(out, 'sweep.json', {
      options: o,
      baseline: input.baseline,
      trainSeconds: input.trainSeconds,
      runs: runSummaries,
      amplification: Object.fromEntries(
        main
          .filter((r) => r.label === setLabel)
          .map((r) => [r.runId, analyses.get(r.runId)!.map((m) => ({ module: m.module, ...m.amplification }))]),
      ),
      subspace: Object.fromEntries(
        Object.entries(subspace).map(([k, v]) => [
          k,
          v.modules.map((m) => ({ module: m.module, r1: m.r1, r2: m.r2, ...m.summary })),
        ]),
      ),
    }),
  );
  log(md);
  log(`wrote ${files.length} files under ${out}`);
}
