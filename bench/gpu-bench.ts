/**
 * The compute bench's GPU rows: the LoRA training step on tfjs WebGPU in Node (Dawn over Vulkan)
 * next to the machine's PyTorch (CUDA when it has it) on the same weights, adapter and batch, steps
 * alternated (bench/compute.ts, one process per row). Rows: the demo model, GPT-2 small's shape and
 * Qwen2.5-0.5B's shape (random weights made on the machine, scripts/make-checkpoint.ts's shape), each
 * with a float32 base and compact bases (--base-format).
 *
 *   from a checkout:        npm run bench:gpu -- OUTDIR [options]
 *   from the offline bundle: ./loramesh-bench-gpu OUTDIR [options]   (scripts/bundle.mjs; no npm, no tsx)
 *
 * Writes OUTDIR/compute.device.json and OUTDIR/compute.device.md (the table bench/RESULTS.md takes).
 * Before the rows it says what it found: Node, the Vulkan loader and drivers (node/vulkan.ts), the
 * WebGPU adapter, PyTorch and its device. A software adapter (SwiftShader, lavapipe) is said loudly
 * and every row is marked "software device"; on one, unless rows or repeats are given, only the demo
 * row runs, one step without warm-up (a GPT-2 step takes minutes there).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { initBackend } from '../node/backend.ts';
import { describeVulkan, probeVulkan } from '../node/vulkan.ts';
import { type ComputeResult, runComputeBench } from './compute.ts';
import { measure, type MeasureConfig } from './compute-measure.ts';

const MODELS = ['demo', 'gpt2-small', 'qwen2.5-0.5b'] as const;
const FORMATS = ['f32', 'bf16', 'int8', 'nf4'] as const;
type Model = (typeof MODELS)[number];
type Format = (typeof FORMATS)[number];

/** Running from the bundle's built file rather than the TypeScript source. */
const BUILT = !import.meta.filename.endsWith('.ts');

function listOf<T extends string>(choices: readonly T[]) {
  return (value: string): T[] => {
    const list = value.split(',').map((s) => s.trim());
    for (const v of list)
      if (!(choices as readonly string[]).includes(v))
        throw new InvalidArgumentError(`unknown ${JSON.stringify(v)}; expected a comma list of ${choices.join(', ')}`);
    return list as T[];
  };
}

function count(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`expected an integer ≥ ${min}, got ${JSON.stringify(value)}`);
    return n;
  };
}

interface Python {
  path: string;
  version: string;
  cuda: string | null;
}

