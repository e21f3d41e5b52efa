/**
 * Frame generators for the protocol fuzz test (test/integration/fuzz.test.ts): valid messages of
 * every type, the same with fields removed, retyped or set to NaN/±Inf, byte-level mutations,
 * hand-built msgpack with huge declared lengths, msgpackr extension tricks, deep nesting, text
 * frames and frames over the server's maxPayload.
 *
 * `predict` says what a coordinator must answer to a frame: a reference decode (msgpackr with the
 * codec's options) and then RULES, a declarative copy of the protocol's field rules written apart
 * from shared/protocol/messages.ts, so the guards and this spec check each other.
 */
import { Packr } from 'msgpackr';
import { ARITHMETIC_VARIANTS } from '../../shared/arithmetic.ts';
import { ErrorCodes, type ErrorCode } from '../../shared/errors.ts';
import { CODEC_OPTIONS } from '../../shared/protocol/codec.ts';
import { PROTOCOL_VERSION } from '../../shared/protocol/messages.ts';
import { encodeFloats, type CodecSpec } from '../../shared/protocol/wire-codec.ts';
import type { Rng } from '../../shared/rng.ts';

/** fresh: no hello yet. joined: hello accepted, never ready, so never assigned any work. */
export type ConnState = 'fresh' | 'joined';

export type Outcome =
  | { kind: 'reject'; code: ErrorCode }
  /** a valid heartbeat after hello: taken without a reply */
  | { kind: 'none' }
  /** the server closes the socket with closeCode, after a reject carrying `code` when not null */
  | { kind: 'close'; code: ErrorCode | null; closeCode: number }
  /** would change the connection's state (a real join, becoming ready): never sent */
  | { kind: 'unwanted' };

export interface Frame {
  category: string;
  data: Uint8Array | string;
  /** false: sent as a WebSocket text frame */
  binary: boolean;
  outcome: Outcome;
}

export interface TensorSpec {
  name: string;
  shape: [number, number];
}

const reject = (code: ErrorCode): Outcome => ({ kind: 'reject', code });

// ---- the protocol's rules, restated -------------------------------------------------------------

type Rule = (v: unknown) => boolean;
const plain = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' &&
  v !== null &&
  (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);
const int =
  (min: number): Rule =>
  (v) =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
const str =
  (max: number): Rule =>
  (v) =>
    typeof v === 'string' && v.length <= max;
const finite: Rule = (v) => typeof v === 'number' && Number.isFinite(v);
const optional =
  (rule: Rule): Rule =>
  (v) =>
    v === undefined || rule(v);
/**
 * Packed floats: codec name, values of that codec's array type;
 * int8 adds blockSize (1..65536) and one float32 scale per block.
 */
const packed: Rule = (v) => {
  if (!plain(v)) return false;
  const arrays: Record<string, unknown> = { f32: Float32Array, f16: Uint16Array, bf16: Uint16Array, int8: Int8Array };
  if (
    typeof v.codec !== 'string' ||
    !Object.hasOwn(arrays, v.codec) ||
    !(v.values instanceof (arrays[v.codec] as typeof Float32Array))
  )
    return false;
  if (v.codec !== 'int8') return true;
  if (!int(1)(v.blockSize) || (v.blockSize as number) > 65536) return false;
  return (
    v.scales instanceof Float32Array &&
    v.scales.length === Math.ceil((v.values as ArrayLike<number>).length / (v.blockSize as number))
  );
};
const list =
  (min: number, max: number, item: Rule): Rule =>
  (v) =>
    Array.isArray(v) && v.length >= min && v.length <= max && v.every(item);
const microBatch: Rule = (v) => {
  if (!plain(v) || !int(1)(v.batch) || !int(1)(v.time) || !int(0)(v.dropoutSeed)) return false;
  const n = (v.batch as number) * (v.time as number); // (batch·time) token positions
  const sized = (t: unknown, kind: typeof Int32Array | typeof Float32Array) => t instanceof kind && t.length === n;
  return sized(v.inputIds, Int32Array) && sized(v.targets, Int32Array) && sized(v.lossMask, Float32Array);
};

/** welcome.relayPolicy: limits (maxRejects may be Infinity), deadlines, recompute, a memory table of ≤ 8 backends. */
const above =
  (min: number): Rule =>
  (v) =>
    typeof v === 'number' && v > min;
const atLeast0: Rule = (v) => finite(v) && (v as number) >= 0;
const relayPolicy: Rule = (v) =>
  plain(v) &&
  optional(
    (s) =>
      plain(s) &&
      above(0)(s.maxMessagesPerSecond) &&
      above(0)(s.maxRejects) &&
      int(1)(s.handshakeTimeoutMs) &&
      optional(int(1))(s.maxBufferedBytes),
  )(v.security) &&
  optional(
    (s) => plain(s) && atLeast0(s.deadlineFactor) && atLeast0(s.deadlineSlackMs) && atLeast0(s.unknownExpectedMs),
  )(v.schedule) &&
  optional((b) => typeof b === 'boolean')(v.recompute) &&
  optional(
    (m) =>
      plain(m) &&
      Object.keys(m).length <= 8 &&
      Object.values(m).every(
        (n) =>
          plain(n) &&
          atLeast0(n.bytes) &&
          atLeast0(n.recomputing) &&
          str(16384)(n.summary) &&
          list(0, 8, (o) => plain(o) && str(16)(o.format) && atLeast0(o.bytes))(n.smaller),
      ),
  )(v.memory);

