// The benchmark code on its smallest settings, so it does not rot: a tiny GPT-2 payload with 1 and
// 4 simulated workers, a short soak, the data-parallel runs of the demo model with 1 measured
// step window, and the root-step bench with 2 repeats. Only the shape of the results is asserted
// (counts, fields, finite numbers), never timings; nothing is written to bench/results or bench/RESULTS.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScaleBench, type ScaleResult } from '../../bench/scale.ts';
import { runParallelBench } from '../../bench/parallel.ts';
import { runRootStepBench } from '../../bench/root-step.ts';
import { GPT2_TINY } from '../../bench/lib/sim-mesh.ts';
import type { Figure, Stats } from '../../bench/lib/results.ts';

function assertStats(s: Stats, n: number, what: string): void {
  assert.equal(s.n, n, `${what}: n`);
  for (const k of ['min', 'median', 'max'] as const) assert.ok(Number.isFinite(s[k]), `${what}.${k} = ${s[k]}`);
  assert.ok(s.min <= s.median && s.median <= s.max, `${what}: min ≤ median ≤ max`);
}

function assertFigures(figures: Figure[], count: number): void {
  assert.equal(figures.length, count);
  for (const f of figures) {
    assert.ok(f.label.length > 0 && f.unit.length > 0, JSON.stringify(f));
    assert.ok(f.n > 0);
    assertStats(f, f.n, f.label);
  }
}

let scale: ScaleResult | null = null;

test('scale bench: N ∈ {1, 4} with a tiny payload gives one point per N, aggregation per N and a soak', {
  timeout: 60_000,
}, async () => {
  scale = await runScaleBench({
    quick: true,
    write: false,
    workers: [1, 4],
    warmupSteps: 1,
    steps: 3,
    computeMs: 20,
    model: GPT2_TINY,
    seqLen: 16,
    processes: 2,
    soak: { workers: 2, steps: 12, computeMs: 2, sampleEvery: 3 },
    aggregationRepeats: 2,
    log: () => {},
  });
  // 2 layers × (A 8×32 + B 96×8) float32 values
  assert.equal(scale.payload.adapterParameters, 2048);
  assert.equal(scale.payload.resultBytes, 4 * 2048);
  assert.deepEqual(
    scale.points.map((p) => p.workers),
    [1, 4],
  );
  for (const p of scale.points) {
    assertStats(p.stepMs, 3, `N=${p.workers} stepMs`);
    assertStats(p.overheadMs, 3, `N=${p.workers} overheadMs`);
    assert.ok(p.stepMs.min >= 20, 'a step cannot be shorter than the simulated compute');
    for (const v of [p.coordinatorCpuMsPerStep, p.coordinatorCores, p.coordinatorRssMB.peak, p.workersCpuMsPerStep])
      assert.ok(Number.isFinite(v) && v > 0, String(v));
    assert.deepEqual(p.problems, []);
  }
  assert.deepEqual(
    scale.aggregation.map((a) => a.workers),
    [1, 4],
  );
  for (const a of scale.aggregation) {
    assert.ok(a.frameBytes > a.resultBytes, 'a result frame holds the gradient plus framing');
    assertStats(a.totalGBps, 2, 'aggregation GB/s');
    assert.ok(a.totalGBps.min > 0);
  }
  assert.ok(scale.soak);
  assert.deepEqual(
    scale.soak.samples.map((s) => s.step),
    [3, 6, 9, 12],
  );
  assert.ok(Number.isFinite(scale.soak.slopeMBPer1000Steps));
  assert.ok(Number.isFinite(scale.soak.heapSlopeMBPer1000Steps));
  assertStats(scale.soak.stepMs, 11, 'soak stepMs');
  assertFigures(scale.figures, 2 + 2 + 1);
  // quick settings: none of the targets is judged
  assert.deepEqual(scale.targets, {
    overheadAt64Percent: null,
    aggregationGBpsPerCore: scale.aggregation[1].totalGBps.median,
    soakSlopeMBPer1000Steps: null,
    soakHeapSlopeMBPer1000Steps: null,
  });
});

test('parallel bench: in-process and 2 local workers on the demo model, projected with the scale curve', {
  timeout: 90_000,
}, async () => {
  const r = await runParallelBench({
    quick: true,
    write: false,
    steps: 5,
    skipSteps: 2,
    configs: ['in-process', '2-workers', '1-worker-2-threads'],
    scale,
    log: () => {},
  });
  assert.deepEqual(
    r.rows.map((row) => row.name),
    ['in-process', '2-workers', '1-worker-2-threads'],
  );
  for (const row of r.rows.slice(0, 2)) {
    assert.equal(row.unavailable, null);
    assertStats(row.sequencesPerSecond, 3, `${row.name} seq/s`);
    assertStats(row.tokensPerSecond, 3, `${row.name} tokens/s`);
    assert.ok(row.sequencesPerSecond.min > 0);
  }
  const threads = r.rows[2];
  // Either measured or unavailable with a reason; never a silent single-threaded copy.
  if (threads.unavailable !== null) assert.match(threads.unavailable, /LORAMESH_WASM_THREADS/);
  else assertStats(threads.sequencesPerSecond, 3, 'threads seq/s');
  assert.ok(Number.isFinite(r.ratios.vsInProcess!) && r.ratios.vsInProcess! > 0);
  assert.ok(r.projection);
  assert.deepEqual(
    r.projection.points.map((p) => p.workers),
    [1, 4],
  );
  assert.equal(r.projection.points[0].speedup, 1);
  assert.ok(r.projection.points.every((p) => Number.isFinite(p.speedup) && p.speedup > 0));
  assertFigures(r.figures, r.rows.filter((row) => !row.unavailable).length);
});

test("root-step bench: each of the root's per-step operations at Qwen2.5-0.5B shapes, with and without the kernels", () => {
  const r = runRootStepBench('qwen2.5-0.5b', 2);
  assert.equal(r.parameters, 8_798_208); // 24 layers × r=16 × the 7 projections' (in + out)
  assert.equal(r.operations.length, 5);
  for (const o of r.operations) {
    assertStats(o.kernel, 2, `${o.name} (kernels)`);
    assertStats(o.scalar, 2, `${o.name} (scalar)`);
  }
});
