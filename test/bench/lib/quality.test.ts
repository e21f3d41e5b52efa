// The base-quality benchmark's arithmetic: mean and sample standard deviation over seeds, differences
// to float32 paired by seed (a seed float32 did not run is left out), and the NF4 goal's verdict.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { qualityGoal, type QualityRun, spread, summarise } from '../../../bench/lib/quality.ts';

const run = (base: string, seed: number, sameBase: number, merged: number, evalLoss: number): QualityRun => ({
  base,
  seed,
  exactMatchBefore: 0,
  exactMatchSameBase: sameBase,
  exactMatchMerged: merged,
  evalLossBefore: 13,
  evalLoss,
  trainLoss: evalLoss,
  seconds: 1,
});

test('spread: mean, sample standard deviation (n − 1), min, max; one seed has sd 0', () => {
  const s = spread([60, 62, 64]);
  assert.equal(s.mean, 62);
  assert.equal(s.sd, 2);
  assert.deepEqual([s.min, s.max, s.n], [60, 64, 3]);
  assert.deepEqual(spread([5]), { mean: 5, sd: 0, min: 5, max: 5, n: 1 });
  assert.ok(Number.isNaN(spread([]).mean));
});

test('summarise pairs each base with float32 of the same seed and skips seeds float32 lacks', () => {
  const runs = [
    run('float32', 7, 80, 80, 0.2),
    run('nf4', 7, 77, 75, 0.25),
    run('float32', 8, 90, 90, 0.1),
    run('nf4', 8, 91, 86, 0.12),
    run('nf4', 9, 10, 10, 1), // no float32 for seed 9: in nf4's own spread, not in its difference
  ];
  const [float32, nf4] = summarise(runs);
  assert.equal(float32.base, 'float32');
  assert.equal(float32.vsFloat32, null);
  assert.equal(nf4.exactMatchSameBase.n, 3);
  assert.ok(nf4.vsFloat32);
  assert.deepEqual(nf4.vsFloat32.sameBase, spread([-3, 1]));
  assert.deepEqual(nf4.vsFloat32.merged, spread([-5, -4]));
  assert.ok(Math.abs(nf4.vsFloat32.evalLoss.mean - 0.035) < 1e-12);
  assert.deepEqual(qualityGoal([float32, nf4]), { sameBase: -1, merged: -4.5, met: true });
});

test('the goal is missed more than 2 points below float32, and not judged without nf4 or float32', () => {
  const missed = summarise([run('float32', 7, 80, 80, 0.2), run('nf4', 7, 77.5, 77, 0.3)]);
  assert.deepEqual(qualityGoal(missed), { sameBase: -2.5, merged: -3, met: false });
  const atTheEdge = summarise([run('float32', 7, 80, 80, 0.2), run('nf4', 7, 78, 78, 0.3)]);
  assert.equal(qualityGoal(atTheEdge)?.met, true);
  assert.equal(qualityGoal(summarise([run('nf4', 7, 78, 78, 0.3)])), null);
  assert.equal(qualityGoal(summarise([run('float32', 7, 80, 80, 0.2)])), null);
});
