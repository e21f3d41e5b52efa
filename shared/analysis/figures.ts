/** The toolkit's figures, from reports to SVG text: spectra, amplification and subspace similarity. */
import { heatmapSvg } from './plot-heatmap.ts';
import { lineChartSvg } from './plot-lines.ts';
import { byKind, type ModuleReport, type SubspaceReport } from './report.ts';

const layerName = (layer: number | null) => (layer === null ? '-' : `layer ${layer}`);

/** Singular values of ΔW, one panel per module kind, one line per layer (log scale). */
export function spectraFigure(reports: ModuleReport[], title: string): string {
  const panels = [...byKind(reports)].map(([kind, list]) => ({
    title: `ΔW ${kind} (r=${list[0].r})`,
    series: list.map((m) => ({ name: layerName(m.layer), values: m.spectrum.singularValues })),
  }));
  return lineChartSvg({
    title,
    panels,
    xAxis: 'index i',
    yAxis: 'σᵢ(ΔW)',
    logY: true,
    columns: Math.min(2, panels.length),
  });
}

/**
 * LoRA paper Table 7 per layer: ‖UᵀWV‖_F with U, V the top-r directions of ΔW, of W, or random,
 * next to ‖ΔW‖_F. Needs reports made with a base model.
 */
export function amplificationFigure(reports: ModuleReport[], title: string): string {
  const panels = [...byKind(reports.filter((m) => m.amplification))].map(([kind, list]) => ({
    title: `${kind}, k = r = ${list[0].r} directions`,
    xLabels: list.map((m) => String(m.layer ?? '-')),
    series: [
      { name: 'ΔW dirs', values: list.map((m) => m.amplification!.projectedOnDelta) },
      { name: 'W top dirs', values: list.map((m) => m.amplification!.projectedOnWeight) },
      { name: 'random dirs', values: list.map((m) => m.amplification!.projectedOnRandom) },
      { name: '‖ΔW‖_F', values: list.map((m) => m.amplification!.deltaNorm), dashed: true },
    ],
  }));
  return lineChartSvg({
    title,
    panels,
    xAxis: 'layer',
    yAxis: '‖UᵀWV‖_F',
    logY: true,
    columns: Math.min(2, panels.length),
  });
}

/**
 * φ(A₁, A₂, i, j) per module: one row of panels per module kind, one panel per layer; names say which adapter is
 * which (with their r).
 */
export function subspaceFigure(
  reports: SubspaceReport[],
  title: string,
  names: [string, string],
  maxI = Infinity,
  maxJ = Infinity,
): string {
  const groups = [...byKind(reports)];
  // maxI, maxJ zoom in on the top directions, as the paper's Figures 3 and 4 do next to the full grid.
  const panels = groups.flatMap(([kind, list]) =>
    list.map((m) => ({
      title: `${kind} ${layerName(m.layer)}`,
      values: m.phi.slice(0, maxI).map((row) => row.slice(0, maxJ)),
    })),
  );
  const [rows, cols] = [panels[0].values.length, panels[0].values[0].length];
  return heatmapSvg({
    title,
    panels,
    columns: Math.max(...groups.map(([, list]) => list.length)),
    rowAxis: `i: top-i of ${names[0]}`,
    colAxis: `j: top-j of ${names[1]}`,
    panelWidth: cols > 3 * rows ? 240 : 160,
  });
}
