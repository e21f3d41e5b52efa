/**
 * `npm run bench:scale` (issue 9, item 2): how far one coordinator scales. N simulated workers
 * (real sockets and messages, compute replaced by a sleep of known length, in a few child
 * processes) train a GPT-2-small r=8 c_attn payload with one micro-batch per worker per step.
 * Figures: coordination overhead per step (step time − sleep), coordinator CPU and RSS, the
 * aggregation throughput (decode of real result frames + in-order sum, GB/s of float32 gradient
 * on one core), and RSS over a long soak. Writes bench/results/scale.json, the scale section of
 * bench/RESULTS.md and bench/results/scale-*.{svg,png} (quick mode: scale.quick.json only).
 */
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { availableParallelism } from 'node:os';
import { pathToFileURL } from 'node:url';
import { writeFigure } from '../coordinator/io/analysis-io.ts';
import { lineChartSvg } from '../shared/analysis/plot-lines.ts';
import type { Gpt2Config } from '../shared/config.ts';
import { adapterParameterCount, adapterSpec } from '../shared/lora/adapter.ts';
import { decodeMessage } from '../shared/protocol/codec.ts';
import { unpackFloats, type Result } from '../shared/protocol/messages.ts';
import { F32 } from '../shared/protocol/wire-codec.ts';
import { aggregateInOrder, InOrderSum } from '../shared/train/aggregate.ts';
import { useReduceKernel } from '../shared/train/reduce-kernel.ts';
import type { GradientResult } from '../shared/train/gradients.ts';
import {
  cliFlags,
  fmt,
  formatFigure,
  machine,
  provenance,
  replaceSection,
  RESULTS_DIR,
  rssBytes,
  stats,
  writeJson,
  type Figure,
  type Machine,
  type Stats,
} from './lib/results.ts';
import { SimWorkerPool } from './lib/sim-pool.ts';
import { threadCpuNs } from '../node/thread-cpu.ts';
import { finiteNorm } from '../coordinator/engine/defence.ts';
import type { IngestThread } from '../coordinator/relay/ingest.ts';
import { C_ATTN_R8, dummyExamples, GPT2_SMALL, HEARTBEAT_MS, runSimulated, simulatedModelDir } from './lib/sim-mesh.ts';

export interface ScaleBenchOptions {
  quick: boolean;
  /** write bench/results and RESULTS.md (default true; the smoke test passes false) */
  write?: boolean;
  /** worker counts N (default full: 1…256 in powers of 2; quick: 1, 4, 16, 32) */
  workers?: number[];
  /** simulated compute per micro-batch, ms (full 1000: the target is for a 1 s step; quick 100) */
  computeMs?: number;
  /** steps not measured at the start of each run (≥ 1: the first measured period starts at the last of them) */
  warmupSteps?: number;
  /** measured steps per N (default quick 3; full 4, 3 from N = 128 on) */
  steps?: number;
  /** the memory soak; null skips it */
  soak?: { workers: number; steps: number; computeMs: number; sampleEvery: number } | null;
  /** repeats of the aggregation measurement per N */
  aggregationRepeats?: number;
  /** the payload: a GPT-2 config (LoRA r=8 on c_attn); default GPT-2 small */
  model?: Gpt2Config;
  /** tokens per sequence of the dummy micro-batches (1 sequence each) */
  seqLen?: number;
  /** child processes holding the simulated workers (default: one per core but the coordinator's, 1 to 4, at most N) */
  processes?: number;
  /** the command recorded in RESULTS.md */
  command?: string;
  /** the coordinator's ingestion threads (deployment.ingestThreads; the reduction block = N / threads); 0: none */
  threads?: number;
  log?: (line: string) => void;
}

export interface ScalePoint {
  workers: number;
  computeMs: number;
  /** wall time from one completed step to the next */
  stepMs: Stats;
  overheadMs: Stats;
  /** overhead / computeMs × 100 */
  overheadPercent: Stats;
  /** coordinator process: CPU ms (user + system) per step, and that over wall time (cores busy) */
  coordinatorCpuMsPerStep: number;
  /** of which in the kernel (socket copies, page faults) */
  coordinatorSystemMsPerStep: number;
  /** minor page faults per step (fresh memory touched for the first time) */
  coordinatorPageFaultsPerStep: number;
  coordinatorCores: number;
  /** the coordinator's main thread alone (its /proc/thread-self/schedstat): CPU ms per step */
  mainThreadCpuMsPerStep: number;
  /** ingestion threads (0: none), their CPU ms per step together, and the busiest one's */
  threads: number;
  threadsCpuMsPerStep: number;
  busiestThreadCpuMsPerStep: number;
  /**
   * with workers on other machines, the coordinator's critical path per step (main thread + busiest thread,
   * as if each had its own core) over the compute time, in %: an upper bound, since most of it overlaps the compute
   */
  projectedOverheadPercent: number;
  coordinatorRssMB: { start: number; peak: number };
  /** all simulated-worker processes together: CPU ms per step (on a real mesh it is spread over N machines) */
  workersCpuMsPerStep: number;
  /** micro-batches of the measured steps also sent to a second worker (the scheduler judged the first slow) */
  stragglerCopies: number;
  problems: string[];
}

