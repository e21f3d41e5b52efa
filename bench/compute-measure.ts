/**
 * One row of the compute bench, run in its own process (a tfjs backend, and wasm's thread count,
 * are fixed per process): the LoRA training step of one workload on one backend, alternated step
 * by step with the same step in PyTorch (bench/torch_compute.py, same weights, adapter, batch and
 * threads), so both sides see the same machine load and every ratio is a pair measured back to
 * back. Also checks that both compute the same thing: loss and gradient norm agree.
 * Run by bench/compute.ts as `tsx bench/compute-measure.ts '<MeasureConfig JSON>'`; prints one
 * JSON line (MeasureResult) last.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as tf from '@tensorflow/tfjs-core';
import { FrozenBase } from '../shared/lora/params.ts';
import { baseForKernels, compactBase, dequantizedWeights } from '../shared/model/compact-base.ts';
import { CompactWeight, compactProducts } from '../shared/model/compact-linear.ts';
import type { ArithmeticVariant } from '../shared/arithmetic.ts';
import { quantizeMatrix } from '../shared/quant/quantize.ts';
import { selectArithmetic, selectedArithmetic } from '../kernels/arithmetic.ts';
import { computeGradients, computeGradientsAsync, type GradientResult } from '../shared/train/gradients.ts';
import { initBackend, type BackendName } from '../node/backend.ts';
import { wasmPeakGflops } from '../kernels/wasm-kernels.ts';
import { packagePath } from '../node/package-root.ts';
import { linearModulePaths, linearShape } from '../shared/model/causal-lm.ts';
import { demoWorkload, gpt2Workload, qwenWorkload, writeTorchInputs, type Workload } from './compute-workloads.ts';

export interface MeasureConfig {
  /** qwen2.5-0.5b: `npm run bench:compute -- --large`, with a baseFormat */
  model: 'demo' | 'gpt2-small' | 'qwen2.5-0.5b';
  backend: BackendName;
  /** wasm XNNPACK threads, and PyTorch's threads */
  threads: number;
  warmup: number;
  repeats: number;
  /** GPT-2 workload shape */
  batch: number;
  time: number;
  /** 'cpu', 'cuda', or 'none' for no PyTorch column */
  torchDevice: 'cpu' | 'cuda' | 'none';
  /**
   * hold the base compact in this format (shared/model/compact-linear.ts); PyTorch then computes in
   * float32 on the dequantized weights, the same numbers. Absent: the float32 path.
   */
  baseFormat?: 'f32' | 'bf16' | 'int8' | 'nf4';
  /**
   * the wasm kernels' arithmetic (shared/arithmetic.ts; absent: simd128). relaxed-fma also holds a
   * float32 base as compact f32 (baseForKernels), so its frozen products run the compact GEMM (kernels/c/compact-gemm.c).
   */
  arithmetic?: ArithmeticVariant;
}

export interface TorchInfo {
  threads: number;
  version: string;
  blas: string;
  device: string;
}

export interface MeasureResult {
  config: MeasureConfig;
  backend: { name: string; threads?: number; software: boolean; adapter?: string; note: string };
  workload: {
    id: string;
    description: string;
    parameters: number;
    batch: number;
    time: number;
    tokens: number;
    flops: number;
    loraTargets: string[];
    r: number;
  };
  /** wall and process-CPU milliseconds per step, one entry per repeat */
  ms: number[];
  cpuMs: number[];
  torch: (TorchInfo & { ms: number[]; cpuMs: number[] }) | null;
  /** why there is no PyTorch column, when there is none */
  torchNote?: string;
  /**
   * The largest linear layer's forward product alone, (N, d_in)·(d_in, d_out), best of 10: the
   * matmul roofline of each side on this workload (ours: the better of the two orientations
   * FrozenLinear can use).
   */
  gemm: {
    shape: [number, number, number];
    gflops: number;
    torchGflops?: number;
    /**
     * wasm: the same product through the project's GEMM (kernels/c/compact-gemm.c, W held as compact
     * f32, as a worker holds it), in the row's arithmetic and threads: what the step's frozen products run
     */
    panelGflops?: number;
    /** wasm: this CPU's register-only multiply-add rate in the row's arithmetic, one thread (lm_peak) */
    peakGflops?: number;
  };
  /** the wasm kernels' arithmetic the row ran */
  arithmetic: ArithmeticVariant;
  /** loss and ‖gradient‖₂ of both sides, and their relative differences */
  agreement: {
    loss: number;
    gradNorm: number;
    torchLoss?: number;
    torchGradNorm?: number;
    lossRelDiff?: number;
    gradNormRelDiff?: number;
  };
}

