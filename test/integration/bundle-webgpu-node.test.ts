// The offline bundle's GPU bench (loramesh-bench-gpu, bench/gpu-bench.ts) run from an empty folder with
// stub `node`/`npm` first on PATH: its Dawn comes from the bundle, it finds no GPU here, runs its row
// on SwiftShader and says so — loudly in its log and on the row in JSON and Markdown. Needs what
// the Node WebGPU suite needs (libvulkan1 and Chromium's SwiftShader; scripts/run-tests.mjs skips
// this file without them, or fails with LORAMESH_REQUIRE_BROWSER=1).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { type BuiltBundle, buildBundleDir } from '../helpers/bundle.ts';

let bundle: BuiltBundle;
before(() => {
  bundle = buildBundleDir();
});
after(() => rmSync(join(bundle.dir, '..', '..'), { recursive: true, force: true }));

test('loramesh-bench-gpu runs the demo row on SwiftShader here and reports a software device', () => {
  const out = join(bundle.cwd, 'results');
  const run = spawnSync(join(bundle.dir, 'loramesh-bench-gpu'), [out, '--torch-device', 'none'], {
    cwd: bundle.cwd,
    env: bundle.env,
    encoding: 'utf8',
    timeout: 300_000,
  });
  const log = `${run.stdout}\n${run.stderr}`;
  assert.equal(run.status, 0, log);
  assert.match(log, /SOFTWARE DEVICE: WebGPU runs on .*swiftshader/i);
  assert.match(log, /Vulkan loader: \//);
  const result = JSON.parse(readFileSync(join(out, 'compute.device.json'), 'utf8'));
  assert.equal(result.rows.length, 1);
  const [row] = result.rows;
  assert.equal(row.model, 'demo');
  assert.equal(row.backend, 'webgpu');
  assert.equal(row.software, true);
  assert.match(row.adapter, /swiftshader/i);
  // a real step: the demo batch's summed token loss is finite and positive, the gradient non-zero
  assert.ok(Number.isFinite(row.agreement.loss) && row.agreement.loss > 0, `loss ${row.agreement.loss}`);
  assert.ok(row.agreement.gradNorm > 0, `‖grad‖ ${row.agreement.gradNorm}`);
  assert.match(readFileSync(join(out, 'compute.device.md'), 'utf8'), /\| demo .*\(software device\)/);
  assert.equal(existsSync(bundle.stubCalls), false, 'something called node/npm from PATH');
});