export interface AggregationPoint {
  workers: number;
  /** float32 gradient bytes per result */
  resultBytes: number;
  frameBytes: number;
  decodeGBps: Stats;
  sumGBps: Stats;
  /** decode and sum of N results, as the coordinator does per step: bytes per CPU-second of this process (one core) */
  totalGBps: Stats;
  /** the same over wall-clock time (lower when other work shares the cores) */
  wallGBps: Stats;
  /**
   * totalGBps with the scalar JavaScript loops instead of the WebAssembly kernel (shared/train/reduce-kernel.ts),
   * measured alternately with it in the same repeats: the kernel's gain, side by side
   */
  scalarTotalGBps: Stats;
}

export interface SoakResult {
  workers: number;
  steps: number;
  computeMs: number;
  /** RSS at the sample step; heapMB: the V8 heap in use right after a full collection at that step */
  samples: { step: number; rssMB: number; heapMB: number }[];
  /** least-squares slope of RSS over the samples after the first quarter of the run */
  slopeMBPer1000Steps: number;
  /**
   * the same for V8's heap in use: the leak signal (RSS also moves as the allocator keeps or returns freed frame
   * buffers)
   */
  heapSlopeMBPer1000Steps: number;
  stepMs: Stats;
  problems: string[];
}

export interface ScaleResult {
  name: 'scale';
  date: string;
  machine: Machine;
  command: string;
  quick: boolean;
  warmupSteps: number;
  payload: { model: string; lora: string; adapterParameters: number; resultBytes: number };
  /** whether ws found the native bufferutil (frame unmasking in C, not a JS byte loop) */
  wsNativeMasking: boolean;
  /** child processes that held the simulated workers */
  simProcesses: number;
  points: ScalePoint[];
  aggregation: AggregationPoint[];
  soak: SoakResult | null;
  figures: Figure[];
  targets: {
    overheadAt64Percent: number | null;
    aggregationGBpsPerCore: number | null;
    soakSlopeMBPer1000Steps: number | null;
    soakHeapSlopeMBPer1000Steps: number | null;
  };
}

const MB = 2 ** 20;

