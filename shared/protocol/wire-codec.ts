/**
 * Wire codecs for the float payloads (gradients up, parameters down). A run picks one codec per
 * direction (the manifest's `wire`); every adapter tensor travels as one flat vector in manifest
 * order, so names cross the wire once (in the welcome), not in every frame.
 *
 *   f32   exact                                         4 bytes/value
 *   f16   |err| ≤ 2^-11·|x| (normal range), ≤ 2^-25 below it; |x| > 65504 clamps   2 bytes/value
 *   bf16  |err| ≤ 2^-8·|x|                              2 bytes/value
 *   int8  per block of `blockSize` values: scale = max|x|/127, |err| ≤ scale/2   1 byte/value + 4/blockSize
 *
 * Lossy codecs are used with error feedback (ErrorFeedback): the sender adds what the last
 * message failed to carry to the next one, so the sum of decoded messages tracks the sum of the
 * true values within one message's error, however many messages are sent.
 */
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../formats/half.ts';
import { ErrorCodes, fail } from '../errors.ts';

export const CODECS = ['f32', 'f16', 'bf16', 'int8'] as const;
export type CodecName = (typeof CODECS)[number];

export interface CodecSpec {
  name: CodecName;
  /** int8: values per scale (default 64); ignored by the other codecs */
  blockSize?: number;
}

export const F32: CodecSpec = { name: 'f32' };
export const DEFAULT_INT8_BLOCK = 64;
export const MAX_BLOCK = 1 << 16;

/** One flat float vector as it crosses the wire. */
export interface PackedFloats {
  codec: CodecName;
  /** f32: Float32Array; f16/bf16: Uint16Array of bit patterns; int8: Int8Array */
  values: Float32Array | Uint16Array | Int8Array;
  /** int8 only: one float32 scale per block */
  scales?: Float32Array;
  blockSize?: number;
}

const F16_MAX = 65504;

export function checkCodecSpec(spec: CodecSpec, what: string): CodecSpec {
  if (!(CODECS as readonly string[]).includes(spec.name))
    fail(ErrorCodes.CONFIG, `${what} should be one of ${CODECS.join(', ')}, got ${JSON.stringify(spec.name)}`);
  if (spec.name !== 'int8') return { name: spec.name };
  const blockSize = spec.blockSize ?? DEFAULT_INT8_BLOCK;
  if (!Number.isInteger(blockSize) || blockSize < 1 || blockSize > MAX_BLOCK)
    fail(ErrorCodes.CONFIG, `${what} block size should be an integer in [1, ${MAX_BLOCK}], got ${blockSize}`);
  return { name: 'int8', blockSize };
}

export function describeCodec(spec: CodecSpec): string {
  return spec.name === 'int8' ? `int8/${spec.blockSize ?? DEFAULT_INT8_BLOCK}` : spec.name;
}

/** Encodes x (which must be finite). */
export function encodeFloats(x: Float32Array, spec: CodecSpec): PackedFloats {
  switch (spec.name) {
    case 'f32':
      return { codec: 'f32', values: x };
    case 'f16': {
      const clamped = Float32Array.from(x, (v) => Math.max(-F16_MAX, Math.min(F16_MAX, v)));
      return { codec: 'f16', values: f32ToF16(clamped) };
    }
    case 'bf16':
      return { codec: 'bf16', values: f32ToBf16(x) };
    case 'int8':
      return encodeInt8(x, spec.blockSize ?? DEFAULT_INT8_BLOCK);
  }
}

function encodeInt8(x: Float32Array, blockSize: number): PackedFloats {
  const blocks = Math.ceil(x.length / blockSize);
  const scales = new Float32Array(blocks);
  const values = new Int8Array(x.length);
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const end = Math.min(x.length, start + blockSize);
    let max = 0;
    for (let i = start; i < end; i++) max = Math.max(max, Math.abs(x[i]));
    // The stored float32 scale is what the decoder multiplies by, so quantize against it.
    const scale = (scales[b] = max / 127);
    if (scale === 0) continue;
    for (let i = start; i < end; i++) values[i] = Math.max(-127, Math.min(127, Math.round(x[i] / scale)));
  }
  return { codec: 'int8', values, scales, blockSize };
}

/** Decodes into `out` (a fresh array when omitted); float32 arithmetic, identical on every peer. */
export function decodeFloats(p: PackedFloats, out = new Float32Array(p.values.length)): Float32Array {
  switch (p.codec) {
    case 'f32':
      out.set(p.values as Float32Array);
      return out;
    case 'f16':
      out.set(f16ToF32(p.values as Uint16Array));
      return out;
    case 'bf16':
      out.set(bf16ToF32(p.values as Uint16Array));
      return out;
    case 'int8': {
      const q = p.values as Int8Array;
      const scales = p.scales!;
      const blockSize = p.blockSize!;
      for (let i = 0; i < q.length; i++) out[i] = q[i] * scales[Math.floor(i / blockSize)];
      return out;
    }
  }
}

/** Bytes of encoded values (the payload a frame must carry; the rest is protocol overhead). */
export function payloadBytes(p: PackedFloats): number {
  return p.values.byteLength + (p.scales?.byteLength ?? 0);
}

/** Bytes a vector of n values takes in a codec. */
export function codecBytes(n: number, spec: CodecSpec): number {
  switch (spec.name) {
    case 'f32':
      return 4 * n;
    case 'f16':
    case 'bf16':
      return 2 * n;
    case 'int8':
      return n + 4 * Math.ceil(n / (spec.blockSize ?? DEFAULT_INT8_BLOCK));
  }
}

/**
 * Sender-side error feedback: encode(x) sends Q(x + e) and keeps e ← (x + e) − D(Q(x + e)).
 * With f32 it is the identity and keeps no state (so an f32 run is bit-identical to no codec).
 */
export class ErrorFeedback {
  private residual: Float32Array | null = null;

  constructor(readonly spec: CodecSpec) {}

  encode(x: Float32Array): PackedFloats {
    if (this.spec.name === 'f32') return encodeFloats(x, this.spec);
    if (!this.residual || this.residual.length !== x.length) this.residual = new Float32Array(x.length);
    const target = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) target[i] = x[i] + this.residual[i];
    const packed = encodeFloats(target, this.spec);
    const decoded = decodeFloats(packed);
    for (let i = 0; i < x.length; i++) this.residual[i] = target[i] - decoded[i];
    return packed;
  }

  /** What has not been delivered yet (zeros before the first message). */
  get pending(): Float32Array {
    return this.residual ?? new Float32Array(0);
  }

  reset(): void {
    this.residual = null;
  }
}
