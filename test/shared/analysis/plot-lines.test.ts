// Line charts: index x (analysis figures) and measured x on linear / log2 / log10 axes (benchmarks).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lineChartSvg, type LineChartOptions, type LineSeries } from '../../../shared/analysis/plot-lines.ts';

const chart = (series: LineSeries[], more: Partial<LineChartOptions> = {}) =>
  lineChartSvg({ title: 'overhead <N>', xAxis: 'workers', yAxis: '%', panels: [{ title: '', series }], ...more });
/** The plotted points' x positions, in order (one panel: the plot spans x = 70…370). */
const circlesX = (svg: string) => [...svg.matchAll(/<circle cx="([\d.]+)"/g)].map((m) => Number(m[1]));
/** The x axis's tick labels, left to right. */
const tickLabels = (svg: string) =>
  [...svg.matchAll(/<text [^>]*font-size="10" text-anchor="middle">([^<]*)<\/text>/g)].map((m) => m[1]);

test('log2 x: powers of 2 as ticks, 4 halfway between 1 and 16; one line per series', () => {
  const svg = chart(
    [
      { name: 'median', x: [1, 4, 16], values: [0.5, 2, 8] },
      { name: 'target', x: [1, 16], values: [3, 3], dashed: true },
    ],
    { xScale: 'log2', logY: true },
  );
  assert.equal(svg.match(/<path /g)?.length, 2);
  assert.ok(svg.includes('overhead &lt;N&gt;'));
  assert.deepEqual(tickLabels(svg), ['1', '2', '4', '8', '16']);
  assert.deepEqual(circlesX(svg), [70, 220, 370, 70, 370]);
  // log y over 0.5…8: five ticks evenly spaced in log, i.e. ×2 apart
  for (const label of ['0.5', '1', '2', '4', '8']) assert.ok(svg.includes(`text-anchor="end">${label}</text>`), label);
});

test('log10 x: 1-2-5 ticks from the last at or below the data to the first at or above it', () => {
  const svg = chart([{ name: 'a', x: [3, 30, 700], values: [1, 2, 3] }], { xScale: 'log10' });
  assert.deepEqual(tickLabels(svg), ['2', '5', '10', '20', '50', '100', '200', '500', '1000']);
  const [first, , last] = circlesX(svg);
  assert.ok(first > 70 && last < 370, `${first}, ${last} lie inside the 2…1000 axis`);
});

test('linear x: round ticks spanning the data; non-finite points and, on log axes, x ≤ 0 are left out', () => {
  const svg = chart([{ name: 'RSS', x: [0, 150, 300, 600], values: [10, 12, NaN, 13] }]);
  assert.deepEqual(tickLabels(svg), ['0', '200', '400', '600']);
  assert.deepEqual(circlesX(svg), [70, 145, 370]);
  const log = chart([{ name: 'a', x: [0, 1, 2, 4], values: [1, 1, 1, 1] }], { xScale: 'log2' });
  assert.deepEqual(circlesX(log), [70, 220, 370], 'x = 0 has no place on a log axis');
});

test('index x (no `x` given): values at 1…n evenly spaced, labelled by xLabels', () => {
  const svg = lineChartSvg({
    title: 't',
    xAxis: 'layer',
    yAxis: 'y',
    panels: [{ title: 'p', xLabels: ['a', 'b', 'c'], series: [{ name: 's', values: [1, 2, 3] }] }],
  });
  assert.deepEqual(tickLabels(svg), ['a', 'b', 'c']);
  assert.deepEqual(circlesX(svg), [70, 220, 370]);
});