export const RULES: Record<string, Record<string, Rule>> = {
  hello: {
    protocol: int(0),
    token: optional(str(512)),
    name: optional(str(128)),
    backend: str(64),
    platform: (v) => v === 'node' || v === 'browser',
    adapter: optional(str(128)),
    slow: optional((v) => typeof v === 'boolean'),
    codecs: optional((v) => Array.isArray(v) && v.length <= 16 && v.every(str(16))),
    baseFormats: optional((v) => Array.isArray(v) && v.length <= 16 && v.every(str(16))),
    memoryLimit: optional((v) => finite(v) && (v as number) > 0),
    arithmetic: optional((v) => Array.isArray(v) && v.length <= 8 && v.every(str(32))),
    multiRun: optional((v) => int(1)(v) && (v as number) <= 64),
    relay: optional((v) => typeof v === 'boolean'),
    relayProtocol: optional(int(1)),
  },
  ready: { paramVersion: int(-1) },
  result: {
    assignmentId: str(64),
    paramVersion: int(0),
    tokenCount: int(0),
    lossSum: finite,
    computeMs: (v) => finite(v) && (v as number) >= 0,
    grads: packed,
  },
  'worker-error': { assignmentId: optional(str(64)), code: str(64), message: str(4096) },
  heartbeat: { sentAt: finite },
  welcome: {
    workerId: str(64),
    manifest: (v) =>
      plain(v) && (v.arithmetic === undefined || (ARITHMETIC_VARIANTS as readonly unknown[]).includes(v.arithmetic)),
    fallback: optional(list(0, 16, str(2048))),
    relayPolicy: optional(relayPolicy),
    relayProtocol: optional(int(1)),
  },
  params: { paramVersion: int(0), deltaFrom: optional(int(0)), tensors: packed },
  assign: { assignmentId: str(64), paramVersion: int(0), step: int(0), index: int(0), microBatch },
  'assign-local': {
    assignmentId: str(64),
    paramVersion: int(0),
    step: int(0),
    index: int(0),
    lr: (v) => finite(v) && (v as number) >= 0,
    microBatches: (v) => Array.isArray(v) && v.length >= 1 && v.length <= 4096 && v.every(microBatch),
  },
  reject: { code: str(64), message: str(4096) },
  done: { reason: str(1024) },
  // the standing pool's messages; a run's coordinator refuses every one (LM_ERR_STATE)
  'pool-welcome': { workerId: str(64), manifest: plain },
  'run-open': { runId: str(64) },
  'run-close': { runId: str(64), reason: str(1024) },
  channel: { runId: str(64), frame: (v) => v instanceof Uint8Array },
  // relays' messages (coordinator/relay/): from a connection that is no relay, refused (LM_ERR_STATE)
  capacity: { microBatches: int(0) },
  'block-sum': { assignmentId: str(64), block: int(0), lossSum: finite, tokenCount: int(0), grads: packed },
  'block-forward': { assignmentId: str(64), index: int(0), grads: packed },
  'block-result': {
    assignmentId: str(64),
    paramVersion: int(0),
    items: list(
      1,
      65536,
      (i) =>
        plain(i) &&
        int(0)(i.index) &&
        str(64)(i.worker) &&
        str(128)(i.name) &&
        finite(i.lossSum) &&
        int(0)(i.tokenCount) &&
        finite(i.norm) &&
        (i.norm as number) >= 0,
    ),
    traffic: optional((v) => plain(v) && int(0)(v.bytesIn) && int(0)(v.bytesOut)),
  },
  'assign-blocks': {
    assignmentId: str(64),
    paramVersion: int(0),
    step: int(0),
    blockSize: int(1),
    blocks: list(1, 4096, (b) => plain(b) && int(0)(b.block) && list(1, 4096, microBatch)(b.microBatches)),
    forward: list(0, 65536, int(0)),
    outlier: optional((v) => plain(v) && finite(v.factor) && optional(finite)(v.reference)),
    probation: optional(int(0)),
    slots: optional(int(1)),
  },
  expel: { worker: str(64), reason: str(1024) },
  redirect: { url: (v) => typeof v === 'string' && v.length <= 2048 && /^wss?:\/\/[^\s]+$/.test(v) },
};
const TYPES = Object.keys(RULES);

const reference = new Packr(CODEC_OPTIONS);

