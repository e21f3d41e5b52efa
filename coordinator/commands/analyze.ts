/**
 * `loramesh analyze ADAPTER [--model DIR]`: per adapted matrix, the spectrum of ΔW = (α/r)·B·A,
 * its effective ranks and energy shares, and with the base model the amplification of W (LoRA
 * paper Table 7). `loramesh analyze ADAPTER_A ADAPTER_B`: φ between the two adapters' A matrices
 * per module (Figures 3 and 4). Writes JSON, SVG and PNG and prints a table.
 */
import { basename, join, resolve } from 'node:path';
import type { ModelConfig } from '../../shared/config.ts';
import { amplificationFigure, spectraFigure, subspaceFigure } from '../../shared/analysis/figures.ts';
import {
  analyzeAdapter,
  compareAdapters,
  type BaseMatrices,
  type ModuleReport,
  type SubspaceReport,
} from '../../shared/analysis/report.ts';
import { baseMatrices, loadAdapterMatrices, writeFigure, writeJson } from '../io/analysis-io.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';

export interface AnalyzeOptions {
  model?: string;
  out?: string;
  seed: number;
}

export interface Base {
  config: ModelConfig;
  dir: string;
  matrices: BaseMatrices;
}

async function openBase(dir: string): Promise<Base> {
  const model = await openModelDir(dir);
  return {
    config: model.config,
    dir: model.dir,
    matrices: baseMatrices(model.config, loadWeights(model).weights, `--model ${dir}`),
  };
}

