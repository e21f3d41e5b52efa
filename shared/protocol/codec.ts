/**
 * The one place that turns messages into bytes and back. msgpackr with typed arrays kept as typed
 * arrays (its extension types), so a Float32Array of gradients crosses the wire as raw bytes plus
 * a few bytes of framing. Records (msgpackr's shared structures) are off: every frame stands alone.
 */
import { addExtension, Packr } from 'msgpackr';
import { ErrorCodes, LoraMeshError } from '../errors.ts';
import { parseMessage, type Message } from './messages.ts';

// structuredClone: false turns off msgpackr's id/pointer extensions (0x69, 0x70), which no peer
// needs: with them a 1.4 KB frame decodes to a DAG that msgpackr's "end of buffer not reached"
// error turns into a JSON view of ~10^9 characters (seconds and gigabytes on the coordinator's
// thread).
export const CODEC_OPTIONS = {
  useRecords: false,
  moreTypes: true,
  mapsAsObjects: true,
  int64AsType: 'number',
  structuredClone: false,
} as const;
const packr = new Packr(CODEC_OPTIONS);

/** msgpackr's type codes of its typed-array extension (0x74), by the first byte of the payload. */
const TYPED_ARRAYS = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
];
type Bytes = Uint8Array & { buffer: ArrayBuffer };
/** Node's allocation without zero-fill; elsewhere (browsers) a plain ArrayBuffer. */
const allocUninitialized: (n: number) => ArrayBuffer = (() => {
  const B = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer;
  return B ? (n: number) => B.allocUnsafeSlow(n).buffer as ArrayBuffer : (n: number) => new ArrayBuffer(n);
})();

/**
 * Decodes msgpackr's typed-array extension like msgpackr does, without its copy into fresh zeroed
 * memory: a payload aligned for its element type becomes a view of the frame (a received frame
 * is never reused), anything else is copied into uninitialized memory. msgpackr's slice into
 * calloc'd memory made the first touch of every result a run of page faults, most of the
 * coordinator's system time (measured by bench:scale; figures in bench/RESULTS.md, Coordinator
 * scale, "What changed").
 */
addExtension({
  type: 0x74,
  unpack(data: Bytes) {
    const code = data[0];
    const Ctor = TYPED_ARRAYS[code];
    if (!Ctor) {
      const copy = data.slice(1).buffer; // ArrayBuffer (16) and DataView (17), as msgpackr does
      if (code === 16) return copy;
      if (code === 17) return new DataView(copy);
      throw new Error(`unknown typed array code ${code}`);
    }
    const offset = data.byteOffset + 1;
    const bytes = data.length - 1;
    if (bytes % Ctor.BYTES_PER_ELEMENT !== 0)
      throw new RangeError(`${bytes} bytes is not a whole number of ${Ctor.name} elements`);
    if (offset % Ctor.BYTES_PER_ELEMENT === 0) return new Ctor(data.buffer, offset, bytes / Ctor.BYTES_PER_ELEMENT);
    const copy = allocUninitialized(bytes);
    new Uint8Array(copy).set(data.subarray(1));
    return new Ctor(copy);
  },
});

/**
 * msgpackr's messages can echo input (a RegExp extension's pattern): cut them so a reject stays within its
 * 4096-char message limit.
 */
const MAX_DECODE_DETAIL = 200;

/** The float payload of a message type, if it has one. */
const PAYLOAD_FIELD: Partial<Record<Message['type'], string>> = {
  result: 'grads',
  params: 'tensors',
  'block-sum': 'grads',
  'block-forward': 'grads',
};

/** Bytes msgpackr writes before a typed array's data: ext8/16/32 header, 0x74, the type code. */
const typedArrayHeader = (bytes: number) => (bytes + 1 < 0x100 ? 4 : bytes + 1 < 0x10000 ? 5 : 7);

/**
 * Packs a message. A float payload (result.grads, params.tensors, a relay's block-sum.grads and
 * block-forward.grads) goes last, and its values start
 * at a multiple of 4 bytes in the frame (a `pad` string in front shifts it), so the receiver —
 * whose frame buffer starts the message at offset 0 (ws joins a large message into a fresh buffer;
 * browsers hand over an ArrayBuffer) — reads the values in place instead of copying them: one
 * copy fewer per result on the coordinator, per params on every worker. Where the offset is not
 * what was aimed for, the frame is still valid; the receiver copies.
 *
 * The frame is msgpackr's bytes exactly (encodeMessageWhole's), but built here: msgpackr packs everything
 * before the values, then the frame is allocated once at its final size (not zeroed) and the values copied
 * into it once. msgpackr itself grew its buffer and copied the values through it, 79 ms for a 35 MB parameter
 * frame at Qwen2.5-0.5B all-linear r=16 shapes (test/shared/protocol/codec-frame.test.ts compares the bytes).
 */