/** What a coordinator answers to `bytes` on a connection in `state` that holds no assignment. */
export function predict(bytes: Uint8Array, state: ConnState): Outcome {
  if (bytes.length === 0) return reject(ErrorCodes.DECODE);
  let raw: unknown;
  try {
    raw = reference.unpack(bytes);
  } catch {
    return reject(ErrorCodes.DECODE);
  }
  if (!plain(raw)) return reject(ErrorCodes.DECODE);
  const type = raw.type;
  if (typeof type !== 'string' || !Object.hasOwn(RULES, type)) return reject(ErrorCodes.UNKNOWN_TYPE);
  for (const [name, ok] of Object.entries(RULES[type])) if (!ok(raw[name])) return reject(ErrorCodes.FIELD);
  switch (type) {
    case 'hello':
      if (state === 'joined') return reject(ErrorCodes.STATE);
      return raw.protocol === PROTOCOL_VERSION
        ? { kind: 'unwanted' }
        : { kind: 'close', code: ErrorCodes.PROTOCOL_VERSION, closeCode: 1002 };
    case 'ready':
      return state === 'joined' ? { kind: 'unwanted' } : reject(ErrorCodes.STATE);
    case 'result':
      return reject(ErrorCodes.ASSIGNMENT);
    // A joined peer holds no assignment, so every worker-error it sends names nothing it holds.
    case 'worker-error':
      return state === 'joined' ? reject(ErrorCodes.ASSIGNMENT) : reject(ErrorCodes.STATE); // before hello: refused
    case 'heartbeat':
      return state === 'joined' ? { kind: 'none' } : reject(ErrorCodes.STATE);
    default:
      return reject(ErrorCodes.STATE); // coordinator → worker messages
  }
}

// ---- raw msgpack building blocks ----------------------------------------------------------------

