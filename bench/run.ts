/**
 * `npm run bench` (`-- --quick` for the ≤ 2-minute version, `-- --only scale,parallel` for some):
 * runs compute → scale → parallel → bandwidth in this order, each from its own module, and prints
 * every figure as median (min, max, n). A module that is not there yet is skipped with a line
 * saying so; one that fails is reported and the others still run (exit code 1 at the end).
 *
 * The contract with a module bench/<name>.ts: it exports `run<Name>Bench(opts)` taking
 * `{ quick, write, command, log }` and returning an object with `figures: Figure[]`
 * (bench/lib/results.ts). With `write` (default true) the module itself writes
 * bench/results/<name>.json, its section of bench/RESULTS.md and its plots; in quick mode it
 * writes bench/results/<name>.quick.json only, so quick runs never replace the full figures.
 * This file adds the run's own record: bench/results/run.json and the bench-run section.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  BENCH_DIR,
  describeMachine,
  formatFigure,
  machine,
  replaceSection,
  writeJson,
  type Figure,
} from './lib/results.ts';

interface BenchModule {
  name: string;
  file: string;
  entry: string;
}

const MODULES: BenchModule[] = [
  { name: 'compute', file: 'compute.ts', entry: 'runComputeBench' },
  { name: 'scale', file: 'scale.ts', entry: 'runScaleBench' },
  { name: 'parallel', file: 'parallel.ts', entry: 'runParallelBench' },
  { name: 'bandwidth', file: 'bandwidth.ts', entry: 'runBandwidthBench' },
];

interface Outcome {
  name: string;
  status: 'ok' | 'skipped' | 'failed';
  seconds: number;
  note?: string;
  figures?: Figure[];
}

function parseArgs(argv: string[]): { quick: boolean; write: boolean; only: string[] | null } {
  let only: string[] | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick' || a === '--no-write') continue;
    if (a === '--only' && argv[i + 1]) {
      only = argv[++i].split(',');
      const unknown = only.filter((n) => !MODULES.some((m) => m.name === n));
      if (unknown.length)
        throw new Error(
          `--only: unknown benchmark ${unknown.join(', ')}; expected some of ${MODULES.map((m) => m.name).join(', ')}`,
        );
      continue;
    }
    throw new Error(`unknown argument ${JSON.stringify(a)}; expected --quick, --no-write or --only NAME[,NAME]`);
  }
  return { quick: argv.includes('--quick'), write: !argv.includes('--no-write'), only };
}

const isFigure = (f: unknown): f is Figure =>
  typeof f === 'object' &&
  f !== null &&
  typeof (f as Figure).label === 'string' &&
  typeof (f as Figure).median === 'number';

async function runAll(argv = process.argv.slice(2)): Promise<Outcome[]> {
  const { quick, write, only } = parseArgs(argv);
  const command = `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`;
  const host = machine();
  const date = new Date().toISOString();
  const started = performance.now();
  console.log(`loramesh benchmarks${quick ? ' (quick)' : ''} on ${describeMachine(host)}`);
  const outcomes: Outcome[] = [];
  const results: Record<string, unknown> = {};
  for (const m of MODULES.filter((x) => !only || only.includes(x.name))) {
    const path = join(BENCH_DIR, m.file);
    console.log(`\n== ${m.name} (bench/${m.file})`);
    if (!existsSync(path)) {
      console.log(`skipped: bench/${m.file} not present`);
      outcomes.push({ name: m.name, status: 'skipped', seconds: 0, note: `bench/${m.file} not present` });
      continue;
    }
    const t0 = performance.now();
    try {
      const mod = (await import(path)) as Record<string, unknown>;
      const entry = mod[m.entry];
      if (typeof entry !== 'function') throw new Error(`bench/${m.file} does not export ${m.entry}`);
      // parallel projects its 2-worker point with this run's scale curve
      const opts = {
        quick,
        write,
        command,
        ...(m.name === 'parallel' && results.scale ? { scale: results.scale } : {}),
      };
      const result = (await entry(opts)) as { figures?: unknown };
      results[m.name] = result;
      const figures = Array.isArray(result?.figures) ? result.figures.filter(isFigure) : [];
      const seconds = (performance.now() - t0) / 1000;
      console.log(`-- ${m.name}: median (min, max, n) --`);
      if (figures.length) for (const f of figures) console.log(formatFigure(f));
      else console.log(`(no figures in its result; see bench/results/${m.name}${quick ? '.quick' : ''}.json)`);
      outcomes.push({ name: m.name, status: 'ok', seconds, figures });
    } catch (err) {
      const seconds = (performance.now() - t0) / 1000;
      console.log(`failed: ${m.name}: ${(err as Error).stack ?? err}`);
      outcomes.push({ name: m.name, status: 'failed', seconds, note: (err as Error).message });
    }
  }
  const totalSeconds = (performance.now() - started) / 1000;
  // Issue 9's acceptance: the full run within 15 minutes on this machine, --quick within 2.
  const budgetSeconds = quick ? 120 : 900;
  const met = totalSeconds <= budgetSeconds ? 'met' : '**missed**';
  const budget = `${quick ? '≤ 2 minutes (--quick)' : '≤ 15 minutes'}: ${met}`;
  const summary = outcomes
    .map((o) => `${o.name} ${o.status}${o.status === 'ok' ? ` ${o.seconds.toFixed(0)} s` : ''}`)
    .join(', ');
  console.log(`\n${summary}; total ${totalSeconds.toFixed(0)} s (target ${budget.replace(/\*/g, '')})`);
  if (write) {
    writeJson(quick ? 'run.quick' : 'run', { date, machine: host, command, totalSeconds, outcomes });
    if (!quick) {
      replaceSection(
        'bench-run',
        'Latest full run (`npm run bench`)',
        [
          `${date.slice(0, 16).replace('T', ' ')} UTC, \`${command}\`, ` +
            `${describeMachine(host)}: ${totalSeconds.toFixed(0)} s in all.`,
          '',
          '| benchmark | status | seconds |',
          '|---|---|---:|',
          ...outcomes.map(
            (o) =>
              `| ${o.name} | ${o.status}` +
              `${o.note ? ` (${o.note.replace(/\|/g, '\\|').slice(0, 200)})` : ''} | ${o.seconds.toFixed(0)} |`,
          ),
          '',
          `Time budget ${budget}.`,
        ].join('\n'),
      );
    }
  }
  return outcomes;
}

const outcomes = await runAll();
process.exitCode = outcomes.some((o) => o.status === 'failed') ? 1 : 0;
