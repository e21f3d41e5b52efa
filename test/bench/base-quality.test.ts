// The base-quality benchmark on its smallest settings, so it does not rot: float32 and nf4, one seed,
// a few steps on a small split. Nothing is written to bench/results or bench/RESULTS.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runBaseQualityBench } from '../../bench/base-quality.ts';

test('quality bench: float32 and nf4 give one run each, a summary per base and the goal judged', {
  timeout: 60_000,
}, async () => {
  const r = await runBaseQualityBench({
    quick: true,
    write: false,
    seeds: [7],
    steps: 2,
    trainSize: 64,
    evalSize: 8,
    bases: ['float32', 'nf4'],
    log: () => {},
  });
  assert.deepEqual(
    r.runs.map((run) => [run.base, run.seed]),
    [
      ['float32', 7],
      ['nf4', 7],
    ],
  );
  assert.deepEqual(
    r.bases.map((b) => b.format),
    ['float32 tensors', 'nf4/64'],
  );
  for (const run of r.runs) {
    for (const x of [run.exactMatchBefore, run.exactMatchSameBase, run.exactMatchMerged])
      assert.ok(x >= 0 && x <= 100 && Number.isInteger(x / 12.5), `${run.base}: ${x} is not k/8 of 100 %`);
    assert.ok(Number.isFinite(run.evalLoss) && run.evalLoss > 0, `${run.base} eval loss ${run.evalLoss}`);
    assert.ok(Number.isFinite(run.evalLossBefore) && run.evalLossBefore > 0);
  }
  const [float32, nf4] = r.summaries;
  assert.equal(float32.vsFloat32, null);
  assert.equal(nf4.vsFloat32?.sameBase.n, 1);
  // The float32 base is the original weights: served unmerged or merged, the same predictions.
  assert.equal(r.runs[0].exactMatchSameBase, r.runs[0].exactMatchMerged);
  // NF4 is a different base: its eval loss before training is not float32's.
  assert.notEqual(r.runs[1].evalLossBefore, r.runs[0].evalLossBefore);
  assert.ok(r.goal && typeof r.goal.met === 'boolean');
});
