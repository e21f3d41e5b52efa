/**
 * Line charts as SVG, in panels: singular-value spectra (one line per layer), amplification per
 * layer (ΔW, W and random directions), anything indexed 1..n, and measurements at arbitrary x
 * (benchmarks over worker counts or steps) on a linear or log x axis. Optional log-scale y.
 */
import { formatNumber, PALETTE, svgDocument, text, ticks } from './plot-svg.ts';

export interface LineSeries {
  name: string;
  /** y at x = 1, 2, … (or at `x`) */
  values: number[];
  /** x of each value, for data measured at arbitrary x; default 1, 2, … */
  x?: number[];
  dashed?: boolean;
}

export interface LinePanel {
  title: string;
  series: LineSeries[];
  /** labels for x = 1, 2, … (default the numbers); for panels whose series have no `x` */
  xLabels?: string[];
}

/** log2 suits worker counts, log10 ranges over decades */
export type AxisScale = 'linear' | 'log2' | 'log10';

export interface LineChartOptions {
  title: string;
  panels: LinePanel[];
  xAxis: string;
  yAxis: string;
  logY?: boolean;
  /** x scale of panels whose series give `x` (round ticks: 1-2-5, powers of 2 or of 10); default linear */
  xScale?: AxisScale;
  columns?: number;
}

/** A panel's x axis: where x lies across the plot (0 = left edge, 1 = right edge), and its labelled ticks. */
interface XAxis {
  at(x: number): number;
  ticks: { x: number; label: string }[];
}

/** x = 1..n, evenly spaced, labelled by `xLabels` or the numbers. */
function indexAxis(n: number, xLabels: string[] | undefined): XAxis {
  const at = (i: number) => (n === 1 ? 0.5 : (i - 1) / (n - 1));
  const shown = xLabels ? xLabels.map((_, k) => k + 1) : ticks(n);
  return { at, ticks: shown.map((i) => ({ x: i, label: xLabels?.[i - 1] ?? String(i) })) };
}

/** Linear ticks at 1, 2 or 5 × 10^k from the last one at or below lo to the first at or above hi. */
function linearTicks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 5 || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.floor(lo / step) * step; out.length === 0 || out[out.length - 1] < hi; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/** Log ticks covering [lo, hi]: powers of 2, or 1-2-5 per decade (powers of 10 over more than 3 decades). */
function logTicks(lo: number, hi: number, scale: 'log2' | 'log10'): number[] {
  const candidates: number[] = [];
  if (scale === 'log2') {
    for (let k = Math.floor(Math.log2(lo)); k <= Math.ceil(Math.log2(hi)); k++) candidates.push(2 ** k);
  } else {
    const mantissas = Math.log10(hi / lo) > 3 ? [1] : [1, 2, 5];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of mantissas) candidates.push(Number((m * 10 ** k).toPrecision(6)));
    }
  }
  let first = 0;
  while (first + 1 < candidates.length && candidates[first + 1] <= lo) first++;
  const last = candidates.findIndex((t) => t >= hi);
  return candidates.slice(first, last + 1);
}

/** x at measured values (xs: finite, and > 0 on a log scale): the axis runs from the first round tick to the last. */
function valueAxis(xs: number[], scale: AxisScale): XAxis {
  const lo = xs.length ? Math.min(...xs) : 1;
  const hi = xs.length ? Math.max(...xs) : 1;
  const values =
    scale === 'linear' ? linearTicks(lo, hi === lo ? lo + 1 : hi) : logTicks(lo, hi === lo ? lo * 2 : hi, scale);
  const f = scale === 'linear' ? (v: number) => v : Math.log;
  const [a, b] = [f(values[0]), f(values[values.length - 1])];
  return { at: (x) => (f(x) - a) / (b - a), ticks: values.map((x) => ({ x, label: formatNumber(x) })) };
}