/** `path` if it runs and imports torch: its torch version and CUDA device name (null: none). */
function askTorch(path: string): Python | null {
  const out = spawnSync(
    path,
    [
      '-c',
      'import json, torch; c = torch.cuda.is_available(); ' +
        'import sys; print(json.dumps({"path": sys.executable, "version": torch.__version__, ' +
        '"cuda": torch.cuda.get_device_name(0) if c else None}))',
    ],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (out.status !== 0) return null;
  try {
    // the interpreter's absolute path: the rows check it exists
    return JSON.parse(out.stdout.trim().split('\n').pop()!) as Python;
  } catch {
    return null;
  }
}

/** The python to run PyTorch with: the one asked for, else the first with torch, preferring CUDA. */
function pickPython(asked: string | undefined): { python: Python | null; tried: string[] } {
  const candidates = asked ? [asked] : ['python3', '/usr/bin/python3', 'python'];
  const found = candidates.map(askTorch);
  const python = found.find((p) => p?.cuda) ?? found.find((p) => p) ?? null;
  return { python, tried: candidates };
}

export interface GpuBenchOptions {
  out: string;
  models?: Model[];
  formats?: Format[];
  warmup?: number;
  repeats?: number;
  python?: string;
  torchDevice?: 'cuda' | 'cpu' | 'none';
  rowTimeoutS: number;
}

export async function runGpuBench(o: GpuBenchOptions, log: (l: string) => void = console.log): Promise<ComputeResult> {
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  log(
    `loramesh GPU bench (${BUILT ? 'offline bundle' : 'checkout'}), Node ${process.version}, ${process.platform}-${process.arch}`,
  );
  if (process.platform === 'linux') for (const line of describeVulkan(probeVulkan())) log(line);
  const smi = spawnSync('nvidia-smi', ['--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], {
    encoding: 'utf8',
  });
  log(`nvidia-smi: ${smi.status === 0 ? smi.stdout.trim() : 'not available'}`);

  // The adapter, once here (each row starts its own): names it before minutes of rows, and says
  // at once when it is a software one.
  const gpu = await initBackend('webgpu', log);
  const software = gpu.software;
  if (software)
    log(
      `SOFTWARE DEVICE: WebGPU runs on ${gpu.adapter} (a CPU implementation), not on a GPU. ` +
        'Every row is marked "software device"; its times are correctness checks, not GPU figures.',
    );

  const { python, tried } = pickPython(o.python ?? process.env.LORAMESH_BENCH_PYTHON);
  let torchDevice = o.torchDevice ?? (python?.cuda ? 'cuda' : python ? 'cpu' : 'none');
  if (!python && torchDevice !== 'none') {
    log(`no python with torch among ${tried.join(', ')} (--python PATH picks one): no PyTorch column`);
    torchDevice = 'none';
  } else if (python) {
    log(`PyTorch ${python.version} in ${python.path}: ${python.cuda ? `CUDA on ${python.cuda}` : 'no CUDA device'}`);
    if (torchDevice === 'cuda' && !python.cuda)
      throw new Error(`--torch-device cuda: torch in ${python.path} sees no CUDA device`);
    if (torchDevice === 'cpu' && !o.torchDevice)
      log('the PyTorch column runs on the CPU (torch has no CUDA device here)');
    process.env.LORAMESH_BENCH_PYTHON = python.path;
  }

  // A software device takes seconds to minutes a step: one step per row, and only the demo row,
  // unless asked otherwise.
  const quickSoftware = software && o.repeats === undefined;
  if (quickSoftware)
    log(
      `software device: one step per row, no warm-up${o.models ? '' : ', the demo row only'} ` +
        '(--models / --repeats ask for more)',
    );
  const models = o.models ?? (software ? ['demo'] : [...MODELS]);
  const formats = o.formats ?? (software && !o.models ? ['f32'] : ['f32', 'nf4']);
  // Order: the small models first, then Qwen with its compact bases before float32 (making Qwen's
  // weights takes about a minute a row): a time limit that stops the bench cuts the least useful rows.
  const order = [
    ...models.filter((m) => m !== 'qwen2.5-0.5b').flatMap((model) => formats.map((format) => ({ model, format }))),
    ...models
      .filter((m) => m === 'qwen2.5-0.5b')
      .flatMap((model) => [...formats].reverse().map((format) => ({ model, format }))),
  ];
  const rows: MeasureConfig[] = [];
  for (const { model, format } of order) {
    const large = model === 'qwen2.5-0.5b';
    rows.push({
      model,
      backend: 'webgpu',
      threads: 1,
      warmup: o.warmup ?? (quickSoftware ? 0 : large ? 1 : 3),
      repeats: o.repeats ?? (quickSoftware ? 1 : large ? 5 : 10),
      batch: large ? 1 : 2,
      time: 128,
      torchDevice: torchDevice as MeasureConfig['torchDevice'],
      // a float32 Qwen base is held as one compact float32 copy (the --large rows' convention)
      ...(format !== 'f32' || large ? { baseFormat: format } : {}),
    });
  }
  const command = BUILT
    ? `./loramesh-bench-gpu ${process.argv.slice(2).join(' ')}`
    : `npm run bench:gpu -- ${process.argv.slice(2).join(' ')}`;
  const result = await runComputeBench({
    quick: false,
    device: true,
    rows,
    command: command.trim(),
    log,
    resultsDir: out,
    resultsMd: join(out, 'compute.device.md'),
    rowTimeoutMs: o.rowTimeoutS * 1000,
    notes: [
      `GPU (nvidia-smi): ${smi.status === 0 ? smi.stdout.trim().replace(/\n/g, '; ') : 'none found'}. ` +
        `WebGPU adapter: ${gpu.adapter}${software ? ' (software device)' : ''}. ` +
        `PyTorch: ${python ? `${python.version}, ${torchDevice === 'cuda' ? `CUDA on ${python.cuda}` : torchDevice}` : 'none'}.`,
    ],
    measureArgv: BUILT ? [import.meta.filename, '--measure'] : undefined,
  });
  log(`wrote ${join(out, 'compute.device.json')} and ${join(out, 'compute.device.md')}`);
  if (software) log(`SOFTWARE DEVICE: ${gpu.adapter}; these rows are not GPU figures`);
  return result;
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--measure') {
    // one row, in its own process (what bench/compute-measure.ts does from the source)
    console.log(JSON.stringify(await measure(JSON.parse(argv[1]) as MeasureConfig)));
    process.exit(0); // the GPU device would otherwise keep the process alive
  }
  const program = new Command(BUILT ? 'loramesh-bench-gpu' : 'npm run bench:gpu --')
    .description('the LoRA step on WebGPU (Dawn) next to PyTorch on this machine; writes JSON and Markdown to OUTDIR')
    .argument('<outdir>', 'folder for compute.device.json and compute.device.md')
    .option('--models <list>', `comma list of ${MODELS.join(', ')} (default: all)`, listOf(MODELS))
    .option('--formats <list>', `base formats, comma list of ${FORMATS.join(', ')} (default: f32,nf4)`, listOf(FORMATS))
    .option('--warmup <n>', 'warm-up steps per row (default 3; Qwen 1)', count(0))
    .option('--repeats <n>', 'measured steps per row (default 10; Qwen 5)', count(1))
    .option('--python <path>', 'python with torch (default: LORAMESH_BENCH_PYTHON, else the first python3 with torch)')
    .option('--torch-device <device>', 'cuda | cpu | none (default: cuda when torch sees one)', (v: string) => {
      if (!['cuda', 'cpu', 'none'].includes(v))
        throw new InvalidArgumentError(`expected cuda, cpu or none, got ${JSON.stringify(v)}`);
      return v;
    })
    .option('--row-timeout-s <n>', 'stop a row after this many seconds', count(1), 240)
    .showHelpAfterError()
    .action(async (outdir: string, opts) => {
      const result = await runGpuBench({ out: outdir, ...opts });
      process.exit(result.rows.length ? 0 : 1);
    });
  await program.parseAsync(argv, { from: 'user' });
}

// The bundle's entry, or `tsx bench/gpu-bench.ts` from a checkout.
if (import.meta.filename === process.argv[1] || BUILT) await main(process.argv.slice(2));
