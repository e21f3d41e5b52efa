/** What a sweep is asked for and what each of its runs gives: shared by sweep-cmd.ts and sweep-report.ts. */
import type { LinearModule } from '../../shared/config.ts';

export interface SweepOptions {
  model: string;
  ranks: number[];
  targetSets: LinearModule[][];
  steps: number;
  globalBatch: number;
  lr: number;
  alpha: number;
  seed: number;
  trainSize: number;
  evalSize: number;
  /** the two ranks whose adapters' subspaces are compared (Figure 3), on the first set with q and v */
  compare: [number, number];
  /** also train the larger compared rank with seed + 1, for the seed-vs-seed comparison (Figure 4) */
  seedRun: boolean;
  out: string;
}

export interface SweepRun {
  runId: string;
  runDir: string;
  rank: number;
  seed: number;
  targets: LinearModule[];
  /** "q+v" etc. */
  label: string;
  adapterParameters: number;
  evalLossBefore: number;
  evalLoss: number;
  exactMatch: number;
  trainSeconds: number;
}
