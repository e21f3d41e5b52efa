#!/usr/bin/env node
// One command, two ways in. In a clone of the repo (TypeScript source next to this file, tsx among
// the devDependencies) it runs coordinator/cli.ts through tsx's loader, so an edit needs no build.
// In the npm package (no source, no tsx) it runs dist/cli.js, the plain JavaScript that `npm pack`
// builds (scripts/build-dist.mjs).
import { existsSync } from 'node:fs';

const source = new URL('../coordinator/cli.ts', import.meta.url);
const built = new URL('../dist/cli.js', import.meta.url);

async function tsxApi() {
  try {
    return await import('tsx/esm/api');
  } catch {
    return undefined; // a checkout installed without devDependencies
  }
}

const tsx = existsSync(source) ? await tsxApi() : undefined;
if (tsx) {
  tsx.register();
  await import(source.href);
} else if (existsSync(built)) {
  await import(built.href);
} else {
  console.error(
    'loramesh: neither tsx (to run coordinator/cli.ts) nor dist/cli.js is here: ' +
      'run `npm install`, or build with `node scripts/build-dist.mjs`',
  );
  process.exit(1);
}
