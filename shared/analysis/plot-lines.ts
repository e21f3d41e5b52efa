/**
 * Line charts as SVG, in panels: singular-value spectra (one line per layer), amplification per
 * layer (ΔW, W and random directions), anything indexed 1..n. Optional log-scale y.
 */
import { formatNumber, PALETTE, svgDocument, text, ticks } from './plot-svg.ts';

export interface LineSeries {
  name: string;
  /** y at x = 1, 2, … */
  values: number[];
  dashed?: boolean;
}

export interface LinePanel {
  title: string;
  series: LineSeries[];
  /** labels for x = 1, 2, … (default the numbers) */
  xLabels?: string[];
}

export interface LineChartOptions {
  title: string;
  panels: LinePanel[];
  xAxis: string;
  yAxis: string;
  logY?: boolean;
  columns?: number;
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
    const shown = panel.series.flatMap((s) => s.values).filter((v) => Number.isFinite(v) && (!o.logY || v > 0));
    let [lo, hi] = shown.length ? [Math.min(...shown), Math.max(...shown)] : [0, 1];
    if (o.logY) [lo, hi] = [Math.log10(lo), Math.log10(hi)];
    else lo = Math.min(0, lo);
    if (hi - lo < 1e-12) [lo, hi] = [lo - 0.5, hi + 0.5];
    const xAt = (i: number) => x0 + (n === 1 ? plotW / 2 : ((i - 1) / (n - 1)) * plotW);
    const yAt = (v: number) => y0 + plotH - (((o.logY ? Math.log10(v) : v) - lo) / (hi - lo)) * plotH;
    body.push(text(x0 + plotW / 2, y0 - 10, panel.title, 'font-size="13" text-anchor="middle"'));
    body.push(`<rect x="${x0}" y="${y0}" width="${plotW}" height="${plotH}" fill="none" stroke="#333" stroke-width="0.8"/>`);
    for (let t = 0; t <= 4; t++) {
      const y = y0 + plotH - (t / 4) * plotH;
      const value = o.logY ? 10 ** (lo + (t / 4) * (hi - lo)) : lo + (t / 4) * (hi - lo);
      body.push(`<line x1="${x0}" x2="${x0 + plotW}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#ddd" stroke-width="0.6"/>`);
      body.push(text(x0 - 5, y + 4, formatNumber(value), 'font-size="10" text-anchor="end"'));
    }
    for (const i of panel.xLabels ? panel.xLabels.map((_, k) => k + 1) : ticks(n)) {
      body.push(text(xAt(i), y0 + plotH + 14, panel.xLabels?.[i - 1] ?? String(i), 'font-size="10" text-anchor="middle"'));
    }
    body.push(text(x0 + plotW / 2, y0 + plotH + 32, o.xAxis, 'font-size="11" text-anchor="middle"'));
    body.push(text(x0 - 55, y0 + plotH / 2, o.yAxis, `font-size="11" text-anchor="middle" transform="rotate(-90 ${x0 - 55} ${y0 + plotH / 2})"`));
    panel.series.forEach((s, k) => {
      const color = PALETTE[k % PALETTE.length];
      const points = s.values.map((v, i) => [i + 1, v] as const).filter(([, v]) => Number.isFinite(v) && (!o.logY || v > 0));
      const d = points.map(([i, v], m) => `${m === 0 ? 'M' : 'L'}${xAt(i).toFixed(1)},${yAt(v).toFixed(1)}`).join(' ');
      body.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`);
      for (const [i, v] of points.length <= 16 ? points : []) body.push(`<circle cx="${xAt(i).toFixed(1)}" cy="${yAt(v).toFixed(1)}" r="2.2" fill="${color}"/>`);
      if (ownLegends || p % columns === columns - 1 || p === o.panels.length - 1) {
        const lx = x0 + plotW + 14;
        const ly = y0 + 10 + k * 16;
        body.push(`<line x1="${lx}" x2="${lx + 18}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`);
        body.push(text(lx + 22, ly + 4, s.name, 'font-size="10"'));
      }
    });
  });
  return svgDocument(width, height, body);
}
