/**
 * `npm run bench:parallel` (issue 9, item 3): real data parallelism on this machine. The demo
 * model's LoRA training (coordinator/run/train.ts, global batch 32 in 4 micro-batches) run as one
 * process computing everything itself, as 1 local worker process, as 2 single-threaded local
 * worker processes, and as 1 worker process using both cores (multi-threaded wasm) where the
 * backend offers it. Steady-state throughput: the first steps are skipped. With the scale
 * benchmark's overhead curve, the 2-worker point is extended to a projected speed-up for N
 * workers. Writes bench/results/parallel.json, the parallel section of bench/RESULTS.md and
 * bench/results/parallel-scaling.{svg,png} (quick mode: parallel.quick.json only).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeFigure } from '../coordinator/io/analysis-io.ts';
import { DEMO_LORA, DEMO_TRAIN } from '../coordinator/commands/demo.ts';
import { demoExamples, demoTaskData } from '../coordinator/io/dataset.ts';
import { openModelDir } from '../coordinator/io/model-dir.ts';
import { DEMO_MODEL_DIR } from '../coordinator/io/paths.ts';
import { runTraining } from '../coordinator/run/train.ts';
import { lineChartSvg } from '../shared/analysis/plot-lines.ts';
import { initBackend } from '../node/backend.ts';
import {
  BENCH_DIR,
  cliFlags,
  fmt,
  formatFigure,
  machine,
  provenance,
  replaceSection,
  RESULTS_DIR,
  stats,
  writeJson,
  type Figure,
  type Machine,
  type Stats,
} from './lib/results.ts';
import type { ScaleResult } from './scale.ts';

/** The environment variable a multi-threaded wasm backend reads in worker processes (node/backend.ts). */
export const WASM_THREADS_ENV = 'LORAMESH_WASM_THREADS';

export interface ParallelBenchOptions {
  quick: boolean;
  /** write bench/results and RESULTS.md (default true; the smoke test passes false) */
  write?: boolean;
  /** steps per configuration (default full 36, quick 8) */
  steps?: number;
  /** leading steps not measured (process start-up, JIT, first speed estimates) */
  skipSteps?: number;
  /** which configurations to run (default all) */
  configs?: ParallelConfigName[];
  /** the scale benchmark's result for the projection (default bench/results/scale.json when present) */
  scale?: ScaleResult | null;
  command?: string;
  log?: (line: string) => void;
}

export type ParallelConfigName = 'in-process' | '1-worker' | '2-workers' | '1-worker-2-threads';

interface ConfigSpec {
  name: ParallelConfigName;
  label: string;
  processesComputing: number;
  threadsPerProcess: number;
}

const CONFIGS: ConfigSpec[] = [
  {
    name: 'in-process',
    label: 'one process, coordinator computes (1 thread)',
    processesComputing: 1,
    threadsPerProcess: 1,
  },
  { name: '1-worker', label: '1 local worker process (1 thread)', processesComputing: 1, threadsPerProcess: 1 },
  { name: '2-workers', label: '2 local worker processes (1 thread each)', processesComputing: 2, threadsPerProcess: 1 },
  {
    name: '1-worker-2-threads',
    label: '1 local worker process using both cores (2 wasm threads)',
    processesComputing: 1,
    threadsPerProcess: 2,
  },
];

export interface ParallelRow {
  name: ParallelConfigName;
  label: string;
  /** null: measured; else why the row could not be run */
  unavailable: string | null;
  stepMs: Stats;
  sequencesPerSecond: Stats;
  /** loss-bearing tokens per second (the trainer's token count) */
  tokensPerSecond: Stats;
}

