/**
 * Pieces shared by the hand-written SVG figures: escaping, a colour scale, tick choice and number
 * labels. The figures are plain SVG text so they render the same in a browser, in a Markdown
 * viewer and through resvg to PNG; fonts fall back to whatever sans-serif the renderer has.
 */

const FONT = 'DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif';

/** Distinguishable line colours (Tableau 10 order). */
export const PALETTE = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf',
];

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function text(x: number, y: number, content: string, attrs = ''): string {
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${escapeXml(content)}</text>`;
}

/** Viridis-like stops, dark (low) to yellow (high): perceptually ordered and readable in grey. */
const STOPS: [number, number, number][] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

/** The colour for t ∈ [0, 1] (clamped), and whether black text reads on it. */
export function colorAt(t: number): { fill: string; darkText: boolean } {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const [r, g, b] = STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
  return { fill: `rgb(${r},${g},${b})`, darkText: 0.299 * r + 0.587 * g + 0.114 * b > 140 };
}

/** About `count` tick positions among 1..n, always including 1 and n. */
export function ticks(n: number, count = 6): number[] {
  if (n <= count) return Array.from({ length: n }, (_, i) => i + 1);
  const step = Math.ceil(n / count);
  const out = [1];
  for (let v = step; v < n; v += step) if (v - out[out.length - 1] >= step / 2) out.push(v);
  if (n - out[out.length - 1] < step / 2) out.pop();
  out.push(n);
  return out;
}

/** A compact label: 3 significant digits, exponent form for very large or small values. */
export function formatNumber(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

export function svgDocument(width: number, height: number, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${Math.ceil(width)}" height="${Math.ceil(height)}" ` +
      `viewBox="0 0 ${Math.ceil(width)} ${Math.ceil(height)}" font-family="${FONT}">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}
