// The one place figures become files: name.svg as given and name.png rendered by resvg.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFigure } from '../../../coordinator/io/analysis-io.ts';
import { lineChartSvg } from '../../../shared/analysis/plot-lines.ts';

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

test('writeFigure writes the SVG unchanged and a PNG at 2× its size', () => {
  const svg = lineChartSvg({
    title: 'speed-up',
    xAxis: 'workers',
    yAxis: 'speed-up',
    xScale: 'log2',
    logY: true,
    panels: [{ title: '', series: [{ name: 'ideal', x: [1, 2, 4], values: [1, 2, 4], dashed: true }] }],
  });
  const dir = mkdtempSync(join(tmpdir(), 'loramesh-figure-'));
  const [svgPath, pngPath] = writeFigure(dir, 'c', svg);
  assert.equal(readFileSync(svgPath, 'utf8'), svg);
  const png = readFileSync(pngPath);
  assert.deepEqual([...png.subarray(0, 8)], PNG_SIGNATURE);
  const width = Number(/width="(\d+)"/.exec(svg)![1]);
  assert.equal(png.readUInt32BE(16), 2 * width, 'IHDR width');
});
