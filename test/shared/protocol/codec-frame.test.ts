// encodeMessage builds frames with a float payload itself (msgpackr packs everything before the values, the values
// are copied once into the frame): the bytes equal msgpackr's packing of the whole message (encodeMessageWhole) for
// every payload type and at each of the extension's length encodings (ext8, ext16, ext32 and their borders), the
// values start at a multiple of 4 bytes, and the frame decodes to the message, the values read in place.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeMessage, encodeMessage, encodeMessageWhole } from '../../../shared/protocol/codec.ts';
import type { Message } from '../../../shared/protocol/messages.ts';
import { Rng } from '../../../shared/rng.ts';

const rng = new Rng(23);
/** byte lengths around ext8/ext16/ext32's borders (the data is one type byte + the values) */
const BYTES = [0, 4, 252, 254, 255, 256, 65532, 65534, 65535, 65536, 1 << 20];

/** A payload of `bytes` bytes (rounded down to whole elements: 254 and 65534 reach f16 and int8's exact borders). */
function payload(kind: 'f32' | 'f16' | 'int8', bytes: number) {
  if (kind === 'f32')
    return { codec: 'f32' as const, values: Float32Array.from({ length: Math.floor(bytes / 4) }, () => rng.normal()) };
  if (kind === 'f16')
    return { codec: 'f16' as const, values: Uint16Array.from({ length: Math.floor(bytes / 2) }, () => rng.int(65536)) };
  return {
    codec: 'int8' as const,
    blockSize: 64,
    values: Int8Array.from({ length: bytes }, () => rng.int(255) - 127),
    scales: Float32Array.from({ length: Math.ceil(bytes / 64) }, () => rng.next()),
  };
}

function messages(kind: 'f32' | 'f16' | 'int8', bytes: number): Message[] {
  const grads = payload(kind, bytes);
  return [
    {
      type: 'result',
      assignmentId: 'a'.repeat(rng.int(20) + 1),
      paramVersion: 3,
      tokenCount: 7,
      lossSum: 1.5,
      computeMs: 2,
      grads,
    },
    { type: 'params', paramVersion: 9, ...(kind === 'f32' ? {} : { deltaFrom: 8 }), tensors: grads },
    { type: 'block-forward', assignmentId: 'g.1', index: 4, grads },
  ] as Message[];
}

test("frames with a float payload are byte for byte msgpackr's, aligned, and decode to the message", () => {
  for (const kind of ['f32', 'f16', 'int8'] as const) {
    for (const bytes of BYTES) {
      for (const m of messages(kind, bytes)) {
        const frame = encodeMessage(m);
        const whole = encodeMessageWhole(m);
        assert.equal(frame.length, whole.length, `${m.type} ${kind} ${bytes} B: length`);
        assert.ok(Buffer.from(frame).equals(Buffer.from(whole)), `${m.type} ${kind} ${bytes} B: bytes`);
        const back = decodeMessage(frame) as unknown as Record<string, { values: ArrayBufferView }>;
        const field = m.type === 'params' ? 'tensors' : 'grads';
        const values = back[field].values;
        const sent = (m as unknown as Record<string, { values: ArrayBufferView }>)[field].values;
        assert.ok(
          Buffer.from(values.buffer, values.byteOffset, values.byteLength).equals(
            Buffer.from(sent.buffer, sent.byteOffset, sent.byteLength),
          ),
          `${m.type} ${kind} ${bytes} B: values`,
        );
        // read in place: a view of the frame, at a multiple of 4 bytes
        if (bytes > 0) {
          assert.equal(values.buffer, frame.buffer, `${m.type} ${kind} ${bytes} B: in place`);
          assert.equal(values.byteOffset % 4, 0);
        }
      }
    }
  }
});

test('a payload that is a view into a larger buffer is framed from its own bytes only', () => {
  const big = Float32Array.from({ length: 1000 }, (_, i) => i);
  const view = big.subarray(10, 266);
  const m: Message = { type: 'params', paramVersion: 1, tensors: { codec: 'f32', values: view } };
  assert.ok(Buffer.from(encodeMessage(m)).equals(Buffer.from(encodeMessageWhole(m))));
  const back = decodeMessage(encodeMessage(m));
  assert.deepEqual(back.type === 'params' && [...(back.tensors.values as Float32Array)], [...view]);
});
