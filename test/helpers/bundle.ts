/**
 * The offline bundle (scripts/bundle.mjs) as its tests use it: built once per test file as a folder
 * (no archive: xz takes a minute), and run from an empty folder with a PATH whose `node` and `npm`
 * are stubs that record the call and exit 1, so nothing outside the bundle can stand in for it.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface BuiltBundle {
  /** the bundle's folder */
  dir: string;
  /** an empty folder to run it from */
  cwd: string;
  /** the environment: stub node/npm first on PATH, HOME and the cache inside the temp folder */
  env: NodeJS.ProcessEnv;
  /** written by a stub when anything calls `node` or `npm` from PATH */
  stubCalls: string;
}

export function buildBundleDir(): BuiltBundle {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-bundle-'));
  const out = spawnSync(
    process.execPath,
    [join(ROOT, 'scripts', 'bundle.mjs'), '--dir-only', '--out', join(root, 'out')],
    {
      encoding: 'utf8',
    },
  );
  if (out.status !== 0) throw new Error(`scripts/bundle.mjs --dir-only failed:\n${out.stdout}\n${out.stderr}`);
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const dir = join(root, 'out', `loramesh-${version}-${process.platform}-${process.arch}`);
  if (!existsSync(join(dir, 'loramesh-worker'))) throw new Error(`no loramesh-worker in ${dir}`);
  const stubs = join(root, 'stub-bin');
  const stubCalls = join(root, 'stub-calls.log');
  mkdirSync(stubs);
  for (const name of ['node', 'npm', 'npx', 'tsx']) {
    writeFileSync(join(stubs, name), `#!/bin/sh\necho "${name} $*" >> '${stubCalls}'\nexit 1\n`);
    chmodSync(join(stubs, name), 0o755);
  }
  const cwd = join(root, 'empty');
  mkdirSync(cwd);
  const env: NodeJS.ProcessEnv = {
    PATH: `${stubs}:/usr/bin:/bin`,
    HOME: join(root, 'home'),
    LORAMESH_CACHE: join(root, 'cache'),
    TMPDIR: tmpdir(),
  };
  return { dir, cwd, env, stubCalls };
}
