// A relay's count of each worker's results sent up whole (coordinator/relay/probation.ts): a result counts once the
// parent's parameters move past the version it was computed at; a closed link uncounts what the parent may not
// have read, so those workers' next results go up whole again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ProbationTally } from '../../../coordinator/relay/probation.ts';

test('results sent up whole count at once, stay counted once read, and stop counting if the link drops first', () => {
  const t = new ProbationTally();
  t.send('w1', 3);
  t.send('w1', 3);
  t.send('w2', 3);
  assert.equal(t.count('w1'), 2, 'not sent twice while unread');
  assert.equal(t.count('w3'), 0);
  // the link drops before the parent moved past version 3: none of them is known to have been read
  t.linkLost();
  assert.equal(t.count('w1'), 0);
  assert.equal(t.count('w2'), 0);
  // sent again at version 4, read when parameters of version 5 arrive (version 4's own frame reads nothing of it)
  t.send('w1', 4);
  t.read(4);
  t.send('w2', 4);
  t.read(5);
  t.send('w2', 5);
  t.linkLost();
  assert.equal(t.count('w1'), 1, 'read: kept');
  assert.equal(t.count('w2'), 1, 'the read one kept, the unread one (version 5) dropped');
});
