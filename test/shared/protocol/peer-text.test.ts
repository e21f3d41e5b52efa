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

test('invisible characters are replaced, so local\u200b-1 cannot pass for local-1', () => {
  for (const hidden of ['\u200b', '\u200c', '\u200d', '\u2060', '\ufeff', '\u2028', '\u2029']) {
    assert.notEqual(cleanPeerText(`local${hidden}-1`), 'local-1');
    assert.doesNotMatch(cleanPeerText(`local${hidden}-1`), /[\u200b-\u200d\u2060\ufeff\u2028\u2029]/);
  }
});