/** ws unmasks every client frame; with the optional bufferutil addon in C, else in a JS byte loop. */
function wsNativeMasking(): boolean {
  try {
    createRequire(createRequire(import.meta.url).resolve('ws')).resolve('bufferutil');
    return true;
  } catch {
    return false;
  }
}
const POWERS = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export async function runScaleBench(opts: ScaleBenchOptions): Promise<ScaleResult> {
  const quick = opts.quick;
  const log = opts.log ?? ((line: string) => console.log(line));
  const workers = opts.workers ?? (quick ? [1, 4, 16, 32] : POWERS);
  const computeMs = opts.computeMs ?? (quick ? 100 : 1000);
  const warmupSteps = Math.max(1, opts.warmupSteps ?? (quick ? 1 : 2));
  const soakOpts =
    opts.soak === undefined
      ? quick
        ? { workers: 2, steps: 50, computeMs: 5, sampleEvery: 10 }
        : { workers: 2, steps: 1000, computeMs: 5, sampleEvery: 50 }
      : opts.soak;
  const config = opts.model ?? GPT2_SMALL;
  const model = simulatedModelDir(config);
  const spec = adapterSpec(config, C_ATTN_R8);
  const resultBytes = 4 * adapterParameterCount(spec);
  const examples = dummyExamples(config, 64, opts.seqLen ?? 1024);
  const date = new Date().toISOString();
  const host = machine();
  const command = opts.command ?? `npm run bench:scale${quick ? ' -- --quick' : ''}`;
  log(
    `scale: ${model.dir}, LoRA r=${C_ATTN_R8.r} on c_attn = ${adapterParameterCount(spec)} parameters ` +
      `(${fmt(resultBytes / MB)} MB per result); ` +
      `N = ${workers.join(', ')}; ${computeMs} ms simulated compute; ` +
      `${opts.steps ?? (quick ? 3 : '3–4')} measured steps after ${warmupSteps}`,
  );

  // One core is left to the coordinator: more simulated-worker processes than spare cores cost more
  // CPU than one (context switches, an event loop each) and raise the coordinator's overhead (the
  // figures are in bench/RESULTS.md, Coordinator scale, "What changed").
  const processes =
    opts.processes ??
    Math.max(1, Math.min(4, availableParallelism() - 1, Math.max(...workers, soakOpts?.workers ?? 1)));
  const pool = new SimWorkerPool(processes);
  const points: ScalePoint[] = [];
  const captured: { frame?: Promise<Uint8Array> } = {};
  let soak: SoakResult | null = null;
  try {
    // The soak first, in a fresh process: its RSS is then not the high-water mark of N = 256.
    if (soakOpts) soak = await runSoak(pool, model, examples, soakOpts, log, opts.threads ?? 0);
    for (const n of workers) {
      // Beyond 64 workers a step takes many seconds here: fewer of them keep `npm run bench` within 15 minutes.
      const steps = opts.steps ?? (quick ? 3 : n >= 128 ? 3 : 4);
      const times: number[] = [];
      const rss: number[] = [];
      let usageStart = process.resourceUsage();
      let usageEnd = usageStart;
      const poolUsage: { start?: Promise<{ cpuUs: number }>; end?: Promise<{ cpuUs: number }> } = {};
      const rssStart = rssBytes();
      const copies = { atStart: 0, atEnd: 0 };
      let ingest: IngestThread[] = [];
      let debugNs = 0;
      const main = { start: 0, end: 0 };
      const threadNs: { start?: Promise<number[]>; end?: Promise<number[]> } = {};
      const threadsNs = () => Promise.all(ingest.map((t) => t.cpuNs()));
      const run = await runSimulated({
        pool,
        model,
        examples,
        workers: n,
        computeMs,
        steps: warmupSteps + steps,
        ingestThreads: opts.threads || undefined,
        onIngestThreads: (t) => {
          ingest = t;
        },
        beforeConnect: () => {
          captured.frame ??= pool.captureResultFrame();
        },
        onStep: (m, at, stragglerCopies) => {
          if (process.env.SCALE_DEBUG) {
            const now = threadCpuNs();
            log(`    step ${m.step}: main thread ${fmt((now - debugNs) / 1e6)} ms`);
            debugNs = now;
          }
          if (m.step < warmupSteps) return;
          copies[m.step === warmupSteps ? 'atStart' : 'atEnd'] = stragglerCopies;
          times.push(at);
          rss.push(rssBytes());
          if (m.step === warmupSteps) {
            usageStart = process.resourceUsage();
            main.start = threadCpuNs();
            threadNs.start = threadsNs();
            poolUsage.start = pool.usage(); // not awaited: waiting here would lengthen the next step
          }
          if (m.step === warmupSteps + steps) {
            usageEnd = process.resourceUsage();
            main.end = threadCpuNs();
            threadNs.end = threadsNs();
            poolUsage.end = pool.usage();
          }
        },
      });
      const periods = times.slice(1).map((t, i) => t - times[i]);
      const wallMs = times[times.length - 1] - times[0];
      const systemMs = (usageEnd.systemCPUTime - usageStart.systemCPUTime) / 1000;
      const coordinatorCpuMs = (usageEnd.userCPUTime - usageStart.userCPUTime) / 1000 + systemMs;
      const poolCpuMs =
        poolUsage.start && poolUsage.end ? ((await poolUsage.end).cpuUs - (await poolUsage.start).cpuUs) / 1000 : NaN;
      const [t0, t1] = [await (threadNs.start ?? []), await (threadNs.end ?? [])];
      const perThread = t1.map((ns, i) => (ns - t0[i]) / 1e6 / steps);
      const mainMs = (main.end - main.start) / 1e6 / steps;
      const busiest = perThread.length ? Math.max(...perThread) : 0;
      const point: ScalePoint = {
        workers: n,
        mainThreadCpuMsPerStep: mainMs,
        threads: opts.threads ?? 0,
        threadsCpuMsPerStep: perThread.reduce((a, b) => a + b, 0),
        busiestThreadCpuMsPerStep: busiest,
        projectedOverheadPercent: (100 * (mainMs + busiest)) / computeMs,
        computeMs,
        stepMs: stats(periods),
        overheadMs: stats(periods.map((p) => p - computeMs)),
        overheadPercent: stats(periods.map((p) => (100 * (p - computeMs)) / computeMs)),
        coordinatorCpuMsPerStep: coordinatorCpuMs / steps,
        coordinatorSystemMsPerStep: systemMs / steps,
        coordinatorPageFaultsPerStep: (usageEnd.minorPageFault - usageStart.minorPageFault) / steps,
        coordinatorCores: coordinatorCpuMs / wallMs,
        coordinatorRssMB: { start: rssStart / MB, peak: Math.max(...rss) / MB },
        workersCpuMsPerStep: poolCpuMs / steps,
        stragglerCopies: copies.atEnd - copies.atStart,
        problems: run.problems,
      };
      points.push(point);
      log(
        `  N=${String(n).padStart(3)}: step ${fmt(point.stepMs.median)} ms ` +
          `(${fmt(point.stepMs.min)}–${fmt(point.stepMs.max)}), ` +
          `overhead ${fmt(point.overheadMs.median)} ms = ${fmt(point.overheadPercent.median)} %, ` +
          `coordinator ${fmt(point.coordinatorCpuMsPerStep)} CPU-ms/step ` +
          `(main thread ${fmt(point.mainThreadCpuMsPerStep)} = ${fmt(point.mainThreadCpuMsPerStep / n)} per worker` +
          (point.threads
            ? `; ${point.threads} ingestion threads ${fmt(point.threadsCpuMsPerStep)}, busiest ` +
              `${fmt(point.busiestThreadCpuMsPerStep)}`
            : '') +
          `; projected overhead on separate machines ${fmt(point.projectedOverheadPercent)} %) ` +
          `(${fmt(point.coordinatorSystemMsPerStep)} system, ` +
          `${fmt(point.coordinatorPageFaultsPerStep)} page faults), ` +
          `RSS ${fmt(point.coordinatorRssMB.peak)} MB, sim workers ${fmt(point.workersCpuMsPerStep)} CPU-ms/step` +
          (point.stragglerCopies ? `, ${point.stragglerCopies} straggler copies` : '') +
          (run.problems.length ? `; ${run.problems.length} problem line(s), first: ${run.problems[0]}` : ''),
      );
    }
  } finally {
    await pool.close();
  }
  const aggregation = measureAggregation(
    await captured.frame!,
    resultBytes,
    workers,
    opts.aggregationRepeats ?? (quick ? 3 : 5),
    log,
  );

  const at64 = points.find((p) => p.workers === 64);
  const big = aggregation[aggregation.length - 1];
  const figures: Figure[] = [
    ...points.map((p) => ({
      ...p.overheadMs,
      label: `overhead per step, N=${p.workers} (${p.computeMs} ms compute)`,
      unit: 'ms',
    })),
    ...aggregation.map((a) => ({
      ...a.totalGBps,
      label: `aggregation (decode + check + norm + sum as results arrive) of ${a.workers} results, 1 core`,
      unit: 'GB/s',
    })),
    ...(soak
      ? [{ ...soak.stepMs, label: `soak step time, N=${soak.workers} (${soak.computeMs} ms compute)`, unit: 'ms' }]
      : []),
  ];
  const result: ScaleResult = {
    name: 'scale',
    date,
    machine: host,
    command,
    quick,
    warmupSteps,
    payload: {
      model: model.dir,
      lora: `r=${C_ATTN_R8.r} on c_attn`,
      adapterParameters: adapterParameterCount(spec),
      resultBytes,
    },
    wsNativeMasking: wsNativeMasking(),
    simProcesses: processes,
    points,
    aggregation,
    soak,
    figures,
    targets: {
      overheadAt64Percent: at64 && at64.computeMs === 1000 ? at64.overheadPercent.median : null,
      aggregationGBpsPerCore: big ? big.totalGBps.median : null,
      soakSlopeMBPer1000Steps: soak && soak.steps >= 1000 ? soak.slopeMBPer1000Steps : null,
      soakHeapSlopeMBPer1000Steps: soak && soak.steps >= 1000 ? soak.heapSlopeMBPer1000Steps : null,
    },
  };
  if ((opts.write ?? true) && opts.threads) writeThreadedResults(result, opts.threads, log);
  else if (opts.write ?? true) writeScaleResults(result, log);
  return result;
}

