/**
 * `npm run bench:relays` (issue 19): what relays buy the root. The root coordinator (this process: runTraining)
 * serves N simulated workers (bench/lib/sim-workers.ts: real sockets and messages, compute replaced by a sleep)
 * either flat, or through R relays (coordinator/relay/) that run in the simulated workers' processes with their
 * workers. Same payload and simulated step on every side; one micro-batch per worker per step, the reduction
 * block N / R (one block per relay per step). Measured: the root's whole-process CPU per step (user + system),
 * and the step's wall time. On this 2-core machine the simulated workers and relays share the cores with the
 * root, so wall-clock overhead at large N says little; root CPU is the figure.
 *
 * Flags: --quick (small N), --no-write, --layers L (GPT-2-small width, L layers, LoRA r=8 on c_attn: 1 layer is
 * 94 KB per result, 12 is GPT-2 small's 1.13 MB), --compute-ms MS, --steps M (measured steps, default 6).
 * Writes bench/results/relays.json and the relays section of bench/RESULTS.md.
 *
 * --topologies N/R,… (e.g. 32/0,1024/32): only these (R = 0: flat); the first is the reference of the ratios.
 *
 * --shape NAME (scripts/make-checkpoint.ts SHAPES, e.g. qwen2.5-0.5b): the same at a real model's exact shapes
 * instead, LoRA r=16 on every linear projection (PEFT's "all-linear"): 16 workers flat, behind 2 and behind 4
 * relays. Block sums and parameter frames are then tens of MB. Writes bench/results/relays-NAME.json and its own
 * section of bench/RESULTS.md.
 */
import { pathToFileURL } from 'node:url';
import { availableParallelism } from 'node:os';
import { checkModelConfig, type Gpt2Config, type LoraConfig, type ModelConfig } from '../shared/config.ts';
import { SHAPE_NAMES, shapeConfig, type ShapeName } from '../scripts/make-checkpoint.ts';
import { adapterParameterCount, adapterSpec } from '../shared/lora/adapter.ts';
import { writeFigure } from '../coordinator/io/analysis-io.ts';
import { lineChartSvg } from '../shared/analysis/plot-lines.ts';
import { fmt, machine, replaceSection, RESULTS_DIR, stats, writeJson, type Stats } from './lib/results.ts';
import { SimWorkerPool } from './lib/sim-pool.ts';
import {
  ALL_LINEAR_R16,
  C_ATTN_R8,
  dummyExamples,
  GPT2_SMALL,
  runSimulated,
  simulatedModelDir,
} from './lib/sim-mesh.ts';

interface Topology {
  workers: number;
  relays: number;
}

interface RelayPoint extends Topology {
  block: number | null;
  stepMs: Stats;
  rootCpuMsPerStep: number;
  rootCpuMsPerWorkerStep: number;
  /** all simulated-worker processes (relays included) */
  simCpuMsPerStep: number;
  problems: string[];
}

