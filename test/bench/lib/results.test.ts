// The benchmarks' shared helpers: statistics, RESULTS.md sections, the machine. (Their charts are
// shared/analysis/plot-lines.ts's: test/shared/analysis/plot-lines.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { figure, machine, replaceSection, stats } from '../../../bench/lib/results.ts';

test('stats: min, median (mean of the middle two for even n), max', () => {
  assert.deepEqual(stats([3, 1, 2]), { min: 1, median: 2, max: 3, n: 3 });
  assert.deepEqual(stats([4, 1, 3, 2]), { min: 1, median: 2.5, max: 4, n: 4 });
  assert.equal(stats([]).n, 0);
  assert.deepEqual(figure('x', 'ms', [5]), { label: 'x', unit: 'ms', min: 5, median: 5, max: 5, n: 1 });
});

test('replaceSection replaces only its marked body and appends a missing section', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'loramesh-results-')), 'RESULTS.md');
  const before =
    '# Benchmark results\n\n## A\n\n<!-- a-table:start -->\nold a\n<!-- a-table:end -->\n\n' +
    '## B\n\n<!-- b-table:start -->\nold b $& $1\n<!-- b-table:end -->\n';
  writeFileSync(path, before);
  replaceSection('a-table', 'A', 'new a with $& and $1', path);
  assert.equal(
    readFileSync(path, 'utf8'),
    before.replace('old a', () => 'new a with $& and $1'),
  );
  replaceSection('c-table', 'C (`npm run c`)', 'new c', path);
  assert.ok(
    readFileSync(path, 'utf8').endsWith(
      'old b $& $1\n<!-- b-table:end -->\n\n' +
        '## C (`npm run c`)\n\n<!-- c-table:start -->\nnew c\n<!-- c-table:end -->\n',
    ),
  );
});

test('machine description names cores, CPU and Node', () => {
  const m = machine();
  assert.ok(m.cores >= 1 && m.cpu.length > 0 && m.node.startsWith('v') && Number.isFinite(m.loadAverage));
});
