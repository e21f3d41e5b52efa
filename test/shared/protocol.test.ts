// Codec round trip for every message type; malformed frames get a stable error code, never a crash.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { decodeMessage, encodeMessage } from '../../shared/protocol/codec.ts';
import { checkTensors, PROTOCOL_VERSION, type Message } from '../../shared/protocol/messages.ts';
import { LoraMeshError } from '../../shared/errors.ts';

const microBatch = {
  batch: 2, time: 3, dropoutSeed: 5,
  inputIds: new Int32Array([1, 2, 3, 4, 5, 6]), targets: new Int32Array([2, 3, 4, 5, 6, 7]), lossMask: new Float32Array([0, 1, 1, 0, 1, 1]),
};
const grads = { 'model.layers.0.self_attn.q_proj.lora_A': new Float32Array([0.5, -1.25, 3e-8, 1e30]) };
const manifest = {
  runId: 'r1', lora: { r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj'], init: 'kaiming', useRslora: false },
  model: { config: { model_type: 'llama', vocab_size: 10 }, files: [{ name: 'model.safetensors', sha256: 'a'.repeat(64), bytes: 100 }] },
  adapter: [{ name: 'model.layers.0.self_attn.q_proj.lora_A', shape: [2, 2] }],
};

const samples: Message[] = [
  { type: 'hello', protocol: PROTOCOL_VERSION, token: 't', name: 'n', backend: 'wasm', platform: 'node' },
  { type: 'ready', paramVersion: 3 },
  { type: 'result', assignmentId: 'abc', paramVersion: 3, tokenCount: 4, lossSum: 7.5, computeMs: 12.5, grads },
  { type: 'worker-error', assignmentId: 'abc', code: 'LM_ERR_STALE', message: 'old' },
  { type: 'heartbeat', sentAt: 123 },
  { type: 'welcome', workerId: 'w1', manifest: manifest as never },
  { type: 'params', paramVersion: 4, tensors: grads },
  { type: 'assign', assignmentId: 'abc', paramVersion: 4, step: 1, index: 0, microBatch },
  { type: 'reject', code: 'LM_ERR_SHAPE', message: 'bad' },
  { type: 'done', reason: 'finished' },
];

test('every message type survives encode → decode with typed arrays intact', () => {
  for (const m of samples) {
    const back = decodeMessage(encodeMessage(m));
    assert.deepEqual(back, m, m.type);
  }
  const r = decodeMessage(encodeMessage(samples[2])) as Extract<Message, { type: 'result' }>;
  assert.ok(r.grads['model.layers.0.self_attn.q_proj.lora_A'] instanceof Float32Array);
  const a = decodeMessage(encodeMessage(samples[7])) as Extract<Message, { type: 'assign' }>;
  assert.ok(a.microBatch.inputIds instanceof Int32Array);
});

test('a float32 payload costs its raw bytes plus a small constant', () => {
  const n = 10_000;
  const frame = encodeMessage({ type: 'params', paramVersion: 1, tensors: { x: new Float32Array(n) } });
  assert.ok(frame.length >= 4 * n && frame.length <= 4 * n + 64, `frame ${frame.length} bytes for ${4 * n} payload bytes`);
});

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    return err.code;
  }
  assert.fail('expected a rejection');
}

const packr = new Packr({ useRecords: false, moreTypes: true });

test('malformed frames get stable error codes', () => {
  assert.equal(codeOf(() => decodeMessage(new Uint8Array(0))), 'LM_ERR_DECODE');
  assert.equal(codeOf(() => decodeMessage(new Uint8Array([0x92, 0x01]))), 'LM_ERR_DECODE'); // truncated array
  assert.equal(codeOf(() => decodeMessage(packr.pack(42))), 'LM_ERR_DECODE');
  assert.equal(codeOf(() => decodeMessage(packr.pack([1, 2]))), 'LM_ERR_DECODE');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ type: 'launch-missiles' }))), 'LM_ERR_UNKNOWN_TYPE');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ type: 'toString' }))), 'LM_ERR_UNKNOWN_TYPE');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ type: 'ready' }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ type: 'ready', paramVersion: -2 }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ ...samples[2], lossSum: NaN }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ ...samples[2], grads: { x: [1, 2] } }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ ...samples[7], microBatch: { ...microBatch, inputIds: new Int32Array(5) } }))), 'LM_ERR_FIELD');
  assert.equal(codeOf(() => decodeMessage(packr.pack({ ...samples[0], platform: 'toaster' }))), 'LM_ERR_FIELD');
});

test('every single-byte truncation of a valid frame is rejected or decodes to a checked message', () => {
  const frame = encodeMessage(samples[2]);
  for (let cut = 1; cut < frame.length; cut++) {
    try {
      decodeMessage(frame.subarray(0, cut));
    } catch (err) {
      assert.ok(err instanceof LoraMeshError, `cut ${cut}: ${err}`);
    }
  }
});

test('tensors are checked against the manifest: names, lengths, finiteness', () => {
  const spec = [{ name: 'a', shape: [2, 2] as [number, number] }];
  checkTensors({ a: new Float32Array(4) }, spec, 'grads');
  assert.equal(codeOf(() => checkTensors({ a: new Float32Array(3) }, spec, 'grads')), 'LM_ERR_SHAPE');
  assert.equal(codeOf(() => checkTensors({ b: new Float32Array(4) }, spec, 'grads')), 'LM_ERR_SHAPE');
  assert.equal(codeOf(() => checkTensors({ a: new Float32Array(4), b: new Float32Array(1) }, spec, 'grads')), 'LM_ERR_SHAPE');
  assert.equal(codeOf(() => checkTensors({ a: new Float32Array([0, 1, Infinity, 0]) }, spec, 'grads')), 'LM_ERR_NON_FINITE');
  assert.equal(codeOf(() => checkTensors({ a: new Float32Array([0, NaN, 0, 0]) }, spec, 'grads')), 'LM_ERR_NON_FINITE');
});