const argv = process.argv.slice(2);
const flag = (name: string, fallback: number) => {
  const at = argv.indexOf(name);
  if (at < 0) return fallback;
  const v = Number(argv[at + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} ${argv[at + 1]}: expected a number > 0`);
  return v;
};

function topologiesFlag(): Topology[] | undefined {
  const at = argv.indexOf('--topologies');
  if (at < 0) return undefined;
  const text = argv[at + 1] ?? '';
  return text.split(',').map((part) => {
    const [workers, relays] = part.split('/').map(Number);
    if (!(Number.isInteger(workers) && workers >= 1 && Number.isInteger(relays) && relays >= 0 && relays <= workers))
      throw new Error(`--topologies ${text}: expected N/R pairs (workers ≥ 1, 0 ≤ relays ≤ workers), got "${part}"`);
    return { workers, relays };
  });
}

function shapeFlag(): ShapeName | undefined {
  const at = argv.indexOf('--shape');
  if (at < 0) return undefined;
  const name = argv[at + 1];
  if (!(SHAPE_NAMES as string[]).includes(name))
    throw new Error(`--shape ${name}: expected one of ${SHAPE_NAMES.join(', ')}`);
  return name as ShapeName;
}

export async function runRelayBench(o: {
  quick: boolean;
  write: boolean;
  layers: number;
  computeMs: number;
  steps: number;
  shape?: ShapeName;
  topologies?: Topology[];
}): Promise<RelayPoint[]> {
  const config: ModelConfig = o.shape
    ? checkModelConfig(shapeConfig(o.shape))
    : ({ ...GPT2_SMALL, n_layer: o.layers } as Gpt2Config);
  const lora: LoraConfig = o.shape ? ALL_LINEAR_R16 : C_ATTN_R8;
  const model = simulatedModelDir(config);
  const resultBytes = 4 * adapterParameterCount(adapterSpec(config, lora));
  const examples = dummyExamples(config, 64, 64);
  const topologies: Topology[] = o.topologies
    ? o.topologies
    : o.shape
      ? [
          { workers: 16, relays: 0 },
          { workers: 16, relays: 2 },
          { workers: 16, relays: 4 },
        ]
      : o.quick
        ? [
            { workers: 8, relays: 0 },
            { workers: 64, relays: 8 },
          ]
        : [
            // root CPU per step against N: flat up to 128, behind 16 relays from 256 (a block of N / 16), and the
            // acceptance's pair, N=1024 behind 16 and 32 relays against N=32 flat
            { workers: 32, relays: 0 },
            { workers: 64, relays: 0 },
            { workers: 128, relays: 0 },
            { workers: 256, relays: 16 },
            { workers: 512, relays: 16 },
            { workers: 1024, relays: 16 },
            { workers: 1024, relays: 32 },
          ];
  const [warmup, measured] = o.quick ? [1, 2] : [2, o.steps];
  const payload = o.shape
    ? `${o.shape} shapes, LoRA r=16 on every linear projection`
    : `GPT-2-small width, ${o.layers} layer(s), LoRA r=8 on c_attn`;
  console.log(
    `relays: ${model.dir}, ${payload}, ${fmt(resultBytes / 2 ** 20)} MiB per result; ` +
      `${o.computeMs} ms simulated compute; ${measured} measured steps after ${warmup}`,
  );
  const points: RelayPoint[] = [];
  for (const t of topologies) {
    // a fresh pool per topology: the processes hold the relays and workers of one run only
    const pool = new SimWorkerPool(Math.max(1, Math.min(4, availableParallelism() - 1)));
    try {
      const times: number[] = [];
      let cpu0 = process.cpuUsage();
      let cpu1 = cpu0;
      const sim: { start?: Promise<{ cpuUs: number }>; end?: Promise<{ cpuUs: number }> } = {};
      const run = await runSimulated({
        pool,
        model,
        examples,
        workers: t.workers,
        lora,
        computeMs: o.computeMs,
        steps: warmup + measured,
        relays: t.relays,
        onStep: (m, at) => {
          if (m.step < warmup) return;
          times.push(at);
          if (m.step === warmup) {
            cpu0 = process.cpuUsage();
            sim.start = pool.usage();
          }
          if (m.step === warmup + measured) {
            cpu1 = process.cpuUsage();
            sim.end = pool.usage();
          }
        },
      });
      const cpuMs = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / 1000;
      const simMs = ((await sim.end!).cpuUs - (await sim.start!).cpuUs) / 1000;
      const point: RelayPoint = {
        ...t,
        block: t.relays ? Math.ceil(t.workers / t.relays) : null,
        stepMs: stats(times.slice(1).map((x, i) => x - times[i])),
        rootCpuMsPerStep: cpuMs / measured,
        rootCpuMsPerWorkerStep: cpuMs / measured / t.workers,
        simCpuMsPerStep: simMs / measured,
        problems: run.problems,
      };
      points.push(point);
      console.log(
        `  N=${t.workers}${t.relays ? ` behind ${t.relays} relays (block ${point.block})` : ' flat'}: ` +
          `root ${fmt(point.rootCpuMsPerStep)} CPU-ms/step (${fmt(point.rootCpuMsPerWorkerStep)} per worker), ` +
          `step ${fmt(point.stepMs.median)} ms, simulated workers and relays ${fmt(point.simCpuMsPerStep)} CPU-ms/step` +
          (run.problems.length ? `; ${run.problems.length} problem line(s), first: ${run.problems[0]}` : ''),
      );
    } finally {
      await pool.close();
    }
  }
  const flat = points[0];
  const rows = points.map(
    (p) =>
      `| ${p.workers} | ${p.relays || 'flat'} | ${p.block ?? '—'} | ${fmt(p.rootCpuMsPerStep)} | ` +
      `${fmt(p.rootCpuMsPerWorkerStep)} | ${fmt(p.rootCpuMsPerStep / flat.rootCpuMsPerStep)}× | ` +
      `${fmt(p.stepMs.median)} | ${fmt(p.simCpuMsPerStep)} |`,
  );
  const rssMB = process.memoryUsage.rss() / 2 ** 20;
  if (o.write && !o.quick && !o.topologies) {
    const m = machine();
    const name = o.shape ? `relays-${o.shape}${process.env.GLIBC_TUNABLES ? '-tuned' : ''}` : 'relays';
    writeJson(name, { date: new Date().toISOString(), machine: m, resultBytes, computeMs: o.computeMs, points });
    const setup =
      `${new Date().toISOString().slice(0, 10)}, ${m.cores} cores (${m.cpu}). Root coordinator = this process; ` +
      `relays and simulated workers in ${Math.max(1, Math.min(4, m.cores - 1))} other processes. Payload: ` +
      `${payload} = ${fmt(resultBytes / 2 ** 20)} MiB per result; ${o.computeMs} ms simulated compute; one ` +
      `micro-batch per worker per step; reduction block = workers / relays. Root CPU = user + system of the ` +
      `root's process over ${measured} measured steps.`;
    const table = [
      `| workers | relays | block | root CPU ms/step | per worker | vs flat N=${flat.workers} | step ms (median) | sim CPU ms/step |`,
      '|---|---|---|---|---|---|---|---|',
      ...rows,
    ];
    // the acceptance's pair (N=1024 behind 16 and 32 relays) in the default run; every relayed point at real shapes
    const ratios = points
      .filter((p) => p.relays && (o.shape || p.workers === 1024))
      .map((p) => `${p.relays} relays: ${fmt(p.rootCpuMsPerStep / flat.rootCpuMsPerStep)}×`)
      .join(', ');
    // glibc's malloc settings change the cost of tens-of-MB frames (README, Large models): a tuned run is its own row
    const tuned = process.env.GLIBC_TUNABLES;
    if (!o.shape) {
      // root CPU per step against N, flat and behind 16 relays
      const series = (name: string, of: RelayPoint[], dashed = false) => ({
        name,
        x: of.map((p) => p.workers),
        values: of.map((p) => p.rootCpuMsPerStep),
        dashed,
      });
      writeFigure(
        RESULTS_DIR,
        'relays-root-cpu',
        lineChartSvg({
          title: `Root CPU per step against N (${fmt(resultBytes / 2 ** 20)} MiB results, ${o.computeMs} ms steps)`,
          xAxis: 'simulated workers N',
          yAxis: 'root CPU ms per step (log)',
          xScale: 'log2',
          logY: true,
          panels: [
            {
              title: '',
              series: [
                series(
                  'flat',
                  points.filter((p) => p.relays === 0),
                ),
                series(
                  'behind 16 relays',
                  points.filter((p) => p.relays === 16),
                ),
                series(
                  `2× flat N=${flat.workers}`,
                  points.map((p) => ({ ...p, rootCpuMsPerStep: 2 * flat.rootCpuMsPerStep })),
                  true,
                ),
              ],
            },
          ],
        }),
      );
    }
    if (o.shape)
      replaceSection(
        `relays-${o.shape}${tuned ? '-tuned' : ''}`,
        `Relays at ${o.shape} shapes (\`${tuned ? `GLIBC_TUNABLES=${tuned} ` : ''}npm run bench:relays -- --shape ${o.shape}\`)`,
        [
          setup,
          '',
          ...table,
          '',
          `Root CPU against ${flat.workers} flat workers — ${ratios}. Every frame here is real-sized: results, ` +
            `block sums and parameter frames of ${fmt(resultBytes / 2 ** 20)} MiB each. Root RSS at the end ` +
            `${Math.round(rssMB)} MiB.`,
        ].join('\n'),
      );
    else
      replaceSection(
        'relays-table',
        'Relays (`npm run bench:relays`)',
        [
          setup,
          '',
          ...table,
          '',
          '![root CPU per step against N](results/relays-root-cpu.svg)',
          '',
          `Acceptance: root CPU at N=1024 behind 16–32 relays within 2× of N=32 flat — ${ratios}.`,
        ].join('\n'),
      );
  }
  return points;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  await runRelayBench({
    quick: argv.includes('--quick'),
    write: !argv.includes('--no-write'),
    layers: flag('--layers', 1),
    computeMs: flag('--compute-ms', 2000),
    steps: flag('--steps', 6),
    shape: shapeFlag(),
    topologies: topologiesFlag(),
  });
  process.exit(0);
}
