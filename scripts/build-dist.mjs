// Builds what the npm package runs, so a volunteer needs only Node (no tsx, no TypeScript):
//   dist/cli.js               coordinator/cli.ts and every project module it reaches (all commands),
//                             bundled by esbuild to one plain-ESM file for Node 20
//   build/tfjs-gradients.cjs  tfjs-core's gradients (scripts/build-gradients.mjs)
//   build/web/                the browser bundles the coordinator serves (scripts/build-web.mjs)
// Runs in `npm pack` (prepack). npm packages stay external: they are the package's "dependencies",
// installed by npm next to it, and several ship what a bundle cannot hold (tfjs-backend-wasm's .wasm
// files, the native binaries of webgpu, @resvg/resvg-js and bufferutil). A later bundle can reuse the
// same options with fewer externals: `cliBuildOptions({ packages: undefined, ... })`.
//
// dist/ sits one folder below the package root, like node/package-root.ts, the one module that
// builds paths from import.meta.url (PACKAGE_ROOT = '..'): the package's files are found the same from
// dist/cli.js. checkRootRelativePaths() refuses a build where a module deeper down reads import.meta.url.
import { build } from 'esbuild';
import { readFileSync, rmSync } from 'node:fs';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const DIST_DIR = join(ROOT, 'dist');

/** esbuild options of the CLI bundle; `overrides` replace single fields. */
export function cliBuildOptions(overrides = {}) {
  return {
    absWorkingDir: ROOT,
    entryPoints: { cli: 'coordinator/cli.ts' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outdir: DIST_DIR,
    packages: 'external',
    // One file, no chunks: local-workers.ts starts its children by running the file its code is in.
    splitting: false,
    // Readable output: volunteers can read the code they run, and stack traces name real functions.
    minify: false,
    metafile: true,
    logLevel: 'warning',
    ...overrides,
  };
}

/**
 * A bundled module's import.meta.url is the bundle's: a project module that builds a path from it
 * must sit at the depth of dist/ (one folder below the root) for '../x' to name the same file.
 */
export function checkRootRelativePaths(metafile) {
  for (const input of Object.keys(metafile.inputs)) {
    if (input.startsWith('node_modules/')) continue;
    const depth = input.split(/[\\/]/).length - 1;
    if (depth !== 1 && /import\.meta\.url/.test(readFileSync(join(ROOT, input), 'utf8'))) {
      throw new Error(
        `${input} builds a path from import.meta.url but is ${depth} folders deep; ` +
          `from ${join('dist', 'cli.js')} that path would name another file ` +
          '(keep such modules one folder below the root)',
      );
    }
  }
}

export async function buildDist() {
  await import('./build-gradients.mjs');
  await import('./build-web.mjs');
  rmSync(DIST_DIR, { recursive: true, force: true });
  const result = await build(cliBuildOptions());
  checkRootRelativePaths(result.metafile);
  const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  console.log(
    `dist${sep}cli.js: ${Object.keys(result.metafile.inputs).length} modules, ${(bytes / 1e6).toFixed(2)} MB`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await buildDist();
