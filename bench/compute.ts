/**
 * `npm run bench:compute` (`-- --quick`: demo model only, for `npm run bench -- --quick`'s 2-minute
 * budget): ms/step, tokens/s and achieved GFLOP/s of the LoRA training step per backend — wasm
 * 1 thread, wasm 2 threads (LORAMESH_WASM_THREADS shim), cpu, WebGPU (software here: marked so),
 * tfjs-node when installed — for the demo model and a GPT-2-small-shaped model, each next to
 * PyTorch on the same model with the same threads, steps alternated so the ratio is measured under
 * the same load (bench/compute-measure.ts, one process per row). Writes bench/results/compute.json
 * (quick: compute.quick.json) and, in full mode, the compute-table section of bench/RESULTS.md.
 * Also the `compute` step of `npm run bench`.
 */
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  figure,
  fmt,
  machine,
  provenance,
  replaceSection,
  stats,
  writeJson,
  type Figure,
  type Stats,
} from './lib/results.ts';
import type { MeasureConfig, MeasureResult } from './compute-measure.ts';

export interface ComputeOptions {
  quick: boolean;
  /**
   * a machine with a GPU (bench/gpu-bench.ts, the bundle's loramesh-bench-gpu): WebGPU (Dawn)
   * against PyTorch CUDA, written as compute.device.json
   */
  device?: boolean;
  /** write results (default true; quick writes compute.quick.json and leaves RESULTS.md alone) */
  write?: boolean;
  command?: string;
  log?: (line: string) => void;
  /** the real-shape rows (largePlan) instead of the default plan; written as compute.large.json */
  large?: boolean;
  /** rows to run instead of the default plan (tests use a tiny one) */
  rows?: MeasureConfig[];
  /**
   * How a row's process starts: the Node arguments before the row's JSON. Default: the TypeScript
   * source through tsx (bench/compute-measure.ts); the offline bundle runs its own built file.
   */
  measureArgv?: string[];
  /** where the JSON goes (default bench/results/) */
  resultsDir?: string;
  /** the Markdown file whose section the table replaces (default bench/RESULTS.md) */
  resultsMd?: string;
  /** a row's process is stopped after this long and the row reported unavailable (default: no limit) */
  rowTimeoutMs?: number;
  /** lines under the table's provenance line (the GPU bench names the GPU, adapter and PyTorch) */
  notes?: string[];
}

export interface ComputeRow {
  model: string;
  backend: string;
  threads: number;
  software: boolean;
  /** the GPU adapter a WebGPU row ran on */
  adapter?: string;
  description: string;
  tokens: number;
  gflopPerStep: number;
  ms: Stats;
  cpuMs: Stats;
  tokensPerSecond: number;
  gflops: number;
  torch: { label: string; ms: Stats; cpuMs: Stats; gflops: number } | null;
  /** ours / PyTorch per alternated pair of steps */
  ratio: Stats | null;
  /** the same ratio on process CPU time: less sensitive to other work on a shared machine */
  cpuRatio: Stats | null;
  agreement: MeasureResult['agreement'];
  gemm: MeasureResult['gemm'];
  /** the wasm kernels' arithmetic (absent in results written before it was recorded: simd128) */
  arithmetic?: MeasureResult['arithmetic'];
  note?: string;
  /** per repeat: our wall ms, and ours / PyTorch */
  samples: { ms: number[]; ratio: number[] | null };
}

export interface ComputeResult {
  date: string;
  quick: boolean;
  command: string;
  machine: ReturnType<typeof machine>;
  flopFormula: string;
  rows: ComputeRow[];
  /** rows that could not run here, with the reason */
  unavailable: { model: string; backend: string; reason: string }[];
  figures: Figure[];
}

