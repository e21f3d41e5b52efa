// Which refusals a worker stops on: every permanent way a coordinator says no (HTTP status, close
// reason, reject frame) gives a code and a sentence; transient ones (limits, rates, dropped links)
// give null so the worker retries. Peer text in a reason is one bounded line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../../shared/errors.ts';
import {
  MAX_PEER_TEXT,
  refusalFromClose,
  refusalFromHttp,
  refusalFromReject,
} from '../../../shared/protocol/refusal.ts';

test('refused upgrades: 401 and 403 are permanent with a sentence naming the fix; 503 and 404 are not', () => {
  const auth = refusalFromHttp(401, 'LM_ERR_AUTH');
  assert.equal(auth?.code, ErrorCodes.AUTH);
  assert.match(auth!.reason, /refused the join token \(HTTP 401\): check --token or LORAMESH_TOKEN/);
  assert.equal(refusalFromHttp(401, undefined)?.code, ErrorCodes.AUTH, 'a 401 without the header is still final');
  const origin = refusalFromHttp(403, 'LM_ERR_ORIGIN');
  assert.equal(origin?.code, ErrorCodes.ORIGIN);
  assert.match(origin!.reason, /origin \(HTTP 403\): add it to the coordinator's --allowed-origins/);
  assert.equal(refusalFromHttp(400, 'LM_ERR_PROTOCOL_VERSION')?.code, ErrorCodes.PROTOCOL_VERSION);
  assert.equal(refusalFromHttp(503, 'LM_ERR_LIMIT'), null);
  assert.equal(refusalFromHttp(503, undefined), null);
  assert.equal(refusalFromHttp(404, 'LM_ERR_STATE'), null);
  assert.equal(refusalFromHttp(502, 'LM_ERR_NOT_A_CODE'), null);
});

test('closes: a permanent code in a 1008/1002 reason is final; 1006, 1000 and LM_ERR_LIMIT/RATE are not', () => {
  const final = [
    [1008, 'LM_ERR_AUTH'],
    [1008, 'LM_ERR_ORIGIN'],
    [1002, 'LM_ERR_PROTOCOL_VERSION'],
    [1008, 'LM_ERR_CODEC'],
    [1008, 'LM_ERR_QUARANTINED'],
    [1008, 'LM_ERR_SPOT_CHECK'],
  ] as const;
  for (const [closeCode, code] of final) {
    const refusal = refusalFromClose(closeCode, code);
    assert.equal(refusal?.code, code);
    assert.ok(refusal!.reason.includes(`(close ${closeCode})`), refusal!.reason);
  }
  assert.equal(refusalFromClose(1008, 'LM_ERR_LIMIT'), null, 'a handshake timeout may pass on retry');
  assert.equal(refusalFromClose(1008, 'LM_ERR_RATE'), null);
  assert.equal(refusalFromClose(1006, ''), null);
  assert.equal(refusalFromClose(1000, 'done'), null);
  assert.equal(refusalFromClose(1000, 'LM_ERR_AUTH'), null, 'only the refusing close codes count');
});

test('reject frames: permanent codes keep the coordinator’s words; per-frame codes are not refusals', () => {
  const quarantined = refusalFromReject('LM_ERR_QUARANTINED', 'failed a spot check');
  assert.deepEqual(quarantined, {
    code: 'LM_ERR_QUARANTINED',
    reason: 'this worker was quarantined by the coordinator: failed a spot check',
  });
  const words = 'protocol 1 is not supported; this coordinator speaks 2';
  const protocol = refusalFromReject('LM_ERR_PROTOCOL_VERSION', words);
  assert.equal(protocol?.reason, `the coordinator speaks another protocol version (${words}): update loramesh`);
  assert.equal(refusalFromReject('LM_ERR_CODEC', 'no int8')?.code, ErrorCodes.CODEC);
  assert.equal(refusalFromReject('LM_ERR_SPOT_CHECK', 'micro-batch 3 disagrees')?.code, ErrorCodes.SPOT_CHECK);
  const arithmetic = refusalFromReject('LM_ERR_ARITHMETIC', 'this run computes with arithmetic relaxed-fma');
  assert.equal(arithmetic?.code, ErrorCodes.ARITHMETIC);
  assert.match(arithmetic?.reason ?? '', /arithmetic variant \(this run computes with arithmetic relaxed-fma\)/);
  assert.equal(refusalFromClose(1008, 'LM_ERR_ARITHMETIC')?.code, ErrorCodes.ARITHMETIC);
  for (const code of ['LM_ERR_STALE', 'LM_ERR_SHAPE', 'LM_ERR_RATE', 'LM_ERR_LIMIT', 'toString', '__proto__']) {
    assert.equal(refusalFromReject(code, 'x'), null, code);
  }
});

test('the coordinator’s words in a reason are one line of at most MAX_PEER_TEXT characters', () => {
  const forged = refusalFromReject('LM_ERR_QUARANTINED', 'evil\nloramesh: LM_ERR_NONE: all fine\u001b[2J')!.reason;
  assert.equal(forged, 'this worker was quarantined by the coordinator: evil loramesh: LM_ERR_NONE: all fine [2J');
  const long = refusalFromReject('LM_ERR_QUARANTINED', 'x'.repeat(10_000))!.reason;
  assert.ok(long.endsWith(`: ${'x'.repeat(MAX_PEER_TEXT)}…`), long.slice(-20));
});
