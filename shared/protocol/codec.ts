/**
 * The one place that turns messages into bytes and back. msgpackr with typed arrays kept as typed
 * arrays (its extension types), so a Float32Array of gradients crosses the wire as raw bytes plus
 * a few bytes of framing. Records (msgpackr's shared structures) are off: every frame stands alone.
 */
import { Packr } from 'msgpackr';
import { ErrorCodes, LoraMeshError } from '../errors.ts';
import { parseMessage, type Message } from './messages.ts';

// structuredClone: false turns off msgpackr's id/pointer extensions (0x69, 0x70), which no peer
// needs: with them a 1.4 KB frame decodes to a DAG that msgpackr's "end of buffer not reached"
// error turns into a JSON view of ~10^9 characters (6 s and > 1 GB on the coordinator's thread).
export const CODEC_OPTIONS = { useRecords: false, moreTypes: true, mapsAsObjects: true, int64AsType: 'number', structuredClone: false } as const;
const packr = new Packr(CODEC_OPTIONS);

/** msgpackr's messages can echo input (a RegExp extension's pattern): cut them so a reject stays within its 4096-char message limit. */
const MAX_DECODE_DETAIL = 200;

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
    const detail = String((err as Error)?.message ?? err);
    throw new LoraMeshError(ErrorCodes.DECODE, `frame is not valid msgpack (${detail.length > MAX_DECODE_DETAIL ? detail.slice(0, MAX_DECODE_DETAIL) + '…' : detail})`);
  }
  return parseMessage(raw);
}
