// The per-connection rate limit with a fake clock: a burst of 2 s worth, then the refill rate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TokenBucket } from '../../../coordinator/engine/token-bucket.ts';

test('a bucket of 10/s allows a burst of 20, then 10 per second, and never more than the burst', () => {
  const bucket = new TokenBucket(10, 2, 0);
  let taken = 0;
  while (bucket.take(0)) taken++;
  assert.equal(taken, 20);
  assert.equal(bucket.take(50), false); // 0.5 token refilled
  assert.equal(bucket.take(100), true); // 1 token after 100 ms
  taken = 0;
  for (let t = 200; t <= 1100; t += 50) if (bucket.take(t)) taken++; // one token per 100 ms
  assert.equal(taken, 10);
  taken = 0;
  while (bucket.take(60_000)) taken++;
  assert.equal(taken, 20, 'a long pause refills to the burst, not beyond');
  assert.equal(new TokenBucket(Infinity).take(), true);
});