async function runSoak(
  pool: SimWorkerPool,
  model: ReturnType<typeof simulatedModelDir>,
  examples: ReturnType<typeof dummyExamples>,
  o: { workers: number; steps: number; computeMs: number; sampleEvery: number },
  log: (line: string) => void,
  threads: number,
): Promise<SoakResult> {
  const samples: SoakResult['samples'] = [];
  const times: number[] = [];
  const run = await runSimulated({
    pool,
    model,
    examples,
    workers: o.workers,
    computeMs: o.computeMs,
    steps: o.steps,
    ingestThreads: threads || undefined,
    onStep: (m, at) => {
      times.push(at);
      // the heap after a full collection: what the run really keeps, not a reading at a random point of the
      // garbage collector's cycle (those swing by MBs either way)
      if (m.step % o.sampleEvery === 0) {
        fullGc();
        samples.push({ step: m.step, rssMB: rssBytes() / MB, heapMB: process.memoryUsage().heapUsed / MB });
      }
    },
  });
  const tail = samples.filter((s) => s.step > o.steps / 4);
  const slope =
    leastSquaresSlope(
      tail.map((s) => s.step),
      tail.map((s) => s.rssMB),
    ) * 1000;
  const heapSlope =
    leastSquaresSlope(
      tail.map((s) => s.step),
      tail.map((s) => s.heapMB),
    ) * 1000;
  const soak: SoakResult = {
    ...o,
    samples,
    slopeMBPer1000Steps: slope,
    heapSlopeMBPer1000Steps: heapSlope,
    stepMs: stats(times.slice(1).map((t, i) => t - times[i])),
    problems: run.problems,
  };
  delete (soak as Partial<typeof o>).sampleEvery;
  log(
    `  soak N=${o.workers}, ${o.steps} steps of ${o.computeMs} ms: ` +
      `RSS ${fmt(samples[0]?.rssMB)} → ${fmt(samples[samples.length - 1]?.rssMB)} MB ` +
      `(max ${fmt(Math.max(...samples.map((s) => s.rssMB)))}), ` +
      `slope ${fmt(slope)} MB per 1000 steps after the first quarter; ` +
      `V8 heap slope ${fmt(heapSlope)}; step ${fmt(soak.stepMs.median)} ms`,
  );
  return soak;
}