export function markdownTable(headers: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  return [
    `| ${headers.join(' | ')} |`,
    `|${headers.map(() => '---').join('|')}|`,
    ...cells.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

const f = (x: number, digits = 3) => (Number.isFinite(x) ? x.toPrecision(digits) : String(x));

function spectrumTable(reports: ModuleReport[]): string {
  const withBase = reports.some((m) => m.amplification);
  const headers = [
    'module',
    'r',
    'σ₁',
    '‖ΔW‖_F',
    'entropy rank',
    'rank 90%',
    'top-1 share',
    ...(withBase ? ['‖UᵀWV‖ ΔW', 'W top', 'random', 'amplification'] : []),
  ];
  return markdownTable(
    headers,
    reports.map((m) => [
      m.module,
      m.r,
      f(m.spectrum.singularValues[0]),
      f(m.spectrum.frobenius),
      f(m.spectrum.entropyRank),
      m.spectrum.energyRank90,
      f(m.spectrum.topShares.top1),
      ...(m.amplification
        ? [
            f(m.amplification.projectedOnDelta),
            f(m.amplification.projectedOnWeight),
            f(m.amplification.projectedOnRandom),
            f(m.amplification.factor),
          ]
        : []),
    ]),
  );
}

export function subspaceTable(reports: SubspaceReport[]): string {
  return markdownTable(
    ['module', 'r₁', 'r₂', 'φ(1,1)', 'random', 'φ(1,r₂)', 'random', 'φ(r₁,r₂)', 'random'],
    reports.map((m) => [
      m.module,
      m.r1,
      m.r2,
      f(m.summary.top1),
      f(m.summary.top1Random),
      f(m.summary.top1InAll),
      f(m.summary.top1InAllRandom),
      f(m.summary.all),
      f(m.summary.allRandom),
    ]),
  );
}

/** Mean of a number per module kind, e.g. the amplification factor of all q_proj layers. */
export function meanByKind<T extends { kind: string }>(items: T[], value: (item: T) => number): Record<string, number> {
  const sums = new Map<string, number[]>();
  for (const item of items) sums.set(item.kind, [...(sums.get(item.kind) ?? []), value(item)]);
  return Object.fromEntries([...sums].map(([kind, xs]) => [kind, xs.reduce((a, b) => a + b, 0) / xs.length]));
}

/** One adapter: reports, analysis.json, spectra (+ amplification) figures in outDir. */
export function analyzeOne(
  adapterDir: string,
  outDir: string,
  base: Base | undefined,
  seed: number,
  title = basename(resolve(adapterDir)),
) {
  const adapter = loadAdapterMatrices(adapterDir, base?.config);
  const modules = analyzeAdapter(adapter, base?.matrices, seed);
  const summary = {
    entropyRank: meanByKind(modules, (m) => m.spectrum.entropyRank),
    top1Share: meanByKind(modules, (m) => m.spectrum.topShares.top1),
    ...(base ? { amplification: meanByKind(modules, (m) => m.amplification!.factor) } : {}),
  };
  const files = [
    writeJson(outDir, 'analysis.json', {
      adapter: resolve(adapterDir),
      model: base?.dir ?? null,
      r: adapter.lora.r,
      alpha: adapter.lora.alpha,
      scale: adapter.scale,
      targets: adapter.lora.targetModules,
      summary,
      modules,
    }),
  ];
  files.push(...writeFigure(outDir, 'spectra', spectraFigure(modules, `Singular values of ΔW = (α/r)·B·A — ${title}`)));
  if (base)
    files.push(
      ...writeFigure(
        outDir,
        'amplification',
        amplificationFigure(modules, `‖UᵀWV‖_F: W projected on ΔW, W and random directions — ${title}`),
      ),
    );
  return { modules, summary, files };
}

/** Two adapters: φ per common module, subspace.json and the heatmap figure in outDir. */
export function compareTwo(
  firstDir: string,
  secondDir: string,
  outDir: string,
  config?: ModelConfig,
  names?: [string, string],
) {
  const first = loadAdapterMatrices(firstDir, config);
  const second = loadAdapterMatrices(secondDir, config);
  const { modules, unmatched } = compareAdapters(first, second);
  const labels = names ?? [
    `${basename(resolve(firstDir))} (r=${first.r})`,
    `${basename(resolve(secondDir))} (r=${second.r})`,
  ];
  const files = [
    writeJson(outDir, 'subspace.json', {
      adapters: [resolve(firstDir), resolve(secondDir)],
      r: [first.r, second.r],
      unmatched,
      modules,
    }),
  ];
  const title = `φ(A₁, A₂, i, j) = ‖U_iᵀU_j‖²_F / min(i, j) — ${labels[0]} vs ${labels[1]}`;
  files.push(...writeFigure(outDir, 'subspace', subspaceFigure(modules, title, labels)));
  // A zoom on the top directions: j ≤ r₁ when A₂ has the larger rank, else i, j ≤ 8.
  const zoom = second.r > first.r ? first.r : first.r > 8 ? 8 : 0;
  if (zoom > 0)
    files.push(
      ...writeFigure(outDir, 'subspace-zoom', subspaceFigure(modules, `${title}, i, j ≤ ${zoom}`, labels, zoom, zoom)),
    );
  return { modules, unmatched, files };
}

export async function analyzeCommand(
  adapters: string[],
  o: AnalyzeOptions,
  log: (line: string) => void = console.log,
): Promise<string[]> {
  const base = o.model ? await openBase(o.model) : undefined;
  if (adapters.length === 1) {
    const out = o.out ?? join(adapters[0], 'analysis');
    const { modules, summary, files } = analyzeOne(adapters[0], out, base, o.seed);
    log(spectrumTable(modules));
    log(
      'mean per module kind: ' +
        `${JSON.stringify(summary, (_, v) => (typeof v === 'number' ? Number(v.toPrecision(3)) : v))}`,
    );
    if (!base) log('(add --model DIR for the amplification of the base weights, LoRA paper Table 7)');
    log(`wrote ${files.join(', ')}`);
    return files;
  }
  const out = o.out ?? join(adapters[0], `subspace-vs-${basename(resolve(adapters[1]))}`);
  const { modules, unmatched, files } = compareTwo(adapters[0], adapters[1], out, base?.config);
  log(subspaceTable(modules));
  if (unmatched.length > 0) log(`only in one adapter (not compared): ${unmatched.join(', ')}`);
  log(`wrote ${files.join(', ')}`);
  return files;
}