/**
 * Debian's python3-torch lives under /usr/bin/python3 (the pyenv python3 first on PATH has no torch);
 * LORAMESH_BENCH_PYTHON overrides.
 */
const PYTHON = process.env.LORAMESH_BENCH_PYTHON || '/usr/bin/python3';

/** PyTorch as a line-based server: start, then one step per request. */
class TorchServer {
  private readonly lines: AsyncIterator<string>;

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    readonly stderr: string[],
  ) {
    this.lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  }

  static async start(dir: string, threads: number, device: string): Promise<{ server: TorchServer; info: TorchInfo }> {
    const child = spawn(PYTHON, [packagePath('bench', 'torch_compute.py'), dir, String(threads), device], {
      env: { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) },
    });
    const stderr: string[] = [];
    child.stderr.on('data', (d: Buffer) => stderr.push(d.toString()));
    const server = new TorchServer(child, stderr);
    const info = (await server.next()) as unknown as TorchInfo;
    return { server, info };
  }

  private async next(): Promise<Record<string, number>> {
    const { value, done } = await this.lines.next();
    if (done) throw new Error(`torch_compute.py exited: ${this.stderr.join('').slice(-1500)}`);
    return JSON.parse(value);
  }

  async gemm(m: number, k: number, n: number): Promise<number> {
    this.child.stdin.write(`gemm ${m} ${k} ${n}\n`);
    return (await this.next()).gflops;
  }

  async step(): Promise<{ ms: number; cpuMs: number; loss: number; gradNorm: number }> {
    this.child.stdin.write('step\n');
    return (await this.next()) as { ms: number; cpuMs: number; loss: number; gradNorm: number };
  }

  stop(): void {
    this.child.stdin.end('quit\n');
  }
}

/** (N, d_in, d_out) of the block linear with the most weights (the LM head excluded: it runs once). */
function largestLinear(w: Workload): [number, number, number] {
  let best: [number, number] = [0, 0];
  for (const path of linearModulePaths(w.config)) {
    const [dOut, dIn] = linearShape(w.config, path);
    if (path !== 'lm_head' && dOut * dIn > best[0] * best[1]) best = [dOut, dIn];
  }
  return [w.mb.batch * w.mb.time, best[1], best[0]];
}

/** Best rate of x·W and of W·xᵀ on this backend (W cached, as for a frozen layer), over 10 repeats each. */
async function gemmGflops(n: number, dIn: number, dOut: number): Promise<number> {
  const [x, wT, w, xT] = [
    tf.randomNormal([n, dIn]),
    tf.randomNormal([dIn, dOut]),
    tf.randomNormal([dOut, dIn]),
    tf.randomNormal([dIn, n]),
  ];
  let best = Infinity;
  for (const [a, b] of [
    [x, wT],
    [w, xT],
  ]) {
    for (let i = 0; i < 12; i++) {
      const t0 = performance.now();
      const y = tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D);
      await y.data();
      y.dispose();
      if (i >= 2) best = Math.min(best, performance.now() - t0);
    }
  }
  tf.dispose([x, wT, w, xT]);
  return (2 * n * dIn * dOut) / best / 1e6;
}