export const FLOP_FORMULA =
  'forward 2·N·P_lin + Σ_adapted 2·N·r·(d_in+d_out) + Σ_layers 4·B·T²·d; ' +
  'backward 2·N·P_lin (dx only, W frozen) + Σ_adapted 6·N·r·(d_in+d_out) + Σ_layers 8·B·T²·d ' +
  '(N = B·T tokens, P_lin = weights of all linear layers incl. the LM head, d = attention width; ' +
  'elementwise work not counted)';

const GPT2_SHAPE = { batch: 2, time: 128 };

function plan(quick: boolean): MeasureConfig[] {
  const cores = availableParallelism();
  const row = (
    model: MeasureConfig['model'],
    backend: MeasureConfig['backend'],
    threads: number,
    warmup: number,
    repeats: number,
  ): MeasureConfig => ({ model, backend, threads, warmup, repeats, ...GPT2_SHAPE, torchDevice: 'cpu' });
  const threaded = cores >= 2 ? [Math.min(cores, 8)] : [];
  // Warm-up: a process's first ~10 demo steps run 10–20 ms slower while V8 optimizes tfjs's JavaScript
  // (measured: steps 4–10 at 80–90 ms, then 65–67; the same with wasm tiering flags, no GC or heap growth
  // behind it), so the fast rows warm up 10 steps on both sides and measure the steady state a run's
  // hundreds of steps see.
  if (quick) return [row('demo', 'wasm', 1, 10, 5), ...threaded.map((t) => row('demo', 'wasm', t, 10, 5))];
  // Repeats are sized so `npm run bench` stays within 15 minutes here: the cpu backend and software
  // WebGPU take seconds per demo step (their rows in bench/RESULTS.md, Compute), so they get one or
  // two; the software WebGPU row shows the step computes, not its speed.
  // relaxed SIMD's fused multiply-add (shared/arithmetic.ts)
  const relaxed = (config: MeasureConfig): MeasureConfig => ({ ...config, arithmetic: 'relaxed-fma' });
  return [
    row('demo', 'wasm', 1, 10, 15),
    relaxed(row('demo', 'wasm', 1, 10, 15)),
    ...threaded.map((t) => row('demo', 'wasm', t, 10, 15)),
    row('demo', 'cpu', 1, 1, 2),
    row('demo', 'webgpu', 1, 1, 1),
    row('demo', 'tensorflow', 1, 2, 10),
    row('gpt2-small', 'wasm', 1, 1, 3),
    relaxed(row('gpt2-small', 'wasm', 1, 1, 3)),
    ...threaded.map((t) => row('gpt2-small', 'wasm', t, 1, 3)),
    // a compact frozen base (--base-format), next to PyTorch float32 on the dequantized weights
    ...(['int8', 'nf4'] as const).flatMap((baseFormat) => [
      { ...row('demo', 'wasm', 1, 10, 10), baseFormat },
      { ...row('gpt2-small', 'wasm', 1, 1, 3), baseFormat },
    ]),
  ];
}

/**
 * `--large` (outside `npm run bench`'s 15 minutes): Qwen2.5-0.5B's shape held as int8 and as nf4 on
 * wasm, 1 × 128 tokens, next to PyTorch float32 on the dequantized weights (a float32 base does not
 * fit the wasm heap: bench:real, README "Model sizes").
 */
const LARGE_NOTE =
  'A float32 base of this size does not fit the wasm heap (bench:real), so PyTorch float32 runs on the ' +
  'weights the compact base dequantizes to: the loss / ‖grad‖ column checks both compute the same step. ' +
  'The compact kernels (shared/quant/compact-matmul.ts) run on one thread: the 2-thread row speeds up only ' +
  'the other products. "Largest matmul alone" is the float32 XNNPACK product, not the compact kernel.';

