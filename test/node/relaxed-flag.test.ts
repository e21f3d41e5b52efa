// Without relaxed SIMD (V8's flag left off: LORAMESH_RELAXED_SIMD=0) a Node process offers simd128 only,
// which is what a worker's hello reports and the dashboard shows; with the flag (the default) it offers
// both. Each case is a fresh process: V8 flags are per process.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const probe = `
import { initBackend } from './node/backend.ts';
import { supportedArithmetic } from './kernels/arithmetic.ts';
await initBackend('wasm', () => {});
console.log(JSON.stringify(supportedArithmetic()));
`;

function offered(env: Record<string, string>): string[] {
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', probe], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  assert.equal(out.status, 0, out.stderr.slice(-2000));
  return JSON.parse(out.stdout.trim().split('\n').pop()!);
}

test('LORAMESH_RELAXED_SIMD=0: the process offers simd128 only; by default it offers both variants', () => {
  assert.deepEqual(offered({ LORAMESH_RELAXED_SIMD: '0' }), ['simd128']);
  assert.deepEqual(offered({}), ['simd128', 'relaxed-fma']);
});