const concat = (...parts: (Uint8Array | number[])[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
/** A msgpack map whose values are already-encoded bytes. */
function rawMap(entries: [string, Uint8Array][], encoder: Packr): Uint8Array {
  const head = entries.length < 16 ? [0x80 | entries.length] : [0xde, entries.length >> 8, entries.length & 0xff];
  return concat(head, ...entries.flatMap(([k, v]) => [encoder.pack(k), v]));
}

/** Headers that declare up to 2^32 − 1 elements or bytes (array, map, bin, str, ext of each width). */
const HUGE_HEADERS = [
  [0xdc, 0xff, 0xff],
  [0xdd, 0xff, 0xff, 0xff, 0xff],
  [0xdd, 0x80, 0, 0, 0],
  [0xde, 0xff, 0xff],
  [0xdf, 0xff, 0xff, 0xff, 0xff],
  [0xc4, 0xff],
  [0xc5, 0xff, 0xff],
  [0xc6, 0xff, 0xff, 0xff, 0xff],
  [0xc6, 0x80, 0, 0, 0],
  [0xd9, 0xff],
  [0xda, 0xff, 0xff],
  [0xdb, 0xff, 0xff, 0xff, 0xff],
  [0xc7, 0xff],
  [0xc8, 0xff, 0xff],
  [0xc9, 0xff, 0xff, 0xff, 0xff],
  [0xc9, 0x7f, 0xff, 0xff, 0xfc],
];
/**
 * Extension types msgpackr knows
 * (0x72 records, 0x74 typed arrays, 0x69/0x70 structured clone, 0x62 bundled strings…).
 */
const KNOWN_EXT = [0x00, 0x42, 0x62, 0x65, 0x69, 0x70, 0x72, 0x73, 0x74, 0x78, 0xff];
const INTERESTING_BYTES = [
  0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcf,
  0xd3, 0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];
const CHARS = ['a', 'b', 'z', '0', '-', '_', ' ', 'é', '中', '😀', '\u0000'];

/** Weighted categories; the terminal ones (a close instead of a reply) are rare so batches stay long. */
const CATEGORIES: [string, number][] = [
  ['valid', 10],
  ['mutated', 30],
  ['truncated', 8],
  ['bitflip', 10],
  ['byte-splice', 6],
  ['trailing-bytes', 3],
  ['huge-length', 5],
  ['ext-trick', 8],
  ['record', 3],
  ['deep-nesting', 1],
  ['clone-bomb', 0.5],
  ['text', 3],
  ['random-bytes', 8],
  ['token-soup', 4],
  ['wrong-protocol', 0.1],
  ['oversized', 0.05],
  ['text-invalid-utf8', 0.05],
];
const TOTAL_WEIGHT = CATEGORIES.reduce((n, [, w]) => n + w, 0);

export class FrameFactory {
  private readonly encoder = new Packr({ useRecords: false, moreTypes: true });
  private readonly recordEncoder = new Packr({ useRecords: true, moreTypes: true });

  constructor(
    private readonly rng: Rng,
    private readonly adapter: TensorSpec[],
    private readonly maxFrameBytes: number,
    private readonly oversizedBytes: [number, number],
  ) {}

  /** The next frame for a connection in `state`; never one whose outcome is 'unwanted'. */
  next(state: ConnState): Frame {
    for (;;) {
      let category = this.category();
      if (category === 'wrong-protocol' && state !== 'fresh') category = 'valid';
      let frame: Frame | null;
      try {
        frame = this.build(category, state);
      } catch {
        continue; // the generator itself tripped on an odd value (never sent): draw another frame
      }
      if (!frame || frame.outcome.kind === 'unwanted') continue;
      if (frame.outcome.kind !== 'close' && frame.data.length > this.maxFrameBytes) continue; // keep under maxPayload
      return frame;
    }
  }

  private build(category: string, state: ConnState): Frame | null {
    const r = this.rng;
    const binary = (bytes: Uint8Array | null, name = category): Frame | null =>
      bytes ? { category: name, data: bytes, binary: true, outcome: predict(bytes, state) } : null;
    switch (category) {
      case 'valid': {
        const type = this.pick(TYPES);
        return binary(this.pack(this.valid(type)), `valid:${type}`);
      }
      case 'mutated': {
        const message = this.valid(this.pick(TYPES));
        const type = String(message.type);
        for (let i = 1 + r.int(3); i > 0; i--) this.mutate(message);
        return binary(this.pack(message), `mutated:${type}`);
      }
      case 'truncated': {
        const bytes = this.someEncoded();
        return bytes && binary(bytes.subarray(0, r.int(bytes.length)));
      }
      case 'bitflip': {
        const bytes = this.someEncoded();
        if (!bytes) return null;
        for (let i = 1 + r.int(8); i > 0; i--) bytes[r.int(bytes.length)] ^= 1 << r.int(8);
        return binary(bytes);
      }
      case 'byte-splice': {
        const bytes = this.someEncoded();
        if (!bytes) return null;
        const at = r.int(bytes.length);
        const cut = r.int(8);
        const insert = Array.from({ length: r.int(8) }, () =>
          r.next() < 0.5 ? this.pick(INTERESTING_BYTES) : r.int(256),
        );
        return binary(concat(bytes.subarray(0, at), insert, bytes.subarray(Math.min(bytes.length, at + cut))));
      }
      case 'trailing-bytes': {
        const bytes = this.someEncoded();
        return bytes && binary(concat(bytes, r.next() < 0.5 ? (this.someEncoded() ?? [0xc0]) : [r.int(256)]));
      }
      case 'huge-length': {
        const header = [...this.pick(HUGE_HEADERS)];
        if (header[0] >= 0xc7 && header[0] <= 0xc9) header.push(r.next() < 0.5 ? 0x74 : this.pick(KNOWN_EXT));
        const value = concat(header, this.randomBytes(r.int(16)));
        return binary(r.next() < 0.4 ? value : this.withRawField(value));
      }
      case 'ext-trick': {
        const value = this.extTrick();
        return binary(r.next() < 0.3 ? value : this.withRawField(value));
      }
      case 'record': {
        // msgpackr decodes records even with useRecords off; each frame's record ids must not leak into the next
        if (r.next() < 0.3)
          return binary(
            r.next() < 0.5
              ? new Uint8Array([0x40 + r.int(0x40)])
              : this.withRawField(new Uint8Array([0x40 + r.int(0x40)])),
          );
        const message = this.valid(this.pick(TYPES));
        if (r.next() < 0.5) this.mutate(message);
        try {
          return binary(this.recordEncoder.pack(message));
        } catch {
          return null;
        }
      }
      case 'deep-nesting': {
        // far below or far above the depth where the decoder runs out of stack (a few thousand
        // levels); the deep ones are few because a stack overflow costs milliseconds
        const depth = r.next() < 0.8 ? 1 + r.int(500) : 15_000 + r.int(5000);
        const level = r.next() < 0.5 ? [0x91] : [0x81, 0xa1, 0x61];
        const value = concat(...new Array(depth).fill(level), [0xc0]);
        return binary(r.next() < 0.5 ? value : this.withRawField(value));
      }
      case 'clone-bomb':
        return binary(this.cloneBomb());
      case 'text': {
        const text =
          r.next() < 0.5
            ? JSON.stringify(this.valid(this.pick(TYPES)), (_, v) =>
                ArrayBuffer.isView(v) ? Array.from(v as Float32Array) : v,
              )
            : this.text(r.int(300));
        return { category, data: text, binary: false, outcome: reject(ErrorCodes.DECODE) };
      }
      case 'random-bytes':
        return binary(this.randomBytes(1 + r.int(256)));
      case 'token-soup':
        return binary(
          Uint8Array.from({ length: 1 + r.int(64) }, () =>
            r.next() < 0.7 ? this.pick(INTERESTING_BYTES) : r.int(256),
          ),
        );
      case 'wrong-protocol': {
        const protocol = this.pick([0, PROTOCOL_VERSION + 1, 2, 3, 999, 2 ** 31, Number.MAX_SAFE_INTEGER]);
        return binary(this.pack({ ...this.valid('hello'), protocol }));
      }
      case 'oversized': {
        const [min, max] = this.oversizedBytes;
        const bytes = new Uint8Array(min + r.int(max - min));
        bytes.set(this.pack(this.valid('result')) ?? []);
        return { category, data: bytes, binary: true, outcome: { kind: 'close', code: null, closeCode: 1009 } };
      }
      case 'text-invalid-utf8': {
        // a text frame whose bytes are not UTF-8: the WebSocket layer closes with 1007
        const bytes = concat(this.pack(this.valid('heartbeat')) ?? [], [0xff, 0xfe, 0xc0, 0x80]);
        return { category, data: bytes, binary: false, outcome: { kind: 'close', code: null, closeCode: 1007 } };
      }
      default:
        throw new Error(`unknown category ${category}`);
    }
  }

  /** A message that passes the guards (the grads may still hold NaN: finiteness is checked later). */
  valid(type: string): Record<string, unknown> {
    const r = this.rng;
    const maybe = (p: number, fields: Record<string, unknown>) => (r.next() < p ? fields : {});
    switch (type) {
      case 'hello':
        return {
          type,
          protocol: PROTOCOL_VERSION,
          backend: this.pick(['wasm', 'cpu', 'webgpu', 'webgl', this.text(64)]),
          platform: this.pick(['node', 'browser']),
          ...maybe(0.5, { name: this.text(128) }),
          ...maybe(0.3, { token: this.text(512) }),
          ...maybe(0.3, { adapter: this.text(128) }),
          ...maybe(0.3, { slow: r.next() < 0.5 }),
          ...maybe(0.3, { codecs: this.pick([['f32'], ['f32', 'f16', 'bf16', 'int8'], [this.text(16)]]) }),
          ...maybe(0.3, { baseFormats: this.pick([['nf4'], ['f32', 'f16', 'bf16', 'int8', 'nf4'], [this.text(16)]]) }),
          // always with simd128, the fuzzed run's variant: a list without it is refused (LM_ERR_ARITHMETIC)
          ...maybe(0.3, {
            arithmetic: this.pick([['simd128'], ['simd128', 'relaxed-fma'], ['simd128', this.text(32)]]),
          }),
          ...maybe(0.2, { multiRun: 1 + r.int(64) }),
        };
      case 'ready':
        return { type, paramVersion: r.int(100) - 1 };
      case 'result':
        return {
          type,
          assignmentId: this.text(64),
          paramVersion: r.int(1000),
          tokenCount: r.int(100),
          lossSum: this.finite(),
          computeMs: Math.abs(this.finite()),
          grads: this.packed(),
        };
      case 'worker-error':
        return { type, ...maybe(0.5, { assignmentId: this.text(64) }), code: this.text(64), message: this.text(4096) };
      case 'heartbeat':
        return { type, sentAt: this.finite() };
      case 'welcome':
        return { type, workerId: this.text(64), manifest: { runId: this.text(20), adapter: this.adapter } };
      case 'params':
        return { type, paramVersion: r.int(1000), ...maybe(0.5, { deltaFrom: r.int(1000) }), tensors: this.packed() };
      case 'assign':
        return {
          type,
          assignmentId: this.text(64),
          paramVersion: r.int(1000),
          step: r.int(1000),
          index: r.int(8),
          microBatch: this.microBatch(),
        };
      case 'assign-local':
        return {
          type,
          assignmentId: this.text(64),
          paramVersion: r.int(1000),
          step: r.int(1000),
          index: r.int(8),
          lr: Math.abs(this.finite()),
          microBatches: Array.from({ length: 1 + r.int(4) }, () => this.microBatch()),
        };
      case 'reject':
        return { type, code: this.pick(Object.values(ErrorCodes)), message: this.text(4096) };
      case 'done':
        return { type, reason: this.text(1024) };
      case 'pool-welcome':
        return { type, workerId: this.text(64), manifest: { runId: 'pool', adapter: [] } };
      case 'run-open':
        return { type, runId: this.text(64) };
      case 'run-close':
        return { type, runId: this.text(64), reason: this.text(1024) };
      case 'channel':
        return { type, runId: this.text(64), frame: this.randomBytes(r.int(64)) };
      case 'capacity':
        return { type, microBatches: r.int(100) };
      case 'block-sum':
        return {
          type,
          assignmentId: this.text(64),
          block: r.int(8),
          lossSum: this.finite(),
          tokenCount: r.int(100),
          grads: this.packed(),
        };
      case 'block-forward':
        return { type, assignmentId: this.text(64), index: r.int(8), grads: this.packed() };
      case 'block-result':
        return {
          type,
          assignmentId: this.text(64),
          paramVersion: r.int(1000),
          items: [
            {
              index: r.int(8),
              worker: this.text(64),
              name: this.text(128),
              lossSum: this.finite(),
              tokenCount: r.int(100),
              norm: Math.abs(this.finite()),
            },
          ],
        };
      case 'assign-blocks':
        return {
          type,
          assignmentId: this.text(64),
          paramVersion: r.int(1000),
          step: r.int(1000),
          blockSize: 1 + r.int(8),
          blocks: [{ block: r.int(8), microBatches: [this.microBatch()] }],
          forward: [r.int(8)],
          ...maybe(0.5, { outlier: { factor: Math.abs(this.finite()), reference: Math.abs(this.finite()) } }),
          ...maybe(0.5, { probation: r.int(4) }),
        };
      case 'expel':
        return { type, worker: this.text(64), reason: this.text(1024) };
      case 'redirect':
        return { type, url: `ws://127.0.0.1:${1 + r.int(65535)}/ws` };
      default:
        throw new Error(`no generator for ${type}`);
    }
  }

  /** One edit: a field removed, retyped, set to NaN/±Inf or made too long; the type swapped; tensors broken. */
  private mutate(message: Record<string, unknown>): void {
    const r = this.rng;
    const keys = Object.keys(message);
    const key = this.pick(keys);
    switch (r.int(7)) {
      case 0:
        delete message[key];
        break;
      case 1:
        message[key] = this.wild(0);
        break;
      case 2:
        message[key] = this.pick([
          NaN,
          Infinity,
          -Infinity,
          -1,
          0.5,
          -0.5,
          2 ** 53,
          -(2 ** 53),
          1e308,
          Number.MIN_VALUE,
        ]);
        break;
      case 3:
        message[key] = this.text(this.pick([65, 129, 513, 1025, 4097, 5000]));
        break;
      case 4:
        message.type = this.pick([
          ...TYPES,
          '',
          'HELLO',
          'nope',
          '__proto__',
          'constructor',
          'toString',
          'hasOwnProperty',
          7,
          null,
          true,
          [],
          {},
          this.text(100),
        ]);
        break;
      case 5: {
        // an extra field, maybe an own "__proto__"
        const name = r.next() < 0.2 ? '__proto__' : this.text(20);
        Object.defineProperty(message, name, {
          value: this.wild(0),
          enumerable: true,
          configurable: true,
          writable: true,
        });
        break;
      }
      default:
        this.breakTensors(message);
    }
  }

  private microBatch(): Record<string, unknown> {
    const r = this.rng;
    const batch = 1 + r.int(3);
    const time = 1 + r.int(8);
    const n = batch * time;
    return {
      batch,
      time,
      dropoutSeed: r.int(2 ** 31),
      inputIds: Int32Array.from({ length: n }, () => r.int(40)),
      targets: Int32Array.from({ length: n }, () => r.int(40)),
      lossMask: Float32Array.from({ length: n }, () => r.int(2)),
    };
  }

  private breakTensors(message: Record<string, unknown>): void {
    const r = this.rng;
    const mb =
      Array.isArray(message.microBatches) && message.microBatches.length > 0
        ? this.pick(message.microBatches)
        : message.microBatch;
    if (plain(mb)) {
      const key = this.pick(['inputIds', 'targets', 'lossMask', 'batch', 'time']);
      mb[key] =
        r.next() < 0.5
          ? this.wild(0)
          : new (this.pick([Int32Array, Float32Array, Float64Array, Uint8Array]))(r.int(30));
      return;
    }
    const p = plain(message.grads) ? message.grads : plain(message.tensors) ? message.tensors : null;
    if (!p) return;
    switch (r.int(7)) {
      case 0:
        (p.values as Float32Array)?.fill?.(this.pick([NaN, Infinity, -Infinity]));
        break;
      case 1:
        p.values = new (this.pick([Float32Array, Uint16Array, Int8Array]))(r.int(600));
        break; // maybe not the codec's array type
      case 2:
        p.values = new (this.pick([Float64Array, Int32Array, Uint8Array, Uint32Array]))(r.int(40));
        break;
      case 3:
        p[this.pick(['values', 'codec', 'scales', 'blockSize'])] = this.wild(0);
        break;
      case 4:
        p.codec = this.pick(['f32', 'f16', 'bf16', 'int8', 'f8', '', this.text(5000)]);
        break;
      case 5:
        p.blockSize = this.pick([0, 1, 3, 64, 65536, 65537, -1, 0.5]);
        break;
      default:
        p.scales = Float32Array.from({ length: r.int(20) }, () => this.pick([1, NaN, 0]));
    }
  }

  /** A value of any type msgpackr can carry, including typed arrays, dates, sets and nested junk. */
  private wild(depth: number): unknown {
    const r = this.rng;
    switch (r.int(depth > 2 ? 12 : 16)) {
      case 0:
        return undefined;
      case 1:
        return this.pick([null, true, false]);
      case 2:
        return this.pick([
          0,
          -0,
          1,
          -1,
          0.5,
          NaN,
          Infinity,
          -Infinity,
          2 ** 31,
          2 ** 32,
          2 ** 53,
          -(2 ** 53),
          1e308,
          Number.MIN_VALUE,
        ]);
      case 3:
        return this.pick([2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n]);
      case 4:
        return this.text(this.pick([0, 1, 64, 65, 5000]));
      case 5:
        return Float32Array.from({ length: r.int(40) }, () => this.pick([0, 1, NaN, Infinity, -Infinity, r.normal()]));
      case 6:
        return new (this.pick([
          Int32Array,
          Float64Array,
          Uint8Array,
          Int8Array,
          Uint16Array,
          Uint32Array,
          BigInt64Array,
        ]))(r.int(20));
      case 7:
        return this.pick([
          new Date(r.int(2 ** 31) * 1000),
          new Set([1, 'a']),
          /ab+c/gi,
          new Error('boom'),
          new Map([['k', 1]]),
        ]);
      case 8:
        return r.int(1000) - 500;
      case 9:
        return r.normal() * 10 ** r.int(40);
      case 10:
        return this.text(8);
      case 11:
        return nest(r.int(60));
      default:
        return r.next() < 0.5
          ? Array.from({ length: r.int(4) }, () => this.wild(depth + 1))
          : { [this.text(6)]: this.wild(depth + 1), type: this.wild(depth + 1) };
    }
  }

  /**
   * Bytes built by hand around msgpackr's extensions:
   * unknown types, typed arrays with odd lengths or codes, records, bundles, regexps, errors.
   */
  private extTrick(): Uint8Array {
    const r = this.rng;
    const fixext = (type: number, payload: number[]) => {
      const sizes: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
      return sizes[payload.length]
        ? concat([sizes[payload.length], type], payload)
        : concat([0xc7, payload.length, type], payload);
    };
    const bytes = (n: number) => Array.from(this.randomBytes(n));
    switch (r.int(10)) {
      case 0: {
        // an extension type msgpackr does not know
        let type = r.int(256);
        while (KNOWN_EXT.includes(type)) type = r.int(256);
        return fixext(type, bytes(this.pick([1, 2, 4, 8, 16, r.int(40)])));
      }
      case 1:
        // typed array: element code, then a payload of any length
        return fixext(0x74, [r.next() < 0.7 ? 7 : r.int(20), ...bytes(r.int(34))]);
      case 2: {
        // a typed array ext claiming a length beyond the frame
        const n = this.pick([0xffff, 0x7fffffff, 0xffffffff]);
        return concat([0xc9, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff, 0x74, 7], bytes(r.int(16)));
      }
      case 3:
        return fixext(0xff, bytes(this.pick([4, 8, 12, 3, 5, 0]))); // timestamps of valid and invalid sizes
      case 4: {
        // a record definition (ext 0x72) with keys and values of any shape
        const keys = r.next() < 0.8 ? ['type', this.pick(['sentAt', 'paramVersion', 'protocol'])] : [1, null, []];
        return concat(
          [0xd4, 0x72, 0x40 + r.int(0x40)],
          this.encoder.pack(keys),
          this.encoder.pack(this.pick(['heartbeat', 'ready', 'hello', 1])),
          this.encoder.pack(this.wild(1)),
        );
      }
      case 5:
        return concat([0xd6, 0x62], bytes(4), this.randomBytes(r.int(20))); // bundled strings with a random offset
      case 6:
        // structured-clone id / pointer
        return concat(fixext(this.pick([0x69, 0x70]), bytes(4)), this.encoder.pack(this.wild(1)));
      case 7: {
        // a RegExp, sometimes an invalid or very long pattern
        const pattern = this.pick(['a+', '(', '[', '(a+)+$', '('.repeat(3000), '\\', this.text(100)]);
        return concat([0xd4, 0x78, 0x00], this.encoder.pack([pattern, this.pick(['g', 'gimsuy', 'zz', ''])]));
      }
      case 8:
        return concat(
          [0xd4, 0x65, 0x00],
          this.encoder.pack(
            r.next() < 0.7
              ? [
                  this.pick(['Error', 'TypeError', 'AggregateError', 'Nope', 'constructor']),
                  this.text(20),
                  this.wild(1),
                ]
              : this.wild(1),
          ),
        );
      default:
        return concat(
          fixext(this.pick([0x42, 0x73, 0x00]), bytes(this.pick([1, 2, 4, 8]))),
          r.next() < 0.5 ? this.encoder.pack(this.wild(1)) : [],
        );
    }
  }

  /**
   * A chain of structured-clone ids and pointers whose JSON view doubles tenfold per level: a
   * decoder that builds it and then describes it spends seconds and gigabytes on ~1.4 KB.
   */
  private cloneBomb(): Uint8Array {
    const levels = 4 + this.rng.int(3);
    const id = (n: number) => [0xd6, 0x69, 0, 0, 0, n];
    const ptr = (n: number) => [0xd6, 0x70, 0, 0, 0, n];
    const parts: number[] = [0x90 + levels + 1, ...id(0), 0xda, 0x03, 0xe8, ...new Array(1000).fill(0x61)];
    for (let l = 1; l <= levels; l++)
      parts.push(...id(l), 0x9a, ...Array.from({ length: 10 }, () => ptr(l - 1)).flat());
    return Uint8Array.from([...parts, 0xc0]); // the trailing byte makes msgpackr print the value in its error
  }

  /** A valid message with one field's encoded value replaced by `value`. */
  private withRawField(value: Uint8Array): Uint8Array | null {
    const message = this.valid(this.pick(TYPES));
    const target = this.pick(Object.keys(message));
    try {
      return rawMap(
        Object.entries(message).map(([k, v]) => [k, k === target ? value : this.encoder.pack(v)]),
        this.encoder,
      );
    } catch {
      return null;
    }
  }

  private someEncoded(): Uint8Array | null {
    const message = this.valid(this.pick(TYPES));
    if (this.rng.next() < 0.4) this.mutate(message);
    const bytes = this.pack(message);
    return bytes && new Uint8Array(bytes); // a copy: callers edit it in place
  }

  private pack(value: unknown): Uint8Array | null {
    try {
      return this.encoder.pack(value);
    } catch {
      return null; // a value msgpackr will not encode (e.g. an invalid Date)
    }
  }

  /** The adapter's values in a random codec (the run's is f32; others are LM_ERR_CODEC once a result is checked). */
  private packed(): Record<string, unknown> {
    const n = this.adapter.reduce((k, t) => k + t.shape[0] * t.shape[1], 0);
    const data = Float32Array.from({ length: n }, () => this.rng.next() - 0.5);
    if (this.rng.next() < 0.2) data[this.rng.int(data.length)] = this.pick([NaN, Infinity, -Infinity]);
    const spec = this.pick<CodecSpec>([
      { name: 'f32' },
      { name: 'f32' },
      { name: 'f16' },
      { name: 'bf16' },
      { name: 'int8', blockSize: 1 + this.rng.int(128) },
    ]);
    return { ...encodeFloats(data, spec) };
  }

  private finite(): number {
    return this.pick([0, -0, 1, 1e308, -1e-300, 2 ** 53 - 1, this.rng.normal() * 1e3, Date.now()]);
  }

  /**
   * A string of at most `max` UTF-16 units (often exactly `max`):
   * a random head with multi-byte and astral characters, ASCII padding.
   */
  text(max: number): string {
    const target = this.rng.next() < 0.3 ? max : this.rng.int(Math.min(max, 24) + 1);
    let head = '';
    for (let i = this.rng.int(Math.min(target, 24) + 1); i > 0; i--) head += this.pick(CHARS);
    if (head.length > target) head = head.slice(0, target).replace(/[\ud800-\udbff]$/, '');
    return head + 'x'.repeat(target - head.length);
  }

  private randomBytes(n: number): Uint8Array {
    return Uint8Array.from({ length: n }, () => this.rng.int(256));
  }

  private category(): string {
    let x = this.rng.next() * TOTAL_WEIGHT;
    for (const [name, weight] of CATEGORIES) if ((x -= weight) < 0) return name;
    return CATEGORIES[0][0];
  }

  pick<T>(items: readonly T[]): T {
    return items[this.rng.int(items.length)];
  }
}

function nest(depth: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/**
 * A result for an assignment the connection really holds, broken in one way whose code is known:
 * a stale version (LM_ERR_STALE), a wrong token count (LM_ERR_FIELD), too few or too many values
 * (LM_ERR_SHAPE), another codec than the run's f32 (LM_ERR_CODEC), NaN or ±Inf inside a gradient
 * (LM_ERR_NON_FINITE).
 */
export function badResult(
  rng: Rng,
  assign: { assignmentId: string; paramVersion: number },
  adapter: TensorSpec[],
  tokenCount: number,
): { message: Record<string, unknown>; code: ErrorCode; category: string } {
  const n = adapter.reduce((k, t) => k + t.shape[0] * t.shape[1], 0);
  const values = Float32Array.from({ length: n }, () => rng.normal());
  const message: Record<string, unknown> = {
    type: 'result',
    assignmentId: assign.assignmentId,
    paramVersion: assign.paramVersion,
    tokenCount,
    lossSum: 1,
    computeMs: 1,
    grads: { codec: 'f32', values },
  };
  switch (rng.int(7)) {
    case 0:
      message.paramVersion =
        assign.paramVersion > 0 && rng.next() < 0.5 ? assign.paramVersion - 1 : assign.paramVersion + 1 + rng.int(3);
      return { message, code: ErrorCodes.STALE, category: 'held:stale' };
    case 1:
      message.tokenCount = tokenCount + 1 + rng.int(5);
      return { message, code: ErrorCodes.FIELD, category: 'held:token-count' };
    case 2:
      message.grads = { codec: 'f32', values: values.subarray(0, n - 1 - rng.int(Math.min(n - 1, 50))) };
      return { message, code: ErrorCodes.SHAPE, category: 'held:too-few-values' };
    case 3:
      message.grads = { codec: 'f32', values: new Float32Array(n + 1 + rng.int(50)) };
      return { message, code: ErrorCodes.SHAPE, category: 'held:too-many-values' };
    case 4: {
      const spec: CodecSpec = [{ name: 'f16' }, { name: 'bf16' }, { name: 'int8', blockSize: 64 }][
        rng.int(3)
      ] as CodecSpec;
      message.grads = encodeFloats(values, spec);
      return { message, code: ErrorCodes.CODEC, category: 'held:wrong-codec' };
    }
    default:
      values[rng.int(n)] = [NaN, Infinity, -Infinity][rng.int(3)];
      return { message, code: ErrorCodes.NON_FINITE, category: 'held:non-finite' };
  }
}
