/**
 * What every benchmark shares: min/median/max of repeated measurements, a description of the
 * machine, bench/results/<name>.json, marker-delimited sections of bench/RESULTS.md
 * (`<!-- name:start -->` … `<!-- name:end -->`), and line charts as SVG + PNG.
 */
import { mkdirSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { Resvg } from '@resvg/resvg-js';

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

export const figure = (label: string, unit: string, samples: readonly number[]): Figure => ({ label, unit, ...stats(samples) });

/** Fixed-width number: 3 significant digits, no exponent for the ranges benchmarks print. */
export function fmt(x: number): string {
  if (!Number.isFinite(x) || Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : a >= 0.01 ? x.toFixed(3) : x.toPrecision(2);
}

export function formatFigure(f: Figure): string {
  return `${f.label.padEnd(56)} ${fmt(f.median).padStart(9)} ${f.unit.padEnd(9)} (min ${fmt(f.min)}, max ${fmt(f.max)}, n=${f.n})`;
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
    cores: availableParallelism(), cpu: cpus()[0]?.model.trim() ?? 'unknown', memoryGB: Math.round(totalmem() / 2 ** 30),
    node: process.version, platform: `${process.platform} ${process.arch}`, loadAverage: Number(loadavg()[0].toFixed(2)),
  };
}

export const describeMachine = (m: Machine = machine()) => `${m.cores} × ${m.cpu}, ${m.memoryGB} GB RAM, Node ${m.node}, ${m.platform}, load average ${m.loadAverage} at the start`;

/** Resident set size of this process in bytes (VmRSS; the kernel's figure, not V8's). */
export function rssBytes(): number {
  if (process.platform === 'linux') {
    const line = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (line) return Number(line[1]) * 1024;
  }
  return process.memoryUsage.rss();
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

export interface Series {
  name: string;
  points: [number, number][];
  dashed?: boolean;
}

export type AxisScale = 'linear' | 'log2' | 'log10';

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** default linear; log2 suits worker counts, log10 ranges over decades */
  xScale?: AxisScale;
  yScale?: AxisScale;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Linear ticks at 1, 2 or 5 × 10^k, the last one at or above hi. */
function linearTicks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5 || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.floor(lo / step) * step; out.length === 0 || out[out.length - 1] < hi; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Log ticks covering [lo, hi]: powers of 2, or 1-2-5 per decade (powers of 10 over more than 3 decades). */
function logTicks(lo: number, hi: number, scale: 'log2' | 'log10'): number[] {
  const candidates: number[] = [];
  if (scale === 'log2') {
    for (let k = Math.floor(Math.log2(lo)); k <= Math.ceil(Math.log2(hi)); k++) candidates.push(2 ** k);
  } else {
    const mantissas = Math.log10(hi / lo) > 3 ? [1] : [1, 2, 5];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) for (const m of mantissas) candidates.push(Number((m * 10 ** k).toPrecision(6)));
  }
  let first = 0;
  while (first + 1 < candidates.length && candidates[first + 1] <= lo) first++;
  const last = candidates.findIndex((t) => t >= hi);
  return candidates.slice(first, last + 1);
}

function axis(values: number[], scale: AxisScale, zeroBased: boolean): { ticks: number[]; map: (v: number) => number } {
  const shown = scale === 'linear' ? values : values.filter((v) => v > 0);
  let lo = shown.length ? Math.min(...shown) : 1;
  const hi = shown.length ? Math.max(...shown) : 1;
  if (scale === 'linear') {
    if (zeroBased) lo = Math.min(0, lo);
    const ticks = linearTicks(lo, hi === lo ? lo + 1 : hi);
    const [a, b] = [ticks[0], ticks[ticks.length - 1]];
    return { ticks, map: (v) => (v - a) / (b - a) };
  }
  const ticks = logTicks(lo, hi === lo ? lo * 2 : hi, scale);
  const [a, b] = [Math.log(ticks[0]), Math.log(ticks[ticks.length - 1])];
  return { ticks, map: (v) => (Math.log(v) - a) / (b - a) };
}

/** A small line chart (points and lines, legend, axis labels) as standalone SVG text. */
export function lineChartSvg(c: LineChart): string {
  const legendWidth = 24 + 7 * Math.max(8, ...c.series.map((s) => s.name.length));
  const [plotW, H, left, top, bottom] = [480, 400, 70, 40, 50];
  const W = left + plotW + 16 + legendWidth;
  const xScale = c.xScale ?? 'linear';
  const yScale = c.yScale ?? 'linear';
  const ok = ([x, y]: [number, number]) => Number.isFinite(x) && Number.isFinite(y) && (xScale === 'linear' || x > 0) && (yScale === 'linear' || y > 0);
  const pts = c.series.flatMap((s) => s.points).filter(ok);
  const xAxis = axis(pts.map(([x]) => x), xScale, false);
  const yAxis = axis(pts.map(([, y]) => y), yScale, true);
  const px = (x: number) => left + xAxis.map(x) * plotW;
  const py = (y: number) => H - bottom - yAxis.map(y) * (H - top - bottom);
  const right = left + plotW;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${esc(c.title)}</text>`,
    `<rect x="${left}" y="${top}" width="${plotW}" height="${H - top - bottom}" fill="none" stroke="#333"/>`,
  ];
  for (const t of yAxis.ticks) out.push(`<line x1="${left}" x2="${right}" y1="${py(t).toFixed(1)}" y2="${py(t).toFixed(1)}" stroke="#ddd"/><text x="${left - 6}" y="${(py(t) + 4).toFixed(1)}" text-anchor="end">${fmt(t)}</text>`);
  for (const t of xAxis.ticks) out.push(`<line x1="${px(t).toFixed(1)}" x2="${px(t).toFixed(1)}" y1="${top}" y2="${H - bottom}" stroke="#eee"/><text x="${px(t).toFixed(1)}" y="${H - bottom + 16}" text-anchor="middle">${fmt(t)}</text>`);
  out.push(`<text x="${left + plotW / 2}" y="${H - 10}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${(top + H - bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  c.series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const shown = s.points.filter(ok);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    if (shown.length > 1) out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${shown.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
    for (const [x, y] of shown) out.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${color}"/>`);
    const ly = top + 10 + i * 20;
    out.push(`<line x1="${right + 12}" x2="${right + 36}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/><text x="${right + 42}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Writes `<base>.svg` and `<base>.png` (resvg, 2× scale); returns both paths. */
export function writeChart(base: string, chart: LineChart): { svg: string; png: string } {
  const svg = lineChartSvg(chart);
  mkdirSync(dirname(base), { recursive: true });
  writeFileSync(`${base}.svg`, svg);
  const png = new Resvg(svg, { fitTo: { mode: 'zoom', value: 2 }, font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' } }).render().asPng();
  writeFileSync(`${base}.png`, png);
  return { svg: `${base}.svg`, png: `${base}.png` };
}

/** Parses `--quick` and `--no-write` for a benchmark's own npm script. */
export function cliFlags(argv = process.argv.slice(2)): { quick: boolean; write: boolean } {
  for (const a of argv) if (a !== '--quick' && a !== '--no-write') throw new Error(`unknown argument ${JSON.stringify(a)}; expected --quick or --no-write`);
  return { quick: argv.includes('--quick'), write: !argv.includes('--no-write') };
}