function largePlan(): MeasureConfig[] {
  const row = (baseFormat: 'int8' | 'nf4', threads: number): MeasureConfig => ({
    model: 'qwen2.5-0.5b',
    backend: 'wasm',
    threads,
    warmup: 1,
    repeats: 3,
    batch: 1,
    time: 128,
    torchDevice: 'cpu',
    baseFormat,
  });
  const threads = Math.min(availableParallelism(), 8);
  return [row('int8', 1), row('nf4', 1), ...(threads > 1 ? [row('nf4', threads)] : [])];
}

const SOURCE_MEASURE_ARGV = ['--import', 'tsx', join(import.meta.dirname, 'compute-measure.ts')];

function runRow(
  config: MeasureConfig,
  measureArgv = SOURCE_MEASURE_ARGV,
  timeoutMs?: number,
): MeasureResult | { error: string } {
  const out = spawnSync(process.execPath, [...measureArgv, JSON.stringify(config)], {
    encoding: 'utf8',
    maxBuffer: 64 * 2 ** 20,
    env: { ...process.env, LORAMESH_WASM_THREADS: '' },
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  if (out.error && (out.error as NodeJS.ErrnoException).code === 'ETIMEDOUT')
    return { error: `stopped after the row limit of ${Math.round(timeoutMs! / 1000)} s` };
  if (out.status === 0) return JSON.parse(out.stdout.trim().split('\n').pop()!) as MeasureResult;
  const lines = out.stderr.split('\n').filter((l) => /error|Error|fail/i.test(l) && l.length < 400);
  return { error: (lines.find((l) => /LM_ERR|Error:/.test(l)) ?? lines[0] ?? `exit ${out.status}`).trim() };
}

function toRow(r: MeasureResult): ComputeRow {
  const gflopPerStep = r.workload.flops / 1e9;
  const ms = stats(r.ms);
  const pairs = r.torch ? r.ms.map((m, i) => m / r.torch!.ms[i]) : null;
  const cpuPairs = r.torch ? r.cpuMs.map((m, i) => m / r.torch!.cpuMs[i]) : null;
  return {
    model: r.workload.id,
    backend: r.backend.name,
    threads: r.backend.threads ?? r.config.threads,
    software: r.backend.software,
    adapter: r.backend.adapter,
    description: r.workload.description,
    tokens: r.workload.tokens,
    gflopPerStep,
    ms,
    cpuMs: stats(r.cpuMs),
    tokensPerSecond: r.workload.tokens / (ms.median / 1000),
    gflops: gflopPerStep / (ms.median / 1000),
    torch: r.torch
      ? {
          label:
            `PyTorch ${r.torch.version} ${r.torch.device} ` +
            `(${r.torch.threads} thread${r.torch.threads === 1 ? '' : 's'}, ${r.torch.blas})`,
          ms: stats(r.torch.ms),
          cpuMs: stats(r.torch.cpuMs),
          gflops: gflopPerStep / (stats(r.torch.ms).median / 1000),
        }
      : null,
    ratio: pairs && stats(pairs),
    cpuRatio: cpuPairs && stats(cpuPairs),
    agreement: r.agreement,
    gemm: r.gemm,
    arithmetic: r.arithmetic,
    samples: { ms: r.ms, ratio: pairs },
    note:
      [
        r.backend.software ? `software device (${r.backend.adapter}): correctness only, not a speed figure` : '',
        r.torchNote ?? '',
      ]
        .filter((s) => s)
        .join('; ') || undefined,
  };
}

const range = (s: Stats, digits = 0) =>
  `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
const backendLabel = (r: ComputeRow) =>
  `${r.backend}${r.backend === 'wasm' ? ` ${r.threads} thread${r.threads === 1 ? '' : 's'}` : ''}` +
  `${r.arithmetic && r.arithmetic !== 'simd128' ? ` ${r.arithmetic}` : ''}` +
  `${r.backend === 'webgpu' && r.adapter ? ` on ${r.adapter}` : ''}` +
  `${r.software ? ' (software device)' : ''}`;

/** Bold median ratio with its range; a software device's ratio is shown but is no speed figure. */
function ratioCell(r: ComputeRow): string {
  if (!r.ratio) return '–';
  const text = `${r.ratio.median.toFixed(2)}×`;
  return r.software
    ? `${text} (software device: correctness only)`
    : `**${text}** (${r.ratio.min.toFixed(2)}–${r.ratio.max.toFixed(2)})`;
}

/** Ours (÷ threads), XNNPACK's tf.matMul, PyTorch; the register-only peak: wasm rows; others their tf.matMul. */
function gemmCell(r: ComputeRow): string {
  const g = r.gemm;
  const torch = g.torchGflops?.toFixed(1) ?? '–';
  const shape = `(${g.shape.join('×')})`;
  if (!g.panelGflops) return `${g.gflops.toFixed(1)} / – / ${torch} ${shape}`;
  const threads = r.threads ?? 1;
  const ours = `**${g.panelGflops.toFixed(1)}**${threads > 1 ? ` (${(g.panelGflops / threads).toFixed(1)})` : ''}`;
  return `${ours} / ${g.gflops.toFixed(1)} / ${torch} ${shape}${g.peakGflops ? `; peak ${g.peakGflops.toFixed(1)}` : ''}`;
}

function tableLines(result: ComputeResult): string[] {
  const lines = [
    '| model | backend | ms/step median (min–max) | tokens/s | GFLOP/s | ' +
      'PyTorch, same model and threads: ms/step | PyTorch GFLOP/s | ratio: wall (min–max) | ratio: CPU time | ' +
      'largest matmul alone, GFLOP/s: ours (per thread) / XNNPACK / PyTorch; register-only peak per thread | ' +
      'loss / ‖grad‖ vs PyTorch |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of result.rows) {
    const agree =
      r.agreement.lossRelDiff === undefined
        ? '–'
        : `${r.agreement.lossRelDiff.toExponential(0)} / ${r.agreement.gradNormRelDiff!.toExponential(0)}`;
    lines.push(
      `| ${r.model} (${r.tokens} tokens, ${fmt(r.gflopPerStep)} GFLOP) | ${backendLabel(r)} | ${range(r.ms)} | ` +
        `${r.tokensPerSecond.toFixed(0)} | ${r.gflops.toFixed(1)} | ` +
        `${r.torch ? range(r.torch.ms) : '–'} | ${r.torch ? r.torch.gflops.toFixed(1) : '–'} | ${ratioCell(r)} | ` +
        `${r.cpuRatio ? `${r.cpuRatio.median.toFixed(2)}×` : '–'} | ` +
        `${gemmCell(r)} | ${agree} |`,
    );
  }
  return lines;
}

export async function runComputeBench(opts: ComputeOptions): Promise<ComputeResult> {
  const log = opts.log ?? console.log;
  const write = opts.write ?? true;
  const command =
    opts.command ??
    (opts.device
      ? 'npm run bench:gpu'
      : `npm run bench:compute${opts.quick ? ' -- --quick' : opts.large ? ' -- --large' : ''}`);
  const date = new Date().toISOString();
  const host = machine();
  const rows: ComputeRow[] = [];
  const unavailable: ComputeResult['unavailable'] = [];
  if (opts.device && !opts.rows) throw new Error('the GPU bench names its rows (bench/gpu-bench.ts)');
  const rowsToRun = opts.rows ?? (opts.large ? largePlan() : plan(opts.quick));
  const figures = () =>
    rows.flatMap((r) => [
      figure(`${r.model} ${backendLabel(r)} ms/step`, 'ms', r.samples.ms),
      ...(r.samples.ratio
        ? [figure(`${r.model} ${backendLabel(r)} / PyTorch (same threads)`, '×', r.samples.ratio)]
        : []),
    ]);
  const current = (): ComputeResult => ({
    date,
    quick: opts.quick,
    command,
    machine: host,
    flopFormula: FLOP_FORMULA,
    rows,
    unavailable,
    figures: figures(),
  });
  const save = (result: ComputeResult) => {
    writeJson(
      opts.device ? 'compute.device' : opts.large ? 'compute.large' : opts.quick ? 'compute.quick' : 'compute',
      result,
      opts.resultsDir,
    );
    if (!opts.quick) {
      const [marker, heading] = opts.device
        ? ['compute-device-table', 'Compute on a GPU machine (`loramesh-bench-gpu`, `npm run bench:gpu`)']
        : opts.large
          ? [
              'compute-large-table',
              'Compute at a real shape: Qwen2.5-0.5B, compact base (`npm run bench:compute -- --large`)',
            ]
          : ['compute-table', 'Compute: the LoRA training step (`npm run bench:compute`)'];
      replaceSection(
        marker,
        heading,
        [
          provenance(date, command, host),
          ...(opts.notes ?? []),
          '',
          ...tableLines(result),
          ...(opts.large ? ['', LARGE_NOTE] : []),
          ...(unavailable.length
            ? [
                '',
                'Not measured here: ' +
                  unavailable.map((u) => `${u.model} on ${u.backend} (${u.reason.replace(/\|/g, '\\|')})`).join('; ') +
                  '.',
              ]
            : []),
        ].join('\n'),
        opts.resultsMd,
      );
    }
  };
  for (const config of rowsToRun) {
    const what =
      `${config.model}${config.baseFormat ? ` (${config.baseFormat} base)` : ''} on ${config.backend}` +
      `${config.backend === 'wasm' ? ` (${config.threads} thread${config.threads === 1 ? '' : 's'})` : ''}`;
    log(`${what}: ${config.warmup} warm-up + ${config.repeats} steps, each followed by the same step in PyTorch…`);
    const t0 = performance.now();
    const r = runRow(config, opts.measureArgv, opts.rowTimeoutMs);
    const seconds = ((performance.now() - t0) / 1000).toFixed(0);
    if ('error' in r) {
      unavailable.push({ model: config.model, backend: config.backend, reason: r.error });
      log(`  unavailable (${seconds} s): ${r.error}`);
      continue;
    }
    const row = toRow(r);
    rows.push(row);
    log(
      `  ${fmt(row.gflopPerStep)} GFLOP/step, ${row.tokens} tokens: ${range(row.ms, 1)} ms/step, ` +
        `${row.tokensPerSecond.toFixed(0)} tokens/s, ${row.gflops.toFixed(1)} GFLOP/s` +
        (row.torch
          ? `; ${row.torch.label} ${range(row.torch.ms, 1)} ms/step; ` +
            `ratio ${range(row.ratio!, 2)}× (CPU time ${range(row.cpuRatio!, 2)}×)`
          : '') +
        `; largest matmul alone ${(row.gemm.panelGflops ?? row.gemm.gflops).toFixed(1)}` +
        `${row.gemm.torchGflops ? ` vs ${row.gemm.torchGflops.toFixed(1)}` : ''} GFLOP/s` +
        (row.note ? `; ${row.note}` : '') +
        ` (${seconds} s)`,
    );
    // the GPU bench keeps what it has so far: a script's time limit can stop it between rows
    if (write && opts.device) save(current());
  }
  const result = current();
  if (write) save(result);
  return result;
}

// Run as a script from source only: in the offline bundle this module is part of bench/gpu-bench.ts.
if (import.meta.filename === process.argv[1] && import.meta.filename.endsWith('.ts')) {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => !['--quick', '--no-write', '--large'].includes(a));
  if (unknown.length)
    throw new Error(
      `unknown argument ${JSON.stringify(unknown[0])}; expected --quick, --large or --no-write ` +
        '(the GPU rows: npm run bench:gpu)',
    );
  await runComputeBench({
    quick: args.includes('--quick'),
    large: args.includes('--large'),
    write: !args.includes('--no-write'),
  });
}
