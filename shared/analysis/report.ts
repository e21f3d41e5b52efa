/**
 * Per-module reports over whole adapters, I/O-free: the spectrum of every ΔW = scale·B·A, its
 * amplification of the base W when the base is given, and φ between two adapters' A matrices.
 * Callers load the matrices (coordinator/io/analysis-io.ts) and write the results.
 */
import type { Matrix } from 'ml-matrix';
import { ErrorCodes, fail } from '../errors.ts';
import { amplification, type Amplification } from './amplification.ts';
import { summarizeSpectrum, type SpectrumSummary } from './spectrum.ts';
import { randomSubspaceSimilarity, subspaceSimilarity } from './subspace.ts';
import { lowRankSvd, rightSingularVectors } from './svd.ts';

/** One adapter as float64 matrices by module path (e.g. model.layers.0.self_attn.q_proj). */
export interface AdapterMatrices {
  /** where it came from, for messages */
  source: string;
  r: number;
  /** α/r (or α/√r with rsLoRA) */
  scale: number;
  /** A (r, d_in), B (d_out, r) */
  modules: Map<string, { A: Matrix; B: Matrix }>;
}

/** The frozen base, as much as the amplification needs. */
export interface BaseMatrices {
  /** W (d_out, d_in) whatever the checkpoint's storage layout */
  weight(modulePath: string): Matrix;
  /** W's singular values, descending (cached by the implementation: they do not depend on the adapter) */
  weightValues(modulePath: string): number[];
}

export interface ModuleReport {
  module: string;
  layer: number | null;
  kind: string;
  dOut: number;
  dIn: number;
  r: number;
  spectrum: SpectrumSummary;
  /** with a base model: ‖UᵀWV‖_F for U, V from ΔW, W and random, over k = r directions */
  amplification?: Amplification;
}

export interface SubspaceReport {
  module: string;
  layer: number | null;
  kind: string;
  dIn: number;
  r1: number;
  r2: number;
  /** phi[i−1][j−1] = φ(A₁, A₂, i, j) */
  phi: number[][];
  /** headline numbers and what random subspaces would give */
  summary: {
    /** φ(1, 1): do the two strongest input directions coincide? */
    top1: number;
    top1Random: number;
    /** φ(1, r₂): how much of A₁'s strongest direction lies in A₂'s whole subspace */
    top1InAll: number;
    top1InAllRandom: number;
    /** φ(r₁, r₂) */
    all: number;
    allRandom: number;
  };
}

/** Layer index and module kind from a path like model.layers.3.self_attn.q_proj. */
export function describeModule(path: string): { layer: number | null; kind: string; label: string } {
  const layer = /\.(\d+)\./.exec(path);
  const kind = path.slice(path.lastIndexOf('.') + 1);
  return { layer: layer ? Number(layer[1]) : null, kind, label: layer ? `layer ${layer[1]} ${kind}` : path };
}

export function analyzeAdapter(adapter: AdapterMatrices, base?: BaseMatrices, seed = 0): ModuleReport[] {
  const reports: ModuleReport[] = [];
  for (const [module, { A, B }] of adapter.modules) {
    const name = `${adapter.source}: ${module}`;
    const svd = lowRankSvd(B, A, adapter.scale, name);
    const { layer, kind } = describeModule(module);
    const report: ModuleReport = {
      module,
      layer,
      kind,
      dOut: B.rows,
      dIn: A.columns,
      r: A.rows,
      spectrum: summarizeSpectrum(svd.values),
    };
    if (base) {
      const W = base.weight(module);
      if (W.rows !== B.rows || W.columns !== A.columns)
        fail(
          ErrorCodes.SHAPE,
          `${name}: ΔW is ${B.rows}×${A.columns} but the base weight is ${W.rows}×${W.columns}; ` +
            "is this the adapter's base model?",
        );
      report.amplification = amplification(W, svd, base.weightValues(module), A.rows, seed);
    }
    reports.push(report);
  }
  return reports;
}

/**
 * φ per module both adapters adapt; modules only one of them has are listed in `unmatched`.
 * Shapes must agree (same base model): a mismatch is an error, not a skipped module.
 */
export function compareAdapters(
  first: AdapterMatrices,
  second: AdapterMatrices,
): { modules: SubspaceReport[]; unmatched: string[] } {
  const modules: SubspaceReport[] = [];
  const unmatched = [...first.modules.keys(), ...second.modules.keys()].filter(
    (m) => !(first.modules.has(m) && second.modules.has(m)),
  );
  for (const [module, one] of first.modules) {
    const two = second.modules.get(module);
    if (!two) continue;
    if (one.A.columns !== two.A.columns || one.B.rows !== two.B.rows) {
      fail(
        ErrorCodes.SHAPE,
        `${module}: ${first.source} has ΔW ${one.B.rows}×${one.A.columns} ` +
          `but ${second.source} has ${two.B.rows}×${two.A.columns}; expected adapters of the same base model`,
      );
    }
    const phi = subspaceSimilarity(
      rightSingularVectors(one.A, `${first.source}: ${module}.lora_A`),
      rightSingularVectors(two.A, `${second.source}: ${module}.lora_A`),
      module,
    );
    const [r1, r2, d] = [one.A.rows, two.A.rows, one.A.columns];
    const { layer, kind } = describeModule(module);
    modules.push({
      module,
      layer,
      kind,
      dIn: d,
      r1,
      r2,
      phi,
      summary: {
        top1: phi[0][0],
        top1Random: randomSubspaceSimilarity(1, 1, d),
        top1InAll: phi[0][r2 - 1],
        top1InAllRandom: randomSubspaceSimilarity(1, r2, d),
        all: phi[r1 - 1][r2 - 1],
        allRandom: randomSubspaceSimilarity(r1, r2, d),
      },
    });
  }
  if (modules.length === 0)
    fail(
      ErrorCodes.SHAPE,
      `${first.source} and ${second.source} adapt no module in common ` +
        `(${[...first.modules.keys()][0]} vs ${[...second.modules.keys()][0]})`,
    );
  return { modules, unmatched };
}

/** Modules grouped by kind (q_proj, v_proj, …), each list in layer order: the figures' panels. */
export function byKind<T extends { kind: string; layer: number | null }>(items: T[]): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) groups.set(item.kind, [...(groups.get(item.kind) ?? []), item]);
  for (const list of groups.values()) list.sort((a, b) => (a.layer ?? 0) - (b.layer ?? 0));
  return groups;
}