/**
 * Best rate of the same product through the project's GEMM (W held as compact f32, as workers hold a
 * float32 base: the micro-kernel, packing and tile loops), forward x·Wᵀ and backward dy·W, 10 repeats each.
 */
async function panelGflops(n: number, dIn: number, dOut: number): Promise<number> {
  const values = tf.tidy(() => tf.randomNormal([dOut * dIn]).dataSync() as Float32Array);
  const w = new CompactWeight(quantizeMatrix(values, dOut, dIn, { format: 'f32' }));
  const products = compactProducts(w);
  const [x, dy] = [tf.randomNormal([n, dIn]) as tf.Tensor2D, tf.randomNormal([n, dOut]) as tf.Tensor2D];
  let best = Infinity;
  for (const run of [() => products.forward(x), () => products.backward(dy)]) {
    for (let i = 0; i < 12; i++) {
      const t0 = performance.now();
      const y = run();
      await y.data();
      y.dispose();
      if (i >= 2) best = Math.min(best, performance.now() - t0);
    }
  }
  tf.dispose([x, dy]);
  w.dispose();
  return (2 * n * dIn * dOut) / best / 1e6;
}

const gradNorm = (r: GradientResult) =>
  Math.sqrt([...r.grads.values()].reduce((s, g) => s + g.reduce((a, v) => a + v * v, 0), 0));
const relDiff = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);

