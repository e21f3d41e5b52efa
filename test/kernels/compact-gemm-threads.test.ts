// The compact GEMM split over threads (kernels/gemm-threads.ts): with the threaded wasm build at 2 and
// 3 threads, every base format's products give the same bytes as with 1 thread, in both arithmetic
// variants (each process hashes its outputs: test/helpers/compact-gemm-probe.ts). 1 thread equals the
// JavaScript kernel bit for bit (compact-kernels.test.ts), so N threads do too.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const probe = new URL('../helpers/compact-gemm-probe.ts', import.meta.url).pathname;

function run(threads: number, variant: string, broken = false): { threads: number; split: number; sha256: string } {
  const out = spawnSync(process.execPath, ['--import', 'tsx', probe, variant], {
    encoding: 'utf8',
    env: { ...process.env, LORAMESH_WASM_THREADS: String(threads), BREAK_HELPERS: broken ? '1' : '0' },
  });
  assert.equal(out.status, 0, out.stderr.slice(-2000));
  return JSON.parse(out.stdout.trim().split('\n').pop()!);
}

for (const variant of ['simd128', 'relaxed-fma'])
  test(`compact products (${variant}): 2 and 3 threads give the bytes of 1 thread`, () => {
    const one = run(1, variant);
    assert.equal(one.threads, 1);
    assert.equal(one.split, 0);
    for (const threads of [2, 3]) {
      const many = run(threads, variant);
      assert.equal(many.threads, threads);
      assert.equal(many.split, 2 * 2 * 7, 'every product was split over the helpers');
      assert.equal(many.sha256, one.sha256, `${threads} threads`);
    }
  });

test('a helper thread that fails (here: cannot link its module) changes nothing: the caller computes its share', () => {
  const one = run(1, 'simd128');
  const broken = run(2, 'simd128', true);
  assert.equal(broken.sha256, one.sha256);
  assert.equal(broken.split, 1, 'the first product was split, found the failure, and later ones stayed on one thread');
});