export function lineChartSvg(o: LineChartOptions): string {
  const columns = Math.max(1, Math.min(o.columns ?? o.panels.length, o.panels.length));
  const figureRows = Math.ceil(o.panels.length / columns);
  const [plotW, plotH, left, top, gapY, legendW] = [300, 200, 70, 56, 70, 130];
  // Panels naming the same series share one legend at the end of each row; otherwise each panel has its own.
  const names = (panel: LinePanel) => panel.series.map((s) => s.name).join('\n');
  const ownLegends = o.panels.some((panel) => names(panel) !== names(o.panels[0]));
  const gapX = ownLegends ? 90 + legendW : 90;
  // Wide enough for the title too (≈ 9 px per character at 16 px bold).
  const width = Math.max(left + columns * (plotW + gapX) + (ownLegends ? 0 : legendW), 9 * o.title.length + 40);
  const height = top + figureRows * (plotH + gapY);
  const body = [text(width / 2, 24, o.title, 'font-size="16" text-anchor="middle" font-weight="bold"')];
  o.panels.forEach((panel, p) => {
    const x0 = left + (p % columns) * (plotW + gapX);
    const y0 = top + Math.floor(p / columns) * (plotH + gapY);
    const n = Math.max(1, ...panel.series.map((s) => s.values.length));
    const xScale = o.xScale ?? 'linear';
    const xOf = (s: LineSeries, k: number) => s.x?.[k] ?? k + 1;
    const xOk = (x: number) => Number.isFinite(x) && (xScale === 'linear' || x > 0);
    const yOk = (v: number) => Number.isFinite(v) && (!o.logY || v > 0);
    const pointsOf = (s: LineSeries) =>
      s.values.map((v, k) => [xOf(s, k), v] as const).filter(([x, v]) => xOk(x) && yOk(v));
    const xAxis = panel.series.some((s) => s.x)
      ? valueAxis(
          panel.series.flatMap((s) => pointsOf(s).map(([x]) => x)),
          xScale,
        )
      : indexAxis(n, panel.xLabels);
    const shown = panel.series.flatMap((s) => pointsOf(s).map(([, v]) => v));
    let [lo, hi] = shown.length ? [Math.min(...shown), Math.max(...shown)] : [0, 1];
    if (o.logY) [lo, hi] = [Math.log10(lo), Math.log10(hi)];
    else lo = Math.min(0, lo);
    if (hi - lo < 1e-12) [lo, hi] = [lo - 0.5, hi + 0.5];
    const xAt = (x: number) => x0 + xAxis.at(x) * plotW;
    const yAt = (v: number) => y0 + plotH - (((o.logY ? Math.log10(v) : v) - lo) / (hi - lo)) * plotH;
    body.push(text(x0 + plotW / 2, y0 - 10, panel.title, 'font-size="13" text-anchor="middle"'));
    body.push(
      `<rect x="${x0}" y="${y0}" width="${plotW}" height="${plotH}" fill="none" stroke="#333" stroke-width="0.8"/>`,
    );
    for (let t = 0; t <= 4; t++) {
      const y = y0 + plotH - (t / 4) * plotH;
      const value = o.logY ? 10 ** (lo + (t / 4) * (hi - lo)) : lo + (t / 4) * (hi - lo);
      body.push(
        `<line x1="${x0}" x2="${x0 + plotW}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" ` +
          'stroke="#ddd" stroke-width="0.6"/>',
      );
      body.push(text(x0 - 5, y + 4, formatNumber(value), 'font-size="10" text-anchor="end"'));
    }
    for (const tick of xAxis.ticks) {
      body.push(text(xAt(tick.x), y0 + plotH + 14, tick.label, 'font-size="10" text-anchor="middle"'));
    }
    body.push(text(x0 + plotW / 2, y0 + plotH + 32, o.xAxis, 'font-size="11" text-anchor="middle"'));
    body.push(
      text(
        x0 - 55,
        y0 + plotH / 2,
        o.yAxis,
        `font-size="11" text-anchor="middle" transform="rotate(-90 ${x0 - 55} ${y0 + plotH / 2})"`,
      ),
    );
    panel.series.forEach((s, k) => {
      const color = PALETTE[k % PALETTE.length];
      const points = pointsOf(s);
      const d = points.map(([x, v], m) => `${m === 0 ? 'M' : 'L'}${xAt(x).toFixed(1)},${yAt(v).toFixed(1)}`).join(' ');
      body.push(
        `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`,
      );
      for (const [x, v] of points.length <= 16 ? points : [])
        body.push(`<circle cx="${xAt(x).toFixed(1)}" cy="${yAt(v).toFixed(1)}" r="2.2" fill="${color}"/>`);
      if (ownLegends || p % columns === columns - 1 || p === o.panels.length - 1) {
        const lx = x0 + plotW + 14;
        const ly = y0 + 10 + k * 16;
        body.push(
          `<line x1="${lx}" x2="${lx + 18}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"` +
            `${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`,
        );
        body.push(text(lx + 22, ly + 4, s.name, 'font-size="10"'));
      }
    });
  });
  return svgDocument(width, height, body);
}