export function encodeMessage(message: Message): Uint8Array {
  const payload = payloadOf(message);
  if (!payload) return packr.pack(message);
  const { values, ordered } = payload;
  const empty = new values.constructor(0);
  const header = typedArrayHeader(values.byteLength);
  // Where the values would start: a pack with no values ends with their empty extension (c7 01 74 code).
  let prefix = packr.pack(ordered(null, empty));
  const misaligned = (prefix.length - typedArrayHeader(0) + header) % 4;
  // 'pad' plus a fixstr of k chars adds 5 + k bytes before the values
  if (misaligned !== 0) prefix = packr.pack(ordered('x'.repeat((7 - misaligned) % 4), empty));
  const at = prefix.length - typedArrayHeader(0);
  const code = prefix[prefix.length - 1];
  // msgpackr packs a Uint8Array as bin, not as this extension: then (no payload here is one) it packs it whole
  if (prefix[at] !== 0xc7 || prefix[at + 1] !== 1 || prefix[at + 2] !== 0x74) return encodeMessageWhole(message);
  const frame = new Uint8Array(allocUninitialized(at + header + values.byteLength));
  frame.set(prefix.subarray(0, at));
  const length = values.byteLength + 1; // the type code is part of the extension's data
  let p = at;
  if (header === 4) frame.set([0xc7, length], p);
  else if (header === 5) frame.set([0xc8, length >> 8, length & 0xff], p);
  else new DataView(frame.buffer).setUint32(p + 1, length), (frame[p] = 0xc9);
  p += header - 2;
  frame[p++] = 0x74; // msgpackr's typed-array extension
  frame[p++] = code;
  frame.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), p);
  return frame;
}

/** The same bytes as encodeMessage, packed whole by msgpackr (the reference of its test and benchmark). */
export function encodeMessageWhole(message: Message): Uint8Array {
  const payload = payloadOf(message);
  if (!payload) return packr.pack(message);
  const { values, ordered } = payload;
  const before = packr.pack(ordered(null, new values.constructor(0))).length - typedArrayHeader(0);
  const misaligned = (before + typedArrayHeader(values.byteLength)) % 4;
  return packr.pack(ordered(misaligned === 0 ? null : 'x'.repeat((7 - misaligned) % 4), values));
}

type TypedValues = ArrayBufferView & { constructor: new (n: number) => ArrayBufferView };

/** A message's float payload, and the message rebuilt with it last (after an optional `pad`); null: none. */
function payloadOf(
  message: Message,
): { values: TypedValues; ordered: (pad: string | null, v: ArrayBufferView) => Record<string, unknown> } | null {
  const field = PAYLOAD_FIELD[message.type];
  type Packed = { values: TypedValues };
  const { [field ?? '']: packed, ...rest } = message as unknown as Record<string, Packed | undefined>;
  // anything else as it is (tests also pack malformed messages on purpose)
  if (!field || typeof packed !== 'object' || packed === null || !ArrayBuffer.isView(packed.values)) return null;
  const { values, ...meta } = packed;
  return {
    values,
    ordered: (pad, v) => ({
      ...(pad === null ? {} : { pad }),
      ...rest,
      [field]: { ...meta, values: v },
    }),
  };
}

/**
 * A received frame (ws hands over a Buffer) as a plain Uint8Array over the same memory. Not a
 * copy: `new Uint8Array(buffer)` would copy the whole frame, and the codec reads payloads in place.
 */
export function asBytes(frame: ArrayBufferView): Uint8Array {
  return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength);
}

/** Decodes and validates one frame; throws LoraMeshError with a stable code on anything bad. */
export function decodeMessage(bytes: Uint8Array): Message {
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) {
    throw new LoraMeshError(ErrorCodes.DECODE, 'empty or non-binary frame');
  }
  let raw: unknown;
  try {
    raw = packr.unpack(bytes);
  } catch (err) {
    const detail = String((err as Error)?.message ?? err);
    throw new LoraMeshError(
      ErrorCodes.DECODE,
      'frame is not valid msgpack ' +
        `(${detail.length > MAX_DECODE_DETAIL ? detail.slice(0, MAX_DECODE_DETAIL) + '…' : detail})`,
    );
  }
  return parseMessage(raw);
}