export interface ParallelResult {
  name: 'parallel';
  date: string;
  machine: Machine;
  command: string;
  quick: boolean;
  setup: { model: string; globalBatch: number; microBatch: number; steps: number; skipSteps: number; lora: string };
  rows: ParallelRow[];
  /** 2 workers' median sequences/s over each single-process row's, and over the best of them */
  ratios: {
    vsInProcess: number | null;
    vsOneWorker: number | null;
    vsBothCoresProcess: number | null;
    vsBestSingleProcess: number | null;
    best: ParallelConfigName | null;
  };
  /**
   * speed-up over one worker for N workers: N·T / (T + overhead(N)) with the scale benchmark's overhead at compute T
   */
  projection: { source: string; computeMs: number; points: { workers: number; speedup: number }[] } | null;
  figures: Figure[];
}

/** Whether the worker backend reads WASM_THREADS_ENV; without it a "2 threads" row would silently be 1 thread. */
export function wasmThreadsAvailable(): string | null {
  const source = readFileSync(join(BENCH_DIR, '..', 'node', 'backend.ts'), 'utf8');
  return source.includes(WASM_THREADS_ENV)
    ? null
    : `node/backend.ts has no multi-threaded wasm option (${WASM_THREADS_ENV}); tfjs runs wasm single-threaded in Node`;
}

