import assert from 'node:assert/strict';
import { test } from 'node:test';
import { closeCodeFor, ErrorCodes } from '../../shared/errors.ts';

test('closeCodeFor: 1002 (protocol error) for another protocol version, 1008 (policy violation) otherwise', () => {
  assert.equal(closeCodeFor(ErrorCodes.PROTOCOL_VERSION), 1002);
  for (const code of Object.values(ErrorCodes).filter((c) => c !== ErrorCodes.PROTOCOL_VERSION)) {
    assert.equal(closeCodeFor(code), 1008, code);
  }
});
