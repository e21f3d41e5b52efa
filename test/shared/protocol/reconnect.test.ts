// The reconnect policy both workers use: 250 ms · 2^failures, capped at 10 s, times a 0.5–1 jitter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { reconnectDelayMs, RECONNECT_BASE_MS, RECONNECT_MAX_MS } from '../../../shared/protocol/reconnect.ts';
import { Rng } from '../../../shared/rng.ts';

const rng = new Rng(7); // seeded: a failure replays

test('doubles from 250 ms per failure in a row and stops at 10 s', () => {
  const top = (failures: number) => reconnectDelayMs(failures, 1); // random → 1: the jitter factor's upper end
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(top), [250, 500, 1000, 2000, 4000, 8000]);
  for (const failures of [6, 7, 30, 1000, Infinity]) {
    assert.equal(top(failures), RECONNECT_MAX_MS, `failures=${failures}`);
  }
  assert.equal(RECONNECT_BASE_MS, 250);
});

test('jitter scales the delay to between 50 % and 100 %, linearly in random', () => {
  for (const failures of [0, 3, 6, 50]) {
    const full = reconnectDelayMs(failures, 1);
    assert.equal(reconnectDelayMs(failures, 0), full / 2, `failures=${failures}`);
    assert.equal(reconnectDelayMs(failures, 0.5), full * 0.75, `failures=${failures}`);
    const low = reconnectDelayMs(failures, 0);
    for (let i = 0; i < 100; i++) {
      const d = reconnectDelayMs(failures, rng.next());
      assert.ok(d >= low && d < full, `${d} outside [${low}, ${full})`);
    }
  }
});