export async function runParallelBench(opts: ParallelBenchOptions): Promise<ParallelResult> {
  const quick = opts.quick;
  const log = opts.log ?? ((line: string) => console.log(line));
  const steps = opts.steps ?? (quick ? 8 : 36);
  const skipSteps = Math.max(1, opts.skipSteps ?? (quick ? 3 : 6));
  if (steps - skipSteps < 2)
    throw new Error(`parallel bench: steps (${steps}) should exceed skipSteps (${skipSteps}) by at least 2`);
  const wanted = opts.configs ?? CONFIGS.map((c) => c.name);
  const date = new Date().toISOString();
  const host = machine();
  const command = opts.command ?? `npm run bench:parallel${quick ? ' -- --quick' : ''}`;
  await initBackend('wasm');
  const model = await openModelDir(DEMO_MODEL_DIR);
  const train = { ...DEMO_TRAIN, steps };
  const examples = demoExamples(model.tokenizer, demoTaskData(2000, 0, train.seed));
  const root = mkdtempSync(join(tmpdir(), 'loramesh-bench-parallel-'));
  log(
    `parallel: demo model, global batch ${train.globalBatch} in micro-batches of ${train.microBatch}, ` +
      `${steps} steps (first ${skipSteps} not measured)`,
  );
  const rows: ParallelRow[] = [];
  try {
    for (const spec of CONFIGS.filter((c) => wanted.includes(c.name))) {
      const unavailable = spec.threadsPerProcess > 1 ? wasmThreadsAvailable() : null;
      if (unavailable) {
        rows.push({
          name: spec.name,
          label: spec.label,
          unavailable,
          stepMs: stats([]),
          sequencesPerSecond: stats([]),
          tokensPerSecond: stats([]),
        });
        log(`  ${spec.label}: unavailable (${unavailable})`);
        continue;
      }
      const periods: number[] = [];
      const tokens: number[] = [];
      let last = 0;
      await runTraining({
        model,
        examples,
        config: {
          run: { lora: DEMO_LORA, train },
          deployment: {
            outDir: join(root, 'runs'),
            runId: spec.name,
            backend: 'wasm',
            cacheDir: join(root, 'cache'),
            inProcess: spec.name === 'in-process',
            localWorkers: spec.name === 'in-process' ? 0 : spec.processesComputing,
          },
        },
        workerEnv:
          spec.threadsPerProcess > 1 ? () => ({ [WASM_THREADS_ENV]: String(spec.threadsPerProcess) }) : undefined,
        workerOutput: 'ignore',
        progress: false,
        log: () => {},
        onStep: (m) => {
          const now = performance.now();
          if (m.step > skipSteps) {
            periods.push(now - last);
            tokens.push(m.tokens);
          }
          last = now;
        },
      });
      const row: ParallelRow = {
        name: spec.name,
        label: spec.label,
        unavailable: null,
        stepMs: stats(periods),
        sequencesPerSecond: stats(periods.map((p) => (1000 * train.globalBatch) / p)),
        tokensPerSecond: stats(periods.map((p, i) => (1000 * tokens[i]) / p)),
      };
      rows.push(row);
      log(
        `  ${spec.label.padEnd(58)} ${fmt(row.stepMs.median).padStart(6)} ms/step  ` +
          `${fmt(row.sequencesPerSecond.median).padStart(6)} seq/s ` +
          `(${fmt(row.sequencesPerSecond.min)}–${fmt(row.sequencesPerSecond.max)})  ` +
          `${fmt(row.tokensPerSecond.median)} tokens/s`,
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }

  const speed = (name: ParallelConfigName) => {
    const r = rows.find((x) => x.name === name && !x.unavailable);
    return r ? r.sequencesPerSecond.median : null;
  };
  const two = speed('2-workers');
  const singles = (['in-process', '1-worker', '1-worker-2-threads'] as const).filter((n) => speed(n) !== null);
  const best = singles.length ? singles.reduce((a, b) => (speed(a)! >= speed(b)! ? a : b)) : null;
  const ratio = (name: ParallelConfigName | null) => (two !== null && name && speed(name) ? two / speed(name)! : null);
  const scale = opts.scale === undefined ? readScale() : opts.scale;
  const result: ParallelResult = {
    name: 'parallel',
    date,
    machine: host,
    command,
    quick,
    setup: {
      model: 'demo-base',
      globalBatch: train.globalBatch,
      microBatch: train.microBatch,
      steps,
      skipSteps,
      lora: `r=${DEMO_LORA.r} on ${DEMO_LORA.targetModules.join(',')}`,
    },
    rows,
    ratios: {
      vsInProcess: ratio('in-process'),
      vsOneWorker: ratio('1-worker'),
      vsBothCoresProcess: ratio('1-worker-2-threads'),
      vsBestSingleProcess: ratio(best),
      best,
    },
    projection: scale ? project(scale) : null,
    figures: rows
      .filter((r) => !r.unavailable)
      .map((r) => ({ ...r.sequencesPerSecond, label: `${r.label}`, unit: 'seq/s' })),
  };
  log(
    `  2 workers vs best single process (${best ?? '–'}): ${fmt(result.ratios.vsBestSingleProcess ?? NaN)}× ` +
      '(target ≥ 0.9× of the best single process using both cores)',
  );
  if (opts.write ?? true) writeParallelResults(result, log);
  return result;
}

function readScale(): ScaleResult | null {
  const path = join(RESULTS_DIR, 'scale.json');
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as ScaleResult) : null;
}

/** Speed-up over one worker when each of N workers computes T ms per step and the coordinator adds overhead(N). */
function project(scale: ScaleResult): ParallelResult['projection'] {
  const one = scale.points.find((p) => p.workers === 1);
  if (!one) return null;
  const T = one.computeMs;
  const perStep = (overhead: number) => T + Math.max(0, overhead);
  return {
    source: `bench/results/scale.json of ${scale.date.slice(0, 10)}${scale.quick ? ' (quick mode)' : ''}`,
    computeMs: T,
    points: scale.points.map((p) => ({
      workers: p.workers,
      speedup: (p.workers * perStep(one.overheadMs.median)) / perStep(p.overheadMs.median),
    })),
  };
}

function writeParallelResults(r: ParallelResult, log: (line: string) => void): void {
  if (r.quick) {
    log(`  wrote ${writeJson('parallel.quick', r)} (quick mode leaves RESULTS.md and the plots alone)`);
    return;
  }
  log(`  wrote ${writeJson('parallel', r)}`);
  const oneWorker = r.rows.find((x) => x.name === '1-worker' && !x.unavailable);
  const measured = r.rows.filter((x) => !x.unavailable && (x.name === '1-worker' || x.name === '2-workers'));
  const speedup = (x: ParallelRow) =>
    oneWorker ? x.sequencesPerSecond.median / oneWorker.sequencesPerSecond.median : NaN;
  const ns = r.projection ? r.projection.points.map((p) => p.workers) : [1, 2];
  const projected = r.projection && {
    name: `projected, ${r.projection.computeMs / 1000} s steps`,
    x: r.projection.points.map((p) => p.workers),
    values: r.projection.points.map((p) => p.speedup),
  };
  writeFigure(
    RESULTS_DIR,
    'parallel-scaling',
    lineChartSvg({
      title: 'Data-parallel speed-up over one worker',
      xAxis: 'workers',
      yAxis: 'speed-up (log)',
      xScale: 'log2',
      logY: true,
      panels: [
        {
          title: '',
          series: [
            { name: 'ideal (N)', x: ns, values: ns, dashed: true },
            ...(projected ? [projected] : []),
            {
              name: 'measured here',
              x: measured.map((x) => (x.name === '1-worker' ? 1 : 2)),
              values: measured.map(speedup),
            },
          ],
        },
      ],
    }),
  );
  const cell = (s: Stats, d = 1) => `${s.median.toFixed(d)} (${s.min.toFixed(d)}–${s.max.toFixed(d)})`;
  const x = (v: number | null) => (v === null ? '–' : `${v.toFixed(2)}×`);
  const bothCores = r.rows.find((row) => row.name === '1-worker-2-threads');
  const body = [
    provenance(r.date, r.command, r.machine),
    '',
    `Demo model, LoRA ${r.setup.lora}, ` +
      `global batch ${r.setup.globalBatch} in micro-batches of ${r.setup.microBatch}, ` +
      `wasm backend; ${r.setup.steps} steps, the first ${r.setup.skipSteps} not measured; ` +
      'median (min–max) over the measured steps. ' +
      'Local workers are `loramesh worker` processes on this machine; the coordinator process runs beside them.',
    '',
    '| configuration | ms/step | sequences/s | tokens/s |',
    '|---|---:|---:|---:|',
    ...r.rows.map((row) =>
      row.unavailable
        ? `| ${row.label} | unavailable: ${row.unavailable} | | |`
        : `| ${row.label} | ${cell(row.stepMs, 0)} | ${cell(row.sequencesPerSecond)} ` +
          `| ${cell(row.tokensPerSecond, 0)} |`,
    ),
    '',
    `2 workers vs in-process: ${x(r.ratios.vsInProcess)}; vs 1 worker process: ${x(r.ratios.vsOneWorker)}; ` +
      `vs one process using both cores: ${x(r.ratios.vsBothCoresProcess)}.`,
    `Target ≥ 0.9× of the best single process using both cores: ` +
      (r.ratios.vsBothCoresProcess !== null
        ? `**${x(r.ratios.vsBothCoresProcess)}** — ${r.ratios.vsBothCoresProcess >= 0.9 ? 'met' : '**missed**'}.`
        : `not measurable (${bothCores?.unavailable ?? 'row not run'}); ` +
          `against the best single-threaded process (${r.ratios.best ?? '–'}) ` +
          `2 workers reach **${x(r.ratios.vsBestSingleProcess)}**.`),
    '',
    ...(r.projection
      ? [
          `Projection beyond this machine (${r.projection.source}): speed-up = N·(T + o₁)/(T + o_N) ` +
            `with T = ${r.projection.computeMs} ms of compute per step ` +
            'and o_N the coordination overhead measured with N simulated workers ' +
            '(GPT-2 small r=8 payload, all on this machine, so pessimistic): ' +
            r.projection.points.map((p) => `N=${p.workers} ${p.speedup.toFixed(1)}×`).join(', ') +
            '.',
          '',
        ]
      : ['No scale result to project from (run `npm run bench:scale`).', '']),
    '![data-parallel speed-up](results/parallel-scaling.svg)',
  ].join('\n');
  replaceSection('parallel-table', 'Data parallelism on this machine (`npm run bench:parallel`)', body);
  log('  updated bench/RESULTS.md (parallel-table) and bench/results/parallel-scaling.svg/png');
}

export function printParallelFigures(r: ParallelResult, log = console.log): void {
  for (const f of r.figures) log(formatFigure(f));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await runParallelBench(cliFlags());
  printParallelFigures(r);
}
