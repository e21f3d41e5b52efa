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
 * 94 KB per result, 12 is GPT-2 small's 1.13 MB), --compute-ms MS.
 * Writes bench/results/relays.json and the relays section of bench/RESULTS.md.
 */
import { pathToFileURL } from 'node:url';
import { availableParallelism } from 'node:os';
import type { Gpt2Config } from '../shared/config.ts';
import { adapterParameterCount, adapterSpec } from '../shared/lora/adapter.ts';
import { fmt, machine, replaceSection, stats, writeJson, type Stats } from './lib/results.ts';
import { SimWorkerPool } from './lib/sim-pool.ts';
import { C_ATTN_R8, dummyExamples, GPT2_SMALL, runSimulated, simulatedModelDir } from './lib/sim-mesh.ts';

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

export async function runRelayBench(o: {
  quick: boolean;
  write: boolean;
  layers: number;
  computeMs: number;
}): Promise<RelayPoint[]> {
  const config: Gpt2Config = { ...GPT2_SMALL, n_layer: o.layers };
  const model = simulatedModelDir(config);
  const resultBytes = 4 * adapterParameterCount(adapterSpec(config, C_ATTN_R8));
  const examples = dummyExamples(config, 64, 64);
  const topologies: Topology[] = o.quick
    ? [
        { workers: 8, relays: 0 },
        { workers: 64, relays: 8 },
      ]
    : [
        { workers: 32, relays: 0 },
        { workers: 1024, relays: 16 },
        { workers: 1024, relays: 32 },
      ];
  const [warmup, measured] = o.quick ? [1, 2] : [2, 3];
  console.log(
    `relays: ${model.dir}, LoRA r=8 on c_attn, ${fmt(resultBytes / 2 ** 20)} MiB per result; ` +
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
  const flat = points.find((p) => p.relays === 0)!;
  const rows = points.map(
    (p) =>
      `| ${p.workers} | ${p.relays || 'flat'} | ${p.block ?? '—'} | ${fmt(p.rootCpuMsPerStep)} | ` +
      `${fmt(p.rootCpuMsPerWorkerStep)} | ${fmt(p.rootCpuMsPerStep / flat.rootCpuMsPerStep)}× | ` +
      `${fmt(p.stepMs.median)} | ${fmt(p.simCpuMsPerStep)} |`,
  );
  if (o.write && !o.quick) {
    const m = machine();
    writeJson('relays', { date: new Date().toISOString(), machine: m, resultBytes, computeMs: o.computeMs, points });
    replaceSection(
      'relays-table',
      'Relays (`npm run bench:relays`)',
      [
        `${new Date().toISOString().slice(0, 10)}, ${m.cores} cores (${m.cpu}). Root coordinator = this process; ` +
          `relays and simulated workers in ${Math.max(1, Math.min(4, m.cores - 1))} other processes. Payload: ` +
          `GPT-2-small width, ${o.layers} layer(s), LoRA r=8 on c_attn = ${fmt(resultBytes / 2 ** 20)} MiB per ` +
          `result; ${o.computeMs} ms simulated compute; one micro-batch per worker per step; reduction block = ` +
          `workers / relays. Root CPU = user + system of the root's process over ${measured} measured steps.`,
        '',
        '| workers | relays | block | root CPU ms/step | per worker | vs flat N=32 | step ms (median) | sim CPU ms/step |',
        '|---|---|---|---|---|---|---|---|',
        ...rows,
        '',
        `Acceptance: root CPU at N=1024 behind 16–32 relays within 2× of N=32 flat — ` +
          points
            .filter((p) => p.relays)
            .map((p) => `${p.relays} relays: ${fmt(p.rootCpuMsPerStep / flat.rootCpuMsPerStep)}×`)
            .join(', ') +
          '.',
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
  });
  process.exit(0);
}