export async function measure(config: MeasureConfig): Promise<MeasureResult> {
  const info = await initBackend(config.backend, () => {}, {
    wasmThreads: config.backend === 'wasm' ? config.threads : undefined,
  });
  if (config.arithmetic) selectArithmetic(config.arithmetic);
  const format = config.baseFormat && { format: config.baseFormat };
  if (config.model === 'qwen2.5-0.5b' && !format) throw new Error('the qwen2.5-0.5b row needs a baseFormat');
  const plain: Workload =
    config.model === 'demo'
      ? await demoWorkload()
      : config.model === 'gpt2-small'
        ? gpt2Workload(config.batch, config.time)
        : qwenWorkload(config.batch, config.time, format!);
  // baseForKernels takes over the tensors it converts: it gets clones (on wasm, shared buffers), so
  // PyTorch's inputs below still read the float32 originals
  const clones = () => new Map([...plain.weights].map(([name, t]) => [name, tf.clone(t)]));
  const base = new FrozenBase(
    plain.config,
    plain.base ??
      (format
        ? compactBase(plain.config, plain.weights, format)
        : baseForKernels(plain.config, config.backend === 'wasm' ? clones() : plain.weights)),
  );
  // PyTorch gets the weights the compact base dequantizes to
  const w: Workload =
    format && !plain.base
      ? {
          ...plain,
          id: `${plain.id} ${format.format}`,
          weights: dequantizedWeights(plain.config, plain.weights, format),
        }
      : plain;
  // WebGPU cannot read synchronously in Node; the async read is the step's end on every backend.
  const step = () => computeGradientsAsync(w.model, base, w.spec, w.adapter, w.lora, w.mb);
  const stepSync = () => computeGradients(w.model, base, w.spec, w.adapter, w.lora, w.mb);
  const timed = async () => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const r = config.backend === 'webgpu' ? await step() : stepSync();
    const c = process.cpuUsage(c0);
    return { r, ms: performance.now() - t0, cpuMs: (c.user + c.system) / 1000 };
  };

  let torch: { server: TorchServer; info: TorchInfo; dir: string } | null = null;
  let torchNote: string | undefined;
  if (config.torchDevice === 'none') torchNote = 'PyTorch column not asked for';
  else if (!existsSync(PYTHON) || spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status !== 0) {
    torchNote =
      `no torch in ${PYTHON} (apt-get install python3-torch libopenblas0-openmp, ` +
      'or set LORAMESH_BENCH_PYTHON): no PyTorch column';
  } else if (
    config.torchDevice === 'cuda' &&
    spawnSync(PYTHON, ['-c', 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'], { stdio: 'ignore' })
      .status !== 0
  ) {
    torchNote = `torch in ${PYTHON} has no CUDA device: no PyTorch column`;
  } else {
    const dir = mkdtempSync(join(tmpdir(), 'loramesh-compute-'));
    await writeTorchInputs(w, dir);
    torch = { ...(await TorchServer.start(dir, config.threads, config.torchDevice)), dir };
  }
  // a large workload's dequantized float32 weights were for PyTorch only: free them before the steps
  if (plain.base) {
    const kept = new Set(plain.base.values());
    for (const t of w.weights.values()) if (!kept.has(t)) t.dispose();
  }

  try {
    // warmup 0 is allowed (a software GPU's step takes seconds): the first measured step then
    // includes shader compilation
    let last: Awaited<ReturnType<typeof timed>> | undefined;
    for (let i = 0; i < config.warmup; i++) last = await timed();
    let torchLast: Awaited<ReturnType<TorchServer['step']>> | null = null;
    for (let i = 0; torch && i < config.warmup; i++) torchLast = await torch.server.step();
    const ms: number[] = [];
    const cpuMs: number[] = [];
    const torchMs: number[] = [];
    const torchCpuMs: number[] = [];
    for (let i = 0; i < config.repeats; i++) {
      last = await timed();
      ms.push(last.ms);
      cpuMs.push(last.cpuMs);
      if (torch) {
        torchLast = await torch.server.step();
        torchMs.push(torchLast.ms);
        torchCpuMs.push(torchLast.cpuMs);
      }
    }
    if (!last) throw new Error('a row needs at least one step (repeats ≥ 1)');
    const ours = { loss: last.r.lossSum, gradNorm: gradNorm(last.r) };
    const shape = largestLinear(w);
    const gemm = {
      shape,
      gflops: await gemmGflops(...shape),
      torchGflops: torch ? await torch.server.gemm(...shape) : undefined,
      panelGflops: info.name === 'wasm' ? await panelGflops(...shape) : undefined,
      peakGflops: info.name === 'wasm' ? (wasmPeakGflops() ?? undefined) : undefined,
    };
    return {
      config,
      backend: {
        name: info.name,
        threads: info.threads,
        software: info.software,
        adapter: info.adapter,
        note: info.note,
      },
      workload: {
        id: w.id,
        description: w.description,
        parameters: w.parameters,
        batch: w.mb.batch,
        time: w.mb.time,
        tokens: w.mb.batch * w.mb.time,
        flops: w.flops,
        loraTargets: w.lora.targetModules,
        r: w.lora.r,
      },
      ms,
      cpuMs,
      gemm,
      arithmetic: selectedArithmetic(),
      torch: torch ? { ...torch.info, ms: torchMs, cpuMs: torchCpuMs } : null,
      torchNote,
      agreement: torchLast
        ? {
            ...ours,
            torchLoss: torchLast.loss,
            torchGradNorm: torchLast.gradNorm,
            lossRelDiff: relDiff(ours.loss, torchLast.loss),
            gradNormRelDiff: relDiff(ours.gradNorm, torchLast.gradNorm),
          }
        : ours,
    };
  } finally {
    if (torch) {
      torch.server.stop();
      rmSync(torch.dir, { recursive: true, force: true });
    }
    tf.disposeVariables();
  }
}

// Run as a script from source only (the offline bundle starts rows through bench/gpu-bench.ts --measure).
if (import.meta.filename === process.argv[1] && import.meta.filename.endsWith('.ts')) {
  const result = await measure(JSON.parse(process.argv[2]) as MeasureConfig);
  console.log(JSON.stringify(result));
  process.exit(0); // wasm pthreads and the GPU device would otherwise linger
}
