// The committed WebAssembly kernels (kernels/compact-gemm.wasm.ts, shared/train/reduce.wasm.ts) are what their C source builds to:
// scripts/build-kernels.mjs --check rebuilds them with clang-16 and compares byte for byte. Without
// clang-16 the test is skipped, except under LORAMESH_REQUIRE_CLANG=1 (.ci/run), where it fails.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';

const clang = existsSync('/usr/bin/clang-16') && existsSync('/usr/bin/wasm-ld-16');
const required = process.env.LORAMESH_REQUIRE_CLANG === '1';

test('the committed WebAssembly kernels (kernels/compact-gemm.wasm.ts, shared/train/reduce.wasm.ts) are the build of kernels/c (clang-16)', {
  skip: !clang && !required && 'clang-16 and lld-16 are not installed (apt-get install clang-16 lld-16)',
}, () => {
  assert.ok(clang, 'LORAMESH_REQUIRE_CLANG=1 but /usr/bin/clang-16 or /usr/bin/wasm-ld-16 is missing');
  const run = spawnSync(process.execPath, ['scripts/build-kernels.mjs', '--check'], { encoding: 'utf8' });
  assert.equal(run.status, 0, `${run.stdout}${run.stderr}`);
  assert.match(run.stdout, /is current \(\d+ \+ \d+ bytes\); .*reduce.wasm.ts is current \(\d+ bytes\)/);
});