/** A full garbage collection (V8's gc(), exposed for this process at run time). */
function fullGc(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

function leastSquaresSlope(xs: number[], ys: number[]): number {
  if (xs.length < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return num / den;
}

/**
 * The coordinator's per-step work on results, on one core: decode and check N real result frames
 * and add them up in micro-batch order. Measured three ways: the decode and check alone; the sum
 * alone after the fact (aggregateInOrder over distinct buffers, up to 64, reused round-robin
 * beyond, so it reads from memory); and both as the mesh does them, each result added (InOrderSum)
 * right after its decode and check; the last also with the kernel off (reduce-kernel.ts: the scalar loops, the same
 * bits), alternating with it. Small N is repeated to ≥ 64 MB per measurement. GB/s per core
 * is bytes over this process's CPU time, which other load on the machine does not inflate;
 * wall-clock GB/s of the third is kept beside it.
 */
function measureAggregation(
  frame: Uint8Array,
  resultBytes: number,
  workers: number[],
  repeats: number,
  log: (line: string) => void,
): AggregationPoint[] {
  const floats = resultBytes / 4;
  const distinct = Array.from({ length: Math.min(64, Math.max(...workers)) }, (_, k) => {
    const g = new Float32Array(floats);
    for (let i = 0; i < floats; i++) g[i] = ((i + k) % 97) * 1e-4;
    return g;
  });
  const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;
  // Copies of the frame, each at offset 0 of its own buffer as ws hands a large message over (the
  // codec then reads the aligned values in place), distinct so the checks read from memory.
  const frames = Array.from({ length: Math.min(64, Math.max(...workers)) }, () => new Uint8Array(frame));
  // what the mesh does with a result (result-gate.ts admitResult): decode, then one pass for the finiteness check
  // and the norm
  const decoded = (i: number) => {
    const flat = unpackFloats((decodeMessage(frames[i % frames.length]) as Result).grads, F32, floats, 'g', false);
    finiteNorm(flat, 'result.grads');
    return flat;
  };
  const out: AggregationPoint[] = [];
  for (const n of workers) {
    const rounds = Math.max(1, Math.ceil((64 * MB) / (n * resultBytes)));
    const bytes = rounds * n * resultBytes;
    const samples = {
      decode: [] as number[],
      sum: [] as number[],
      total: [] as number[],
      wall: [] as number[],
      scalar: [] as number[],
    };
    /** decode, check and sum every result as the mesh does; bytes per CPU-second and per wall-clock second */
    const asResultsArrive = (): [perCpu: number, perWall: number] => {
      const wall0 = performance.now();
      const cpu0 = process.cpuUsage();
      for (let k = 0; k < rounds; k++) {
        const slots: (GradientResult | undefined)[] = new Array(n);
        const sum = new InOrderSum(slots);
        for (let i = 0; i < n; i++) {
          slots[i] = { lossSum: 1, tokenCount: 1, grads: new Map([['all', decoded(i)]]) };
          sum.advance();
        }
        sum.finish();
      }
      return [bytes / 1e6 / cpuMs(process.cpuUsage(cpu0)), bytes / 1e6 / (performance.now() - wall0)];
    };
    const results: GradientResult[] = Array.from({ length: n }, (_, i) => ({
      lossSum: 1,
      tokenCount: 1,
      grads: new Map([['all', distinct[i % distinct.length]]]),
    }));
    for (let r = 0; r < repeats; r++) {
      let cpu0 = process.cpuUsage();
      for (let k = 0; k < rounds; k++) for (let i = 0; i < n; i++) decoded(i);
      samples.decode.push(bytes / 1e6 / cpuMs(process.cpuUsage(cpu0)));
      cpu0 = process.cpuUsage();
      for (let k = 0; k < rounds; k++) aggregateInOrder(results);
      samples.sum.push(bytes / 1e6 / cpuMs(process.cpuUsage(cpu0)));
      const [perCpu, perWall] = asResultsArrive();
      samples.total.push(perCpu);
      samples.wall.push(perWall);
      const was = useReduceKernel(false);
      try {
        samples.scalar.push(asResultsArrive()[0]);
      } finally {
        useReduceKernel(was);
      }
    }
    const point: AggregationPoint = {
      workers: n,
      resultBytes,
      frameBytes: frame.length,
      decodeGBps: stats(samples.decode),
      sumGBps: stats(samples.sum),
      totalGBps: stats(samples.total),
      wallGBps: stats(samples.wall),
      scalarTotalGBps: stats(samples.scalar),
    };
    out.push(point);
    log(
      `  aggregation of ${String(n).padStart(3)} results: decode + check + norm ${fmt(point.decodeGBps.median)} GB/s, ` +
        `sum after the fact ${fmt(point.sumGBps.median)} GB/s; ` +
        `as results arrive ${fmt(point.totalGBps.median)} GB/s per core ` +
        `(min ${fmt(point.totalGBps.min)}, max ${fmt(point.totalGBps.max)}); ` +
        `wall clock ${fmt(point.wallGBps.median)} GB/s; with the scalar loops instead of the kernel ` +
        `${fmt(point.scalarTotalGBps.median)} GB/s per core (kernel ${fmt(point.totalGBps.median / point.scalarTotalGBps.median)}×)`,
    );
  }
  return out;
}

const range = (s: Stats, digits = 1) =>
  `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
const verdict = (value: number | null, ok: (v: number) => boolean, text: string) =>
  value === null
    ? `${text}: not measured in this mode`
    : `${text}: **${fmt(value)}** — ${ok(value) ? 'met' : '**missed**'}`;

function writeScaleResults(r: ScaleResult, log: (line: string) => void): void {
  if (r.quick) {
    log(`  wrote ${writeJson('scale.quick', r)} (quick mode leaves RESULTS.md and the plots alone)`);
    return;
  }
  log(`  wrote ${writeJson('scale', r)}`);
  const pct = (p: ScalePoint) => (100 * p.computeMs) / (p.computeMs + p.overheadMs.median);
  const workers = r.points.map((p) => p.workers);
  writeFigure(
    RESULTS_DIR,
    'scale-overhead',
    lineChartSvg({
      title: `Coordination overhead per step (${r.points[0]?.computeMs} ms compute, GPT-2 small r=8)`,
      xAxis: 'simulated workers N',
      yAxis: 'overhead, % of compute (log)',
      xScale: 'log2',
      logY: true,
      panels: [
        {
          title: '',
          series: [
            { name: 'median', x: workers, values: r.points.map((p) => p.overheadPercent.median) },
            { name: 'max', x: workers, values: r.points.map((p) => p.overheadPercent.max), dashed: true },
            { name: 'target 3 %', x: workers, values: r.points.map(() => 3), dashed: true },
          ],
        },
      ],
    }),
  );
  if (r.soak) {
    const steps = r.soak.samples.map((s) => s.step);
    writeFigure(
      RESULTS_DIR,
      'scale-soak',
      lineChartSvg({
        title: `Coordinator RSS over a ${r.soak.steps}-step soak (N=${r.soak.workers})`,
        xAxis: 'step',
        yAxis: 'MB',
        panels: [
          {
            title: '',
            series: [
              { name: 'RSS', x: steps, values: r.soak.samples.map((s) => s.rssMB) },
              { name: 'V8 heap used', x: steps, values: r.soak.samples.map((s) => s.heapMB) },
            ],
          },
        ],
      }),
    );
  }
  const unmasking = r.wsNativeMasking
    ? 'native (bufferutil)'
    : 'JavaScript (the optional `bufferutil` addon is not installed)';
  const body = [
    provenance(r.date, r.command, r.machine),
    '',
    `Payload: ${r.payload.model}, LoRA ${r.payload.lora} = ` +
      `${r.payload.adapterParameters.toLocaleString('en-US')} parameters, ` +
      `${fmt(r.payload.resultBytes / MB)} MB of float32 gradient per result. ` +
      `One micro-batch (1 sequence) per worker per step; simulated workers sleep ${r.points[0]?.computeMs} ms ` +
      'and answer through the real WorkerSession, ' +
      `in ${r.simProcesses} child process${r.simProcesses === 1 ? '' : 'es'} ` +
      `**on the same ${r.machine.cores} cores as the coordinator**. ` +
      `Median (min–max) over ${[...new Set(r.points.map((p) => p.stepMs.n))].join(' or ')} steps ` +
      `after ${r.warmupSteps} warm-up steps ` +
      "(the first steps carry the scheduler's speculative copies for still-unmeasured workers). " +
      `WebSocket frame unmasking: ${unmasking}. ` +
      `Heartbeat ${HEARTBEAT_MS / 1000} s instead of 5 s: ` +
      'the co-located simulated workers answer pings late under load, and at N=256 the default dropped some.',
    '',
    '| N | step ms | overhead ms | overhead % | coordinator CPU ms/step (of it system) | ' +
      'coordinator page faults/step | coordinator cores busy | coordinator peak RSS MB | ' +
      'sim-worker CPU ms/step (all N) | straggler copies |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.points.map(
      (p) =>
        `| ${p.workers} | ${range(p.stepMs, 0)} | ${range(p.overheadMs, 0)} | ${range(p.overheadPercent)} | ` +
        `${p.coordinatorCpuMsPerStep.toFixed(0)} (${p.coordinatorSystemMsPerStep.toFixed(0)}) | ` +
        `${p.coordinatorPageFaultsPerStep.toFixed(0)} | ${p.coordinatorCores.toFixed(2)} | ` +
        `${p.coordinatorRssMB.peak.toFixed(0)} | ${p.workersCpuMsPerStep.toFixed(0)} | ${p.stragglerCopies} |`,
    ),
    '',
    'Scaling efficiency (compute / step time): ' +
      `${r.points.map((p) => `N=${p.workers} ${pct(p).toFixed(0)} %`).join(', ')}.`,
    '',
    '![coordination overhead](results/scale-overhead.svg)',
    '',
    'Aggregation on one core: decode of N real result frames (msgpack; the float32 values are read in place) ' +
      'and their checks (length; finiteness and the norm in one pass, as result-gate.ts admitResult), and the ' +
      'in-order float32 sum (aggregate.ts): ' +
      'each alone, and both as the mesh does them ' +
      '(every result added right after its check, in micro-batch order: InOrderSum), the last also with the ' +
      'scalar JavaScript loops instead of the WebAssembly SIMD kernel (reduce-kernel.ts; the same bits), ' +
      'alternating with it in the same repeats. ' +
      'GB of gradient per CPU-second of the process ' +
      '(other load on the machine does not lower it; wall-clock figure beside it), median (min–max) of repeats.',
    '',
    '| N results | decode + check + norm GB/s | sum after the fact GB/s | ' +
      'decode + check + norm + sum as results arrive, GB/s per core | the same, wall clock | ' +
      'as results arrive with the scalar loops, GB/s per core | kernel gain |',
    '|---:|---:|---:|---:|---:|---:|---:|',
    ...r.aggregation.map(
      (a) =>
        `| ${a.workers} | ${range(a.decodeGBps, 2)} | ${range(a.sumGBps, 2)} | ` +
        `${range(a.totalGBps, 2)} | ${range(a.wallGBps, 2)} | ${range(a.scalarTotalGBps, 2)} | ` +
        `${fmt(a.totalGBps.median / a.scalarTotalGBps.median)}× |`,
    ),
    '',
    ...(r.soak
      ? [
          `Soak: N=${r.soak.workers}, ${r.soak.steps} steps of ${r.soak.computeMs} ms compute ` +
            `(step ${fmt(r.soak.stepMs.median)} ms median): ` +
            `coordinator RSS ${fmt(r.soak.samples[0].rssMB)} MB at step ${r.soak.samples[0].step}, ` +
            `${fmt(r.soak.samples[r.soak.samples.length - 1].rssMB)} MB ` +
            `at step ${r.soak.samples[r.soak.samples.length - 1].step}, ` +
            `max ${fmt(Math.max(...r.soak.samples.map((s) => s.rssMB)))} MB; ` +
            `slope after the first quarter ${fmt(r.soak.slopeMBPer1000Steps)} MB per 1000 steps. ` +
            `V8 heap in use after a full collection ${fmt(r.soak.samples[0].heapMB)} → ` +
            `${fmt(r.soak.samples[r.soak.samples.length - 1].heapMB)} MB, ` +
            `slope ${fmt(r.soak.heapSlopeMBPer1000Steps)} MB per 1000 steps ` +
            '(a run keeps its per-step records in memory: metrics, traffic, dashboard history, ~0.5 KB per step).',
          '',
          '![soak](results/scale-soak.svg)',
          '',
        ]
      : []),
    'Targets:',
    '- ' +
      verdict(
        r.targets.overheadAt64Percent,
        (v) => v <= 3,
        'overhead at N=64 ' + 'with a 1 s step, % ' + '(target ≤ 3 %)',
      ),
    '- ' +
      verdict(
        r.targets.aggregationGBpsPerCore,
        (v) => v >= 1,
        `aggregation, GB/s per core at N=${r.aggregation[r.aggregation.length - 1]?.workers} (target ≥ 1)`,
      ),
    '- ' +
      verdict(
        r.targets.soakHeapSlopeMBPer1000Steps,
        (v) => Math.abs(v) <= 1,
        'soak V8 heap slope, MB per 1000 steps (target: flat, |slope| ≤ 1; the leak signal)',
      ),
    '- ' +
      verdict(
        r.targets.soakSlopeMBPer1000Steps,
        (v) => Math.abs(v) <= 10,
        'soak RSS slope, MB per 1000 steps ' +
          "(|slope| ≤ 10: RSS also moves with the allocator's cache of freed frame buffers)",
      ),
    ...[...r.points.flatMap((p) => p.problems.map((l) => `N=${p.workers}: ${l}`)), ...(r.soak?.problems ?? [])]
      .slice(0, 5)
      .map((l) => `- problem logged: ${l.replace(/\|/g, '\\|')}`),
  ].join('\n');
  replaceSection('scale-table', 'Coordinator scale (`npm run bench:scale`)', body);
  log('  updated bench/RESULTS.md (scale-table) and bench/results/scale-*.svg/png');
}

/**
 * The threaded run's own section of RESULTS.md (the flat table stays): per N the main thread's CPU per worker next
 * to the whole process's, the projected overhead with workers on other machines, and the soak with threads.
 */
function writeThreadedResults(r: ScaleResult, threads: number, log: (line: string) => void): void {
  if (r.quick) {
    log(`  wrote ${writeJson(`scale-threads-${threads}.quick`, r)} (quick mode leaves RESULTS.md alone)`);
    return;
  }
  log(`  wrote ${writeJson(`scale-threads-${threads}`, r)}`);
  const rows = r.points.map(
    (p) =>
      `| ${p.workers} | ${Math.ceil(p.workers / threads)} | ${range(p.stepMs, 0)} | ${range(p.overheadPercent)} | ` +
      `${fmt(p.mainThreadCpuMsPerStep)} | **${fmt(p.mainThreadCpuMsPerStep / p.workers)}** | ` +
      `${fmt(p.coordinatorCpuMsPerStep)} | ${fmt(p.coordinatorCpuMsPerStep / p.workers)} | ` +
      `${fmt(p.threadsCpuMsPerStep)} (busiest ${fmt(p.busiestThreadCpuMsPerStep)}) | ` +
      `${fmt(p.projectedOverheadPercent)} | ${fmt(p.workersCpuMsPerStep)} |`,
  );
  const at = (n: number) => r.points.find((p) => p.workers === n);
  const perWorker = (n: number) => {
    const p = at(n);
    return p ? p.mainThreadCpuMsPerStep / n : null;
  };
  const body = [
    `Measured ${r.date.slice(0, 16).replace('T', ' ')} UTC on ${r.machine.cores} × ${r.machine.cpu}; command: ` +
      `\`${r.command}\`. The same simulated run as the flat table above (payload ${fmt(r.payload.resultBytes / 2 ** 20)} MiB ` +
      `per result, ${r.points[0]?.computeMs} ms simulated compute, ${r.simProcesses} simulated-worker process(es) on ` +
      `the same cores), with \`--ingest-threads ${threads}\` and \`--reduction-block N/${threads}\`: workers are ` +
      `sent to the threads, each sums its blocks and sends one partial sum per block to the main thread. ` +
      `"Main thread" is the coordinator's main thread alone (/proc/thread-self/schedstat); "process" is every thread ` +
      `of it. Projected overhead = (main thread + busiest thread CPU per step) / compute: the coordinator's work per ` +
      `step if each thread had its own core and the workers their own machines (an upper bound: most of it overlaps ` +
      `the compute).`,
    '',
    '| N | block | step ms | overhead % (this machine) | main-thread CPU ms/step | main thread per worker | process CPU ms/step | process per worker | threads CPU ms/step | projected overhead % | sim-worker CPU ms/step |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
    'Aggregation on one core (what a thread, or the main thread without threads, does per result: decode, one ' +
      'pass for the finiteness check and the norm, the in-order sum), GB of gradient per CPU-second: ' +
      r.aggregation
        .map(
          (a) =>
            `${a.workers} results ${range(a.totalGBps, 2)} (decode + check + norm alone ${range(a.decodeGBps, 2)}; ` +
            `with the scalar loops instead of the kernel, alternating: ${range(a.scalarTotalGBps, 2)}, so the ` +
            `kernel gives ${fmt(a.totalGBps.median / a.scalarTotalGBps.median)}×)`,
        )
        .join('; ') +
      '.',
    '',
    r.soak
      ? `Soak with ${threads} thread(s): N=${r.soak.workers}, ${r.soak.steps} steps of ${r.soak.computeMs} ms compute ` +
        `(step ${fmt(r.soak.stepMs.median)} ms median): RSS slope ${fmt(r.soak.slopeMBPer1000Steps)} MB per 1000 ` +
        `steps after the first quarter, slope of the V8 heap after a full collection at each sample ${fmt(r.soak.heapSlopeMBPer1000Steps)} MB per 1000 steps.`
      : 'Soak: not run.',
    '',
    'Targets:',
    `- ${verdict(perWorker(64), (v) => v <= 0.5, 'main-thread CPU per worker per step at N=64, ms (target ≤ 0.5)')}`,
    `- ${verdict(perWorker(256), (v) => v <= 0.5, 'main-thread CPU per worker per step at N=256, ms (target ≤ 0.5)')}`,
    `- ${verdict(
      at(64) && at(64)!.computeMs === 1000 ? at(64)!.overheadPercent.median : null,
      (v) => v <= 3,
      'wall-clock overhead at N=64 with 1 s steps on this machine, % (target ≤ 3)',
    )}`,
    `- ${verdict(
      r.targets.aggregationGBpsPerCore,
      (v) => v >= 2,
      `aggregation as results arrive, GB/s per core at N=${r.aggregation[r.aggregation.length - 1]?.workers} (target ≥ 2)`,
    )}`,
    `- ${verdict(
      r.soak && r.soak.steps >= 1000 ? r.soak.heapSlopeMBPer1000Steps : null,
      (v) => Math.abs(v) <= 1,
      'soak V8 heap slope with threads, MB per 1000 steps (flat: |slope| ≤ 1)',
    )}`,
  ].join('\n');
  replaceSection(
    `scale-threads-${threads}`,
    `Coordinator scale with ${threads} ingestion thread${threads > 1 ? 's' : ''} (\`npm run bench:scale -- --threads ${threads}\`)`,
    body,
  );
  log(`  updated bench/RESULTS.md (scale-threads-${threads})`);
}

export function printScaleFigures(r: ScaleResult, log = console.log): void {
  for (const f of r.figures) log(formatFigure(f));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // --threads N, --workers a,b,… and --no-soak are this bench's own; the rest are every bench's (cliFlags)
  const argv = process.argv.slice(2);
  const take = (name: string): string | undefined => {
    const at = argv.indexOf(name);
    if (at < 0) return undefined;
    const [, value] = argv.splice(at, 2);
    if (value === undefined) throw new Error(`${name} needs a value`);
    return value;
  };
  const threads = take('--threads');
  const workers = take('--workers');
  const noSoak = argv.includes('--no-soak') ? (argv.splice(argv.indexOf('--no-soak'), 1), true) : false;
  const flags = cliFlags(argv);
  const numbers = (flag: string, v: string) =>
    v.split(',').map((x) => {
      const n = Number(x);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} ${v}: expected whole numbers ≥ 1`);
      return n;
    });
  const r = await runScaleBench({
    ...flags,
    ...(threads ? { threads: numbers('--threads', threads)[0] } : {}),
    ...(workers ? { workers: numbers('--workers', workers) } : {}),
    ...(noSoak ? { soak: null } : {}),
    command: `npm run bench:scale${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
  });
  printScaleFigures(r);
}
