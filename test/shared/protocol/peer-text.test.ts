// Peer-chosen text reaches logs and terminals only as one bounded line without control characters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cleanPeerText } from '../../../shared/protocol/peer-text.ts';

test('newlines, escape sequences, C1 controls and bidi overrides are replaced; length is bounded', () => {
  const forged = 'mallory\nstep 30/30 loss 0.0000\r\u001b[2J\u001b]0;pwned\u0007\u009b31m\u202eevil';
  const clean = cleanPeerText(forged, 200);
  assert.doesNotMatch(clean, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e]/);
  assert.ok(clean.startsWith('mallory step 30/30 loss 0.0000 '), clean);
  assert.equal(cleanPeerText('x'.repeat(500), 64).length, 65); // 64 + the ellipsis
  assert.equal(cleanPeerText(undefined), '');
  assert.equal(cleanPeerText('GPU: NVIDIA H200 (ünïcödé ok)'), 'GPU: NVIDIA H200 (ünïcödé ok)');
});
