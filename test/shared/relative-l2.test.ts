// The relative L2 distance spot checks and backend comparisons use.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { relativeL2Distance } from '../../shared/train/relative-l2.ts';

test('one vector: ‖theirs − trusted‖ / ‖trusted‖; several pairs count as one concatenated vector', () => {
  assert.equal(relativeL2Distance([[new Float32Array([3, 4]), new Float32Array([3, 4])]]), 0);
  assert.equal(
    relativeL2Distance([
      [
        [3, 4],
        [3, 5],
      ],
    ]),
    0.2,
  );
  // (3, 4) ‖ (0, 0) against (3, 5) ‖ (0, 5): ‖(0, 1, 0, 5)‖ / ‖(3, 4, 0, 0)‖ = √26 / 5
  assert.equal(
    relativeL2Distance([
      [
        [3, 4],
        [3, 5],
      ],
      [
        [0, 0],
        [0, 5],
      ],
    ]),
    Math.sqrt(26) / 5,
  );
});

test('a missing or resized tensor is Infinity; an all-zero trusted vector stays finite', () => {
  assert.equal(relativeL2Distance([[[1, 2], undefined]]), Infinity);
  assert.equal(
    relativeL2Distance([
      [
        [1, 2],
        [1, 2],
      ],
      [
        [1, 2],
        [1, 2, 3],
      ],
    ]),
    Infinity,
  );
  assert.equal(
    relativeL2Distance([
      [
        [0, 0],
        [0, 0],
      ],
    ]),
    0,
  );
  assert.equal(
    relativeL2Distance([
      [
        [0, 0],
        [0, 1e-12],
      ],
    ]),
    1,
  );
  assert.equal(relativeL2Distance([]), 0);
});
