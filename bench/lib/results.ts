/**
 * What every benchmark shares: min/median/max of repeated measurements, a description of the
 * machine, bench/results/<name>.json, marker-delimited sections of bench/RESULTS.md
 * (`<!-- name:start -->` … `<!-- name:end -->`). Charts are shared/analysis/plot-lines.ts's, written
 * as SVG + PNG by coordinator/io/analysis-io.ts's writeFigure.
 */
import { mkdirSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';

export const BENCH_DIR = join(import.meta.dirname, '..');
export const RESULTS_DIR = join(BENCH_DIR, 'results');
export const RESULTS_MD = join(BENCH_DIR, 'RESULTS.md');

export interface Stats {
  min: number;
  median: number;
  max: number;
  /** how many measurements */
  n: number;
}

export function stats(samples: readonly number[]): Stats {
  if (samples.length === 0) return { min: NaN, median: NaN, max: NaN, n: 0 };
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { min: s[0], median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, max: s[s.length - 1], n: s.length };
}

/** One printed figure: a quantity measured `n` times (steps, repeats, trials). */
export interface Figure extends Stats {
  label: string;
  unit: string;
}

export const figure = (label: string, unit: string, samples: readonly number[]): Figure => ({
  label,
  unit,
  ...stats(samples),
});

/** Fixed-width number: 3 significant digits, no exponent for the ranges benchmarks print. */
export function fmt(x: number): string {
  if (!Number.isFinite(x) || Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  return a >= 100
    ? x.toFixed(0)
    : a >= 10
      ? x.toFixed(1)
      : a >= 1
        ? x.toFixed(2)
        : a >= 0.01
          ? x.toFixed(3)
          : x.toPrecision(2);
}

export function formatFigure(f: Figure): string {
  return (
    `${f.label.padEnd(56)} ${fmt(f.median).padStart(9)} ${f.unit.padEnd(9)} ` +
    `(min ${fmt(f.min)}, max ${fmt(f.max)}, n=${f.n})`
  );
}

export interface Machine {
  cores: number;
  cpu: string;
  memoryGB: number;
  node: string;
  platform: string;
  /** 1-minute load average when measured: other work on a shared machine shows up here */
  loadAverage: number;
}

export function machine(): Machine {
  return {
    cores: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    loadAverage: Number(loadavg()[0].toFixed(2)),
  };
}

export const describeMachine = (m: Machine = machine()) =>
  `${m.cores} × ${m.cpu}, ${m.memoryGB} GB RAM, Node ${m.node}, ${m.platform}, ` +
  `load average ${m.loadAverage} at the start`;

/** Resident set size of this process in bytes (VmRSS; the kernel's figure, not V8's). */
export function rssBytes(): number {
  if (process.platform === 'linux') {
    const line = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (line) return Number(line[1]) * 1024;
  }
  return process.memoryUsage.rss();
}

/**
 * VmHWM (peak resident set) of this process. Not getrusage's maxRSS: on Linux that survives
 * fork + exec, so a child would report its parent's peak.
 */
export function peakRssBytes(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.resourceUsage().maxRSS * 1024;
}

export function writeJson(name: string, data: unknown, dir = RESULTS_DIR): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.json`);
  writeFileSync(path, JSON.stringify(data, null, 2) + '\n');
  return path;
}

/**
 * Replaces the body between `<!-- marker:start -->` and `<!-- marker:end -->` in RESULTS.md; a
 * missing section is appended under `## heading`. Other sections are left byte for byte.
 */
export function replaceSection(marker: string, heading: string, body: string, path = RESULTS_MD): void {
  const start = `<!-- ${marker}:start -->`;
  const end = `<!-- ${marker}:end -->`;
  let md = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmark results\n';
  if (!md.includes(start) || !md.includes(end)) md = `${md.trimEnd()}\n\n## ${heading}\n\n${start}\n${end}\n`;
  const at = md.indexOf(start);
  const stop = md.indexOf(end, at);
  writeFileSync(path, `${md.slice(0, at + start.length)}\n${body.trim()}\n${md.slice(stop)}`);
}

/** The header line of every RESULTS.md section: when, where, and the command that made it. */
export const provenance = (date: string, command: string, m: Machine = machine()) =>
  `Measured ${date.slice(0, 16).replace('T', ' ')} UTC on ${describeMachine(m)}; command: \`${command}\`.`;

/** Parses `--quick` and `--no-write` for a benchmark's own npm script. */
export function cliFlags(argv = process.argv.slice(2)): { quick: boolean; write: boolean } {
  for (const a of argv)
    if (a !== '--quick' && a !== '--no-write')
      throw new Error(`unknown argument ${JSON.stringify(a)}; expected --quick or --no-write`);
  return { quick: argv.includes('--quick'), write: !argv.includes('--no-write') };
}
