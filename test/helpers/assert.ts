import assert from 'node:assert/strict';
import { LoraMeshError } from '../../shared/errors.ts';

/** Asserts fn throws a LoraMeshError with this stable code (and, optionally, a message part). */
export function throwsCode(fn: () => unknown, code: string, messagePart?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    assert.equal(err.code, code, err.message);
    if (messagePart) assert.match(err.message, messagePart);
    return true;
  });
}
