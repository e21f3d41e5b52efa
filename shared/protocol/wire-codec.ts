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
 * Lossy codecs are used with error feedback (`sendCarrying`, the end of this file): what one
 * message failed to carry goes with the next, so what the receiver has tracks what was meant within
 * one message's error, however many messages are sent. Workers send gradients that way
 * (ErrorFeedback), the coordinator parameter deltas (HeldCopy).
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

/**
 * The least tolerance (relative L2 distance) a trusted recomputation must allow an honest result
 * sent up in each codec. With error feedback a worker sends Q(g + e_prev) = g + e_prev − e_new, so
 * an honest result differs from the trusted g by two messages' rounding, e_prev − e_new.
 */
export const CODEC_TOLERANCE_FLOOR: Record<CodecName, number> = {
  // exact: the codec adds nothing (the tolerance asked for covers the backends' own differences)
  f32: 0,
  // |err| ≤ 2^-11·|x| per value: one rounding is ≤ 4.9e-4 of the norm, two ≤ 9.8e-4; twice that
  f16: 0.002,
  // |err| ≤ 2^-8·|x| per value: one rounding is ≤ 3.9e-3 of the norm, two ≤ 7.8e-3; 2.5× that
  bf16: 0.02,
  // |err| ≤ scale/2 = max/254 per value in its block, max/440 rms (uniform rounding): one rounding is
  // about (max/rms)/440 of the norm, under 1 % for gradient-like blocks (max ≈ 3× rms); two stay under
  // the floor while a block's max is up to 11× its rms
  int8: 0.05,
};

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
 * Error feedback's one step, in both of its forms: sends Q(target) and hands `settle` what the
 * receiver will decode, so the caller keeps what this message could not carry for the next one.
 * Decoding here is the receiver's own float32 arithmetic (decodeFloats), so the sender's state
 * matches the receiver's bits.
 */
function sendCarrying(target: Float32Array, spec: CodecSpec, settle: (decoded: Float32Array) => void): PackedFloats {
  const packed = encodeFloats(target, spec);
  settle(decodeFloats(packed));
  return packed;
}

/**
 * Error feedback in residual form (gradients up: each message is a new value to add): encode(x)
 * sends Q(x + e) and keeps e ← (x + e) − D(Q(x + e)). With f32 it is the identity and keeps no
 * state (so an f32 run is bit-identical to no codec).
 */
export class ErrorFeedback {
  private residual: Float32Array | null = null;

  constructor(readonly spec: CodecSpec) {}

  encode(x: Float32Array): PackedFloats {
    if (this.spec.name === 'f32') return encodeFloats(x, this.spec);
    if (!this.residual || this.residual.length !== x.length) this.residual = new Float32Array(x.length);
    const residual = this.residual;
    const target = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) target[i] = x[i] + residual[i];
    return sendCarrying(target, this.spec, (decoded) => {
      for (let i = 0; i < x.length; i++) residual[i] = target[i] - decoded[i];
    });
  }

  /** What has not been delivered yet (zeros before the first message). */
  get pending(): Float32Array {
    return this.residual ?? new Float32Array(0);
  }

  reset(): void {
    this.residual = null;
  }
}

/**
 * Error feedback in held form (parameters down: each message moves the receiver's copy towards a
 * new exact vector): the sender keeps the receiver's copy h, sends Q(exact − h) and adds
 * D(Q(exact − h)) to h, in float32 like the receiver. The first message, and every one with f32,
 * is the exact vector itself, sent whole: update() then returns null and h becomes `exact`.
 */
export class HeldCopy {
  private copy: Float32Array | null = null;

  constructor(readonly spec: CodecSpec) {}

  /** What the receiver holds (null before the first message): the sender's own array, not to be changed. */
  get held(): Float32Array | null {
    return this.copy;
  }

  /** The receiver now holds `values` (a relay passing its parent's frames on): later deltas change it in place. */
  adopt(values: Float32Array): void {
    this.copy = values;
  }

  /**
   * The next message towards `exact`: Q(exact − held), the held copy moved by its decoding; or null,
   * meaning send `exact` whole, which then becomes the held copy itself (not a copy: later deltas
   * change it in place, so the caller hands it over).
   */
  update(exact: Float32Array): PackedFloats | null {
    if (this.spec.name === 'f32' || !this.copy) {
      this.copy = exact;
      return null;
    }
    const held = this.copy;
    const delta = new Float32Array(exact.length);
    for (let i = 0; i < delta.length; i++) delta[i] = exact[i] - held[i];
    return sendCarrying(delta, this.spec, (decoded) => {
      for (let i = 0; i < decoded.length; i++) held[i] += decoded[i];
    });
  }
}
