/**
 * Heatmaps as SVG: a grid of panels (e.g. one per layer and module) of values in [min, max] with
 * one colour bar — the subspace-similarity figures (LoRA paper Figures 3 and 4) and the sweep's
 * accuracy table. Row 1 is at the top, as in the paper.
 */
import { colorAt, formatNumber, svgDocument, text, ticks } from './plot-svg.ts';

export interface HeatmapPanel {
  title: string;
  /** values[row][col] */
  values: number[][];
  /** labels per row / column (default 1, 2, …) */
  rowLabels?: string[];
  colLabels?: string[];
}

export interface HeatmapOptions {
  title: string;
  panels: HeatmapPanel[];
  /** axis names, shared by every panel */
  rowAxis: string;
  colAxis: string;
  /** colour scale range (default 0..1) */
  min?: number;
  max?: number;
  /** panels per figure row */
  columns?: number;
  /** print each value in its cell (default: when cells are large enough) */
  annotate?: boolean;
  /** how a cell's value is printed (default: 2 decimals) */
  format?: (value: number) => string;
  /** plot area width per panel, px */
  panelWidth?: number;
}

export function heatmapSvg(o: HeatmapOptions): string {
  const [min, max] = [o.min ?? 0, o.max ?? 1];
  const columns = Math.max(1, Math.min(o.columns ?? o.panels.length, o.panels.length));
  const figureRows = Math.ceil(o.panels.length / columns);
  const plotW = o.panelWidth ?? 240;
  const shape = o.panels[0]?.values ?? [[0]];
  const plotH = Math.max(60, Math.min(plotW, (plotW * shape.length) / Math.max(1, shape[0]?.length ?? 1)));
  const [left, top, gapX, gapY] = [64, 56, 36, 70];
  const cellW = plotW / Math.max(1, shape[0]?.length ?? 1);
  const cellH = plotH / Math.max(1, shape.length);
  const annotate = o.annotate ?? (cellW >= 30 && cellH >= 16);
  const format = o.format ?? ((v: number) => (Number.isFinite(v) ? v.toFixed(2) : '-'));
  // Wide enough for the title too (≈ 9 px per character at 16 px bold).
  const width = Math.max(left + columns * plotW + (columns - 1) * gapX + 90, 9 * o.title.length + 40);
  const height = top + figureRows * plotH + (figureRows - 1) * gapY + 60;
  const tooltips = o.panels.reduce((n, panel) => n + panel.values.length * (panel.values[0]?.length ?? 0), 0) <= 4096;
  const body = [text(width / 2, 24, o.title, 'font-size="16" text-anchor="middle" font-weight="bold"')];
  o.panels.forEach((panel, p) => {
    const x0 = left + (p % columns) * (plotW + gapX);
    const y0 = top + Math.floor(p / columns) * (plotH + gapY);
    body.push(text(x0 + plotW / 2, y0 - 8, panel.title, 'font-size="13" text-anchor="middle"'));
    const rows = panel.values.length;
    const cols = panel.values[0]?.length ?? 0;
    const [cw, ch] = [plotW / Math.max(1, cols), plotH / Math.max(1, rows)];
    panel.values.forEach((row, i) =>
      row.forEach((v, j) => {
        const { fill, darkText } = colorAt((v - min) / (max - min || 1));
        const [x, y] = [x0 + j * cw, y0 + i * ch];
        // Cells overlap by 0.5 px so renderers leave no hairline gaps between them.
        // Hover tooltips only on small grids: on 12 panels of 64×64 they would triple the file size.
        const tooltip = tooltips ? `<title>${i + 1},${j + 1}: ${formatNumber(v)}</title>` : '';
        body.push(
          `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" ` +
            `width="${(cw + 0.5).toFixed(1)}" height="${(ch + 0.5).toFixed(1)}" fill="${fill}">${tooltip}</rect>`,
        );
        if (annotate)
          body.push(
            text(
              x + cw / 2,
              y + ch / 2 + 4,
              format(v),
              `font-size="11" text-anchor="middle" fill="${darkText ? 'black' : 'white'}"`,
            ),
          );
      }),
    );
    body.push(
      `<rect x="${x0}" y="${y0}" width="${plotW}" height="${plotH}" fill="none" stroke="#333" stroke-width="0.8"/>`,
    );
    const rowLabels = panel.rowLabels ?? Array.from({ length: rows }, (_, i) => String(i + 1));
    const colLabels = panel.colLabels ?? Array.from({ length: cols }, (_, j) => String(j + 1));
    for (const t of panel.rowLabels ? rowLabels.map((_, i) => i + 1) : ticks(rows)) {
      body.push(text(x0 - 5, y0 + (t - 0.5) * ch + 4, rowLabels[t - 1], 'font-size="10" text-anchor="end"'));
    }
    for (const t of panel.colLabels ? colLabels.map((_, j) => j + 1) : ticks(cols)) {
      body.push(text(x0 + (t - 0.5) * cw, y0 + plotH + 14, colLabels[t - 1], 'font-size="10" text-anchor="middle"'));
    }
    body.push(text(x0 + plotW / 2, y0 + plotH + 30, o.colAxis, 'font-size="11" text-anchor="middle"'));
    if (p % columns === 0)
      body.push(
        text(
          x0 - 40,
          y0 + plotH / 2,
          o.rowAxis,
          `font-size="11" text-anchor="middle" transform="rotate(-90 ${x0 - 40} ${y0 + plotH / 2})"`,
        ),
      );
  });
  body.push(...colorBar(width - 70, top, Math.min(220, figureRows * plotH + (figureRows - 1) * gapY), min, max));
  return svgDocument(width, height, body);
}

function colorBar(x: number, y: number, h: number, min: number, max: number): string[] {
  const steps = 40;
  const out: string[] = [];
  for (let s = 0; s < steps; s++) {
    // Top of the bar is the maximum.
    out.push(
      `<rect x="${x}" y="${(y + (s * h) / steps).toFixed(2)}" width="14" height="${(h / steps + 0.5).toFixed(2)}" ` +
        `fill="${colorAt(1 - s / (steps - 1)).fill}"/>`,
    );
  }
  out.push(`<rect x="${x}" y="${y}" width="14" height="${h}" fill="none" stroke="#333" stroke-width="0.8"/>`);
  for (const f of [0, 0.5, 1])
    out.push(text(x + 18, y + (1 - f) * h + 4, formatNumber(min + f * (max - min)), 'font-size="10"'));
  return out;
}
