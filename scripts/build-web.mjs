// Bundles the browser code (join page + browser worker, dashboard) with esbuild into build/web/.
// Runs at `npm install` in the repo (prepare), in `npm pack` (scripts/build-dist.mjs) and whenever the
// coordinator finds the bundle missing.
// No CDN: tfjs, its backends and the wasm binaries are served by the coordinator itself.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'build', 'web');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: {
    join: join(root, 'worker/browser/join.ts'),
    dashboard: join(root, 'coordinator/net/dashboard/dashboard.ts'),
    'pool-dashboard': join(root, 'coordinator/pool/dashboard/pool-dashboard.ts'),
  },
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  outdir: out,
  sourcemap: true,
  minify: process.env.LORAMESH_WEB_MINIFY !== '0',
  logLevel: 'warning',
  // tfjs backends reference Node modules behind runtime checks; the browser never loads them.
  external: ['fs', 'path', 'os', 'crypto', 'worker_threads', 'perf_hooks'],
});
copyFileSync(join(root, 'worker/browser/join.html'), join(out, 'join.html'));
copyFileSync(join(root, 'coordinator/net/dashboard/index.html'), join(out, 'index.html'));
copyFileSync(join(root, 'coordinator/pool/dashboard/pool.html'), join(out, 'pool.html'));
