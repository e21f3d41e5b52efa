// The compute bench on its smallest setting, so it does not rot: one row (demo model, wasm, 1
// thread, 2 steps) next to PyTorch when python3-torch is installed. Asserts the shape of the
// result and that both sides computed the same step (loss and gradient norm within 1e-4), never
// a timing; nothing is written to bench/results or bench/RESULTS.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runComputeBench } from '../../bench/compute.ts';

test('compute bench: one demo row on wasm, alternated with PyTorch, agrees with it', { timeout: 120_000 }, async () => {
  const r = await runComputeBench({
    quick: true,
    write: false,
    log: () => {},
    rows: [
      { model: 'demo', backend: 'wasm', threads: 1, warmup: 1, repeats: 2, batch: 1, time: 8, torchDevice: 'cpu' },
    ],
  });
  assert.deepEqual(r.unavailable, []);
  assert.equal(r.rows.length, 1);
  const row = r.rows[0];
  assert.equal(row.backend, 'wasm');
  assert.equal(row.threads, 1);
  assert.equal(row.ms.n, 2);
  assert.ok(row.ms.min > 0 && row.ms.min <= row.ms.median && row.ms.median <= row.ms.max);
  assert.ok(row.gflopPerStep > 2 && row.gflopPerStep < 3, `demo step ≈ 2.5 GFLOP, got ${row.gflopPerStep}`);
  assert.ok(Number.isFinite(row.agreement.loss) && row.agreement.loss > 0);
  if (row.torch) {
    assert.equal(row.ratio!.n, 2);
    assert.ok(row.agreement.lossRelDiff! < 1e-4, `loss differs from PyTorch by ${row.agreement.lossRelDiff}`);
    assert.ok(
      row.agreement.gradNormRelDiff! < 1e-4,
      `gradient norm differs from PyTorch by ${row.agreement.gradNormRelDiff}`,
    );
  }
  assert.equal(r.figures.length, row.torch ? 2 : 1);
});
