/**
 * Where the package's own files are, for every module that needs one (the browser bundles, the demo
 * model, tfjs's gradients, the CLI entry). The only project module that reads import.meta.url for a
 * path: it sits one folder below the root, like dist/cli.js it is bundled into (scripts/build-dist.mjs
 * checks that), so the modules that use it may live at any depth.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const thisFile = fileURLToPath(import.meta.url);

/** The folder holding package.json. */
export const PACKAGE_ROOT = join(dirname(thisFile), '..');

/** This code runs from the TypeScript source (through tsx), not from the bundle in dist/. */
export const FROM_SOURCE = thisFile.endsWith('.ts');

/**
 * How a child process starts the CLI the way this process runs: the TypeScript source through tsx's
 * loader, or the single-file bundle (dist/cli.js) this module was built into.
 */
export function cliCommand(): string[] {
  return FROM_SOURCE
    ? ['--import', import.meta.resolve('tsx'), join(PACKAGE_ROOT, 'coordinator', 'cli.ts')]
    : [thisFile];
}

/**
 * How a worker_thread runs the CLI the way this process does (Node 20 threads take no --import loader): the
 * bundle's file, or a short script that registers tsx's loader in the thread and imports the TypeScript CLI.
 */
export function cliThreadEntry(): { entry: string; eval: boolean } {
  if (!FROM_SOURCE) return { entry: thisFile, eval: false };
  const api = import.meta.resolve('tsx/esm/api');
  const cli = pathToFileURL(join(PACKAGE_ROOT, 'coordinator', 'cli.ts')).href;
  return {
    entry: `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(cli)}); });`,
    eval: true,
  };
}

/** A path under the package root. */
export const packagePath = (...parts: string[]): string => join(PACKAGE_ROOT, ...parts);
