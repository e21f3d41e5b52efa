/**
 * The one place that turns messages into bytes and back. msgpackr with typed arrays kept as typed
 * arrays (its extension types), so a Float32Array of gradients crosses the wire as raw bytes plus
 * a few bytes of framing. Records (msgpackr's shared structures) are off: every frame stands alone.
 */
import { Packr } from 'msgpackr';
import { ErrorCodes, LoraMeshError } from '../errors.ts';
import { parseMessage, type Message } from './messages.ts';

const packr = new Packr({ useRecords: false, moreTypes: true, mapsAsObjects: true, int64AsType: 'number' });

export function encodeMessage(message: Message): Uint8Array {
  return packr.pack(message);
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
    throw new LoraMeshError(ErrorCodes.DECODE, `frame is not valid msgpack (${(err as Error).message})`);
  }
  return parseMessage(raw);
}
