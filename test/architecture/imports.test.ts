// The import rules of docs/ARCHITECTURE.md, checked on the source: every relative import of every
// module in the product folders points to a folder its own may import, and inside coordinator/ only
// down the layers. A new import that breaks a rule fails here, naming the file and the import.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sourceFiles(posix.join(dir, e.name))
      : /\.ts$/.test(e.name) && !e.name.endsWith('.d.ts')
        ? [posix.join(dir, e.name)]
        : [],
  );
}

/** Root-relative paths of the project modules `file` imports (static, dynamic and type imports). */
function importsOf(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const specs = [...text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'(\.\.?\/[^']+)'/g)].map((m) => m[1]);
  return specs.map((s) => posix.normalize(posix.join(posix.dirname(file), s)));
}

/** The folder (area) a module belongs to, most specific first. */
const AREAS = [
  'coordinator/cli.ts',
  'coordinator/cli',
  'coordinator/commands',
  'coordinator/pool',
  'coordinator/run',
  'coordinator/relay',
  'coordinator/net',
  'coordinator/io',
  'coordinator/engine',
  'worker/browser',
  'worker',
  'node',
  'kernels',
  'shared',
] as const;
type Area = (typeof AREAS)[number];
const areaOf = (path: string): Area | 'other' => AREAS.find((a) => path === a || path.startsWith(`${a}/`)) ?? 'other';

// Inside coordinator/ a layer imports its own layer or those below it (this list runs top to bottom).
const COORDINATOR_LAYERS: Area[] = AREAS.slice(0, 9) as Area[];
const below = (a: Area) => COORDINATOR_LAYERS.slice(COORDINATOR_LAYERS.indexOf(a));

const MAY_IMPORT: Record<Area, readonly Area[]> = Object.fromEntries([
  ...COORDINATOR_LAYERS.map((a) => [a, [...below(a), 'node', 'kernels', 'shared']]),
  // the one CLI also runs the `worker` command
  ['coordinator/cli.ts', [...below('coordinator/cli.ts'), 'worker', 'node', 'kernels', 'shared']],
  ['worker', ['worker', 'node', 'kernels', 'shared']],
  ['worker/browser', ['worker/browser', 'kernels', 'shared']],
  ['node', ['node', 'kernels', 'shared']],
  ['kernels', ['kernels', 'shared']],
  ['shared', ['shared']],
]) as Record<Area, readonly Area[]>;

test('product modules import only what docs/ARCHITECTURE.md allows (coordinator/ only down its layers)', () => {
  const files = ['coordinator', 'worker', 'node', 'kernels', 'shared'].flatMap(sourceFiles);
  assert.ok(files.length > 100, `found only ${files.length} modules`);
  const broken: string[] = [];
  for (const file of files) {
    const area = areaOf(file) as Area;
    for (const target of importsOf(file)) {
      const to = areaOf(target);
      if (to === 'other' || !MAY_IMPORT[area].includes(to)) broken.push(`${file} imports ${target} (${area} → ${to})`);
    }
  }
  assert.deepEqual(broken, []);
});

test('only node/package-root.ts builds paths from import.meta.url (dist/cli.js finds files through it)', () => {
  const files = ['coordinator', 'worker', 'kernels', 'shared'].flatMap(sourceFiles);
  const readers = files.filter((f) => /import\.meta\.url/.test(readFileSync(join(ROOT, f), 'utf8')));
  assert.deepEqual(readers, []);
});
