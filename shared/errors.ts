/**
 * Every error loramesh raises on purpose carries a stable code. Tests assert on the code, logs
 * print it, and the protocol sends it to the peer that caused it. Messages are for people; codes
 * are for programs.
 */
export const ErrorCodes = {
  /** a config field or CLI flag has a bad value */
  CONFIG: 'LM_ERR_CONFIG',
  /** bytes that are not a decodable frame (bad msgpack, empty, not binary) */
  DECODE: 'LM_ERR_DECODE',
  /** a frame whose `type` is not a known message */
  UNKNOWN_TYPE: 'LM_ERR_UNKNOWN_TYPE',
  /** a message field is missing or has the wrong type */
  FIELD: 'LM_ERR_FIELD',
  /** a tensor's name, shape or length does not match the run manifest */
  SHAPE: 'LM_ERR_SHAPE',
  /** a tensor or number that must be finite is NaN or ±Inf */
  NON_FINITE: 'LM_ERR_NON_FINITE',
  /** the peer speaks another protocol version */
  PROTOCOL_VERSION: 'LM_ERR_PROTOCOL_VERSION',
  /** missing or wrong join token */
  AUTH: 'LM_ERR_AUTH',
  /** a result for an assignment this worker does not hold */
  ASSIGNMENT: 'LM_ERR_ASSIGNMENT',
  /** a result computed against an older parameter version */
  STALE: 'LM_ERR_STALE',
  /** a message that is not valid in the current state (e.g. a result before hello) */
  STATE: 'LM_ERR_STATE',
  /** a safetensors file that is malformed or truncated */
  SAFETENSORS: 'LM_ERR_SAFETENSORS',
  /** a base-model file whose sha256 does not match the manifest */
  HASH: 'LM_ERR_HASH',
  /** a model file or tensor that is missing or does not fit the config */
  MODEL: 'LM_ERR_MODEL',
  /** the model (and a micro-batch of it) does not fit the memory this process can use */
  MEMORY: 'LM_ERR_MEMORY',
  /** a dataset record that cannot be used */
  DATA: 'LM_ERR_DATA',
  /** the tfjs backend asked for cannot be loaded */
  BACKEND: 'LM_ERR_BACKEND',
  /** a browser page from an origin not on the allow-list */
  ORIGIN: 'LM_ERR_ORIGIN',
  /** a peer sending messages faster than the per-connection limit */
  RATE: 'LM_ERR_RATE',
  /** a connection closed for repeated offences */
  QUARANTINED: 'LM_ERR_QUARANTINED',
  /** a result that disagrees with the trusted recomputation of the same micro-batch */
  SPOT_CHECK: 'LM_ERR_SPOT_CHECK',
  /** a float payload in a codec other than the run's, or a peer lacking the run's codec or base format */
  CODEC: 'LM_ERR_CODEC',
  /** a peer (or this process) that cannot compute with the run's arithmetic variant (shared/arithmetic.ts) */
  ARITHMETIC: 'LM_ERR_ARITHMETIC',
  /** a server limit reached (connections, handshake time, send buffer) */
  LIMIT: 'LM_ERR_LIMIT',
  /** a run folder already in use by another live process */
  LOCKED: 'LM_ERR_LOCKED',
  /** a result whose size (gradient norm) is far outside its step's and that a trusted recomputation refutes */
  OUTLIER: 'LM_ERR_OUTLIER',
  /** a pool tenant's quota (concurrent runs, steps, upload bytes) would be exceeded */
  QUOTA: 'LM_ERR_QUOTA',
  /** no such run, upload or tenant for this caller (another tenant's look the same as none) */
  NOT_FOUND: 'LM_ERR_NOT_FOUND',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/**
 * The WebSocket close code a coordinator closes a peer's socket with, for the error that caused it
 * (RFC 6455 §7.4.1): 1002 protocol error for another protocol version, 1008 policy violation for every
 * other refusal. The only place that decides it; workers read it back (shared/protocol/refusal.ts).
 * An oversized frame gets 1009 from ws's maxPayload itself, before any loramesh code sees it.
 */
export function closeCodeFor(code: ErrorCode): 1002 | 1008 {
  return code === ErrorCodes.PROTOCOL_VERSION ? 1002 : 1008;
}

export class LoraMeshError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = 'LoraMeshError';
    this.code = code;
  }
}

export function fail(code: ErrorCode, message: string): never {
  throw new LoraMeshError(code, message);
}

/** Describes a value for an error message without dumping huge arrays. */
export function describe(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 60) + '…' : value);
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as unknown as ArrayLike<number>).length})`;
  if (Array.isArray(value)) return `array(${value.length})`;
  if (typeof value === 'object' && value !== null) return 'object';
  return String(value);
}
