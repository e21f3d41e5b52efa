// Robust aggregation rules on hand-made micro-batch gradients: with honest inputs they agree with
// the mean; one huge outlier moves the mean far but these rules barely.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { aggregateInOrder } from '../../../shared/train/aggregate.ts';
import { robustAggregate } from '../../../shared/train/robust.ts';

const r = (g: number[], tokens = 1) => ({
  lossSum: 0,
  tokenCount: tokens,
  grads: new Map([['w', Float32Array.from(g.map((x) => x * tokens))]]),
});
const honest = [r([1, 2]), r([1.1, 2.1]), r([0.9, 1.9]), r([1.05, 2]), r([0.95, 2])];
const liar = r([-10, -20]);

// norm-clip bounds a micro-batch's influence to clip × median‖m‖ / n (here ≈ 0.75) instead of removing it.
const bound = { median: 0.5, 'trimmed-mean': 0.5, 'norm-clip': 1.0, 'centered-clip': 0.5 } as const;
for (const how of ['median', 'trimmed-mean', 'norm-clip', 'centered-clip'] as const) {
  test(`${how}: ≈ the mean on honest inputs, and one ×−10 liar of 6 moves it by < ${bound[how]}`, () => {
    const clean = robustAggregate(honest, how).get('w')!;
    assert.ok(Math.abs(clean[0] - 1) < 0.06 && Math.abs(clean[1] - 2) < 0.06, `${how}: ${clean}`);
    const attacked = robustAggregate([...honest, liar], how).get('w')!;
    assert.ok(
      Math.abs(attacked[0] - 1) < bound[how] && Math.abs(attacked[1] - 2) < 2 * bound[how],
      `${how} under attack: ${attacked}`,
    );
  });
}

test(
  "the default 'sum' rule (the exact mean, aggregateInOrder) under the same attack is dragged far away " +
    '(why the rules exist)',
  () => {
    const mean = aggregateInOrder([...honest, liar]).grads.get('w')!;
    assert.ok(mean[0] < -0.5, `mean ${mean}`);
  },
);

test('per-micro-batch token counts are divided out before comparing', () => {
  const agg = robustAggregate([r([1, 2], 3), r([1, 2], 7), r([1, 2], 1)], 'median').get('w')!;
  assert.ok(Math.abs(agg[0] - 1) < 1e-6 && Math.abs(agg[1] - 2) < 1e-6);
});
