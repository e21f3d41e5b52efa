/**
 * The wire protocol as a tagged union (`type`), with one runtime guard per message. Everything a
 * peer sends passes parseMessage before any code looks at it; a bad field fails with a stable
 * code naming the field, the value and what was expected.
 */
import { ARITHMETIC_VARIANTS, type ArithmeticVariant } from '../arithmetic.ts';
import type { LoraConfig, ModelConfig } from '../config.ts';
import { describe, ErrorCodes, fail, type ErrorCode } from '../errors.ts';
import { adapterParameterCount } from '../lora/adapter.ts';
import { type BaseFormat, describeBaseSpec, type ResolvedBaseSpec } from '../quant/formats.ts';
import type { MicroBatch } from '../train/micro-batch.ts';
import { sumSquares } from '../train/reduce-kernel.ts';
import { CODECS, decodeFloats, MAX_BLOCK, type CodecName, type CodecSpec, type PackedFloats } from './wire-codec.ts';

/** 2: float payloads are one flat vector in manifest order, in the run's wire codec */
export const PROTOCOL_VERSION = 2;

/**
 * The protocol between a relay and its parent, on top of PROTOCOL_VERSION (which workers see and which did not
 * change): 2 = the answer in parts (block-sum, block-forward, then block-result) and the run's policy in the
 * welcome. A relay says it in its hello and the parent in its welcome; either side refuses another number
 * (LM_ERR_PROTOCOL_VERSION), and a side that says none predates 2. Relays and their parents upgrade together.
 */
export const RELAY_PROTOCOL = 2;

export interface BaseFile {
  /** file name inside the model directory, e.g. model.safetensors */
  name: string;
  sha256: string;
  bytes: number;
}

export interface RunManifest {
  runId: string;
  /**
   * files: what a worker fetches by sha256; with baseFormat the weights are one compact base file
   * (shared/quant/compact-file.ts) in that format, else the checkpoint's own *.safetensors
   */
  model: { config: ModelConfig; files: BaseFile[]; baseFormat?: ResolvedBaseSpec };
  lora: LoraConfig;
  /** the adapter tensors in wire order: every float payload is these, concatenated */
  adapter: { name: string; shape: [number, number] }[];
  /** codec per direction: up = results, down = parameters (lossy down codecs send deltas) */
  wire: { up: CodecSpec; down: CodecSpec };
  /** local-steps mode (DiLoCo): jobs of `steps` micro-batches with inner AdamW; absent = synchronous */
  local?: LocalStepsManifest;
  /** the wasm kernels' arithmetic every worker computes with (shared/arithmetic.ts); absent = simd128 */
  arithmetic?: ArithmeticVariant;
}

/** The weight files a worker loads: the manifest's *.safetensors; with a baseFormat exactly one, the compact base. */
export function weightFiles(model: RunManifest['model']): BaseFile[] {
  const files = model.files.filter((f) => f.name.endsWith('.safetensors'));
  if (model.baseFormat && files.length !== 1)
    fail(
      ErrorCodes.MODEL,
      `a ${describeBaseSpec(model.baseFormat)} base is one compact file; the manifest lists ${files.length}`,
    );
  return files;
}

/** The inner optimizer of a local job (lr comes with each assignment). */
export interface LocalStepsManifest {
  steps: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  clipNorm: number;
}

/** A micro-batch travels exactly as the trainer builds it (typed arrays stay typed). */
export type WireMicroBatch = MicroBatch;

export type TensorMap = Record<string, Float32Array>;
export type { PackedFloats } from './wire-codec.ts';

// worker → coordinator
export interface Hello {
  type: 'hello';
  protocol: number;
  token?: string;
  name?: string;
  backend: string;
  platform: 'node' | 'browser';
  /** the device behind the backend, e.g. a WebGPU adapter ("SwiftShader", "NVIDIA H200") */
  adapter?: string;
  /** the worker fell back to a slow backend (cpu, software WebGPU) */
  slow?: boolean;
  /** wire codecs the worker can encode and decode (absent: f32 only) */
  codecs?: CodecName[];
  /** compact base formats the worker can load (absent: none, only a float32 checkpoint) */
  baseFormats?: BaseFormat[];
  /** bytes the worker's tensors can use at most (wasm: its heap's limit); absent: not known */
  memoryLimit?: number;
  /**
   * arithmetic variants its wasm kernels can run (shared/arithmetic.ts; absent: simd128 only). Names this
   * coordinator does not know are kept, like codecs: a newer worker may offer more.
   */
  arithmetic?: ArithmeticVariant[];
  /** in a pool: how many runs' micro-batches it takes at once, to compute in one pass (absent: 1) */
  multiRun?: number;
  /** a relay (coordinator/relay/): takes whole reduction blocks for its own workers; needs the relay token */
  relay?: boolean;
  /** a relay's RELAY_PROTOCOL (absent: from before relay protocol 2) */
  relayProtocol?: number;
}
/** base model loaded; paramVersion is the version held (-1: none yet) */
export interface Ready {
  type: 'ready';
  paramVersion: number;
}
/** grads: summed gradients of the micro-batch (or a local job's start − end), flat in manifest order */
export interface Result {
  type: 'result';
  assignmentId: string;
  paramVersion: number;
  tokenCount: number;
  lossSum: number;
  computeMs: number;
  grads: PackedFloats;
}
export interface WorkerError {
  type: 'worker-error';
  assignmentId?: string;
  code: string;
  message: string;
}
export interface Heartbeat {
  type: 'heartbeat';
  sentAt: number;
}
// coordinator → worker
export interface Welcome {
  type: 'welcome';
  workerId: string;
  manifest: RunManifest;
  /**
   * recompute each block's forward in the backward pass (the same results, less memory): the run
   * asks it of every worker, or the coordinator of one whose memory limit needs it
   */
  recompute?: boolean;
  /** where to connect when this coordinator cannot be reached (a relay's: its parent, other relays), in order */
  fallback?: string[];
  /** to a relay (or ingestion thread): the run's policy, which it applies to its own workers */
  relayPolicy?: RelayPolicy;
  /** to a relay: the parent's RELAY_PROTOCOL */
  relayProtocol?: number;
}
/** What a worker must hold for a run on one kernel backend (coordinator/engine/worker-policy.ts memoryVerdict). */
export interface MemoryNeeds {
  /** bytes of the plan without the runtime's own */
  bytes: number;
  /** the same, recomputing activations in the backward pass */
  recomputing: number;
  /** the recomputing plan in words, for a refusal */
  summary: string;
  /** the compact base formats that need less, widest first, with their bytes */
  smaller: { format: string; bytes: number }[];
}
/**
 * The run's worker policy, sent to a relay in its welcome: its workers meet the limits, deadlines and memory check
 * they would meet at the root.
 */
export interface RelayPolicy {
  security?: {
    maxMessagesPerSecond: number;
    maxRejects: number;
    handshakeTimeoutMs: number;
    maxBufferedBytes?: number;
  };
  schedule?: { deadlineFactor: number; deadlineSlackMs: number; unknownExpectedMs: number };
  /** every worker recomputes activations (the run asks it) */
  recompute?: boolean;
  /** per kernel backend (wasm, webgpu, tensorflow, cpu) */
  memory?: Record<string, MemoryNeeds>;
}
/** The adapter at paramVersion, flat in manifest order; with deltaFrom it is the change since that version. */
export interface Params {
  type: 'params';
  paramVersion: number;
  tensors: PackedFloats;
  deltaFrom?: number;
}
export interface Assign {
  type: 'assign';
  assignmentId: string;
  paramVersion: number;
  step: number;
  index: number;
  microBatch: WireMicroBatch;
}
/** Local-steps mode: run one inner AdamW step per micro-batch from paramVersion at this lr, answer start − end. */
export interface AssignLocal {
  type: 'assign-local';
  assignmentId: string;
  paramVersion: number;
  step: number;
  index: number;
  lr: number;
  microBatches: WireMicroBatch[];
}
export interface Reject {
  type: 'reject';
  code: ErrorCode;
  message: string;
  assignmentId?: string;
}
export interface Done {
  type: 'done';
  reason: string;
}

// The standing pool (coordinator/pool/): one connection serves several runs. The pool's welcome names only
// the base; each run is a channel on the connection, speaking the single-run protocol above inside it.

/** A pool took the worker: load this base (manifest.adapter is empty: no run yet) and answer ready. */
export interface PoolWelcome {
  type: 'pool-welcome';
  workerId: string;
  manifest: RunManifest;
}
/** The pool opens run `runId` on this connection: the worker answers with that run's hello, in a channel. */
export interface RunOpen {
  type: 'run-open';
  runId: string;
}
/** Run `runId` is over on this connection (finished, cancelled, or the worker declined or was refused). */
export interface RunClose {
  type: 'run-close';
  runId: string;
  reason: string;
}
/** One frame of run `runId`'s own protocol (hello, welcome, params, assign, result…), either way. */
export interface Channel {
  type: 'channel';
  runId: string;
  frame: Uint8Array;
}

// Relays (coordinator/relay/, docs/SCALE.md): a relay is a worker to its parent and a coordinator to its own
// workers. The parent hands it whole reduction blocks; it answers with each block's in-order partial sum.

/** relay → parent: how many micro-batches the relay's ready workers can compute at once now (0: none) */
export interface Capacity {
  type: 'capacity';
  microBatches: number;
}
/** parent → relay: whole reduction blocks of one step (`blockSize` micro-batch indices each, the last maybe fewer) */
export interface AssignBlocks {
  type: 'assign-blocks';
  assignmentId: string;
  paramVersion: number;
  step: number;
  blockSize: number;
  blocks: { block: number; microBatches: WireMicroBatch[] }[];
  /** micro-batch indices (of the step) whose results the relay sends up whole: the parent's secret spot checks */
  forward: number[];
  /**
   * the parent's outlier screen, run by the relay: also send up whole any result whose norm exceeds factor × the
   * reference (absent: the parent has none yet, so the block's own, as coordinator/engine/defence.ts's outliers())
   */
  outlier?: { factor: number; reference?: number };
  /** also send up whole the first this-many results of each of the relay's workers (the parent's probation) */
  probation?: number;
  /** the step's micro-batches at the parent: the relay bounds each result's norm for that sum, as the parent does */
  slots?: number;
}
/** One micro-batch of a block-result: who computed it (the relay's worker id and name) and its figures. */
export interface BlockItem {
  index: number;
  worker: string;
  name: string;
  lossSum: number;
  tokenCount: number;
  norm: number;
}
/**
 * relay → parent, one per block it holds, before the block-result: the in-order sum of the block's results
 * (undivided, f32). Each is its own frame, so no relay frame is larger than one result, whatever the block count.
 */
export interface BlockSum {
  type: 'block-sum';
  assignmentId: string;
  block: number;
  lossSum: number;
  tokenCount: number;
  grads: PackedFloats;
}
/**
 * relay → parent, before the block-result: one result sent up whole (asked for in `forward`, on probation or over
 * the outlier bound), as f32, in its own frame
 */
export interface BlockForward {
  type: 'block-forward';
  assignmentId: string;
  index: number;
  grads: PackedFloats;
}
/**
 * relay → parent, after its block-sums and block-forwards: the assignment is answered; who computed each
 * micro-batch and its figures, which the parent checks against the sums
 */
export interface BlockResult {
  type: 'block-result';
  assignmentId: string;
  paramVersion: number;
  items: BlockItem[];
  /** the relay's traffic with its workers since its previous block-result (bytes with frame headers) */
  traffic?: { bytesIn: number; bytesOut: number };
}
/**
 * coordinator → worker, in answer to its hello: connect to `url` instead (one of the coordinator's ingestion
 * threads, docs/SCALE.md); the coordinator closes this connection
 */
export interface Redirect {
  type: 'redirect';
  url: string;
}
/** parent → relay: one of the relay's workers failed the parent's check; close it and refuse its name */
export interface Expel {
  type: 'expel';
  worker: string;
  reason: string;
}

export type WorkerMessage =
  | Hello
  | Ready
  | Result
  | WorkerError
  | Heartbeat
  | Channel
  | Capacity
  | BlockSum
  | BlockForward
  | BlockResult;
export type CoordinatorMessage =
  | Welcome
  | Params
  | Assign
  | AssignLocal
  | Reject
  | Done
  | PoolWelcome
  | RunOpen
  | RunClose
  | Channel
  | AssignBlocks
  | Expel
  | Redirect;
export type Message = WorkerMessage | CoordinatorMessage;

type Guard = (m: Record<string, unknown>) => void;

// Plain objects only: msgpackr also decodes to Date, Set, RegExp, Error, ArrayBuffer and its 0xC1
// marker, which are not messages (a frame of them is LM_ERR_DECODE, a field of them LM_ERR_FIELD).
const isObject = (v: unknown): v is Record<string, unknown> => {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

function field(
  m: Record<string, unknown>,
  name: string,
  ok: (v: unknown) => boolean,
  expected: string,
  optional = false,
): void {
  const v = m[name];
  if (v === undefined && optional) return;
  if (!ok(v)) fail(ErrorCodes.FIELD, `${m.type}.${name} should be ${expected}, got ${describe(v)}`);
}

const isString = (max: number) => (v: unknown) => typeof v === 'string' && v.length <= max;
const isInt = (min: number) => (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
const isFiniteNumber = (v: unknown) => typeof v === 'number' && Number.isFinite(v);

const PACKED_ARRAY: Record<CodecName, { type: new (n: number) => ArrayBufferView; name: string }> = {
  f32: { type: Float32Array, name: 'Float32Array' },
  f16: { type: Uint16Array, name: 'Uint16Array' },
  bf16: { type: Uint16Array, name: 'Uint16Array' },
  int8: { type: Int8Array, name: 'Int8Array' },
};

function packedFloats(m: Record<string, unknown>, name: string): void {
  const v = m[name];
  if (!isObject(v))
    fail(ErrorCodes.FIELD, `${m.type}.${name} should be packed floats {codec, values}, got ${describe(v)}`);
  const where = { ...v, type: `${m.type}.${name}` };
  field(
    where,
    'codec',
    (c) => typeof c === 'string' && (CODECS as readonly string[]).includes(c),
    `one of ${CODECS.join(', ')}`,
  );
  const array = PACKED_ARRAY[v.codec as CodecName];
  field(where, 'values', (x) => x instanceof array.type, `a ${array.name} for codec ${v.codec}`);
  if (v.codec !== 'int8') return;
  field(where, 'blockSize', isInt(1), 'an integer ≥ 1');
  field(where, 'blockSize', (b) => (b as number) <= MAX_BLOCK, `at most ${MAX_BLOCK}`);
  const blocks = Math.ceil((v.values as Int8Array).length / (v.blockSize as number));
  field(
    where,
    'scales',
    (x) => x instanceof Float32Array && x.length === blocks,
    `a Float32Array of ${blocks} block scales`,
  );
}

function microBatchAt(mb: unknown, where: string): void {
  if (!isObject(mb)) fail(ErrorCodes.FIELD, `${where} should be an object, got ${describe(mb)}`);
  const at = { ...mb, type: where };
  field(at, 'batch', isInt(1), 'an integer ≥ 1');
  field(at, 'time', isInt(1), 'an integer ≥ 1');
  field(at, 'dropoutSeed', isInt(0), 'an integer ≥ 0');
  const n = (mb.batch as number) * (mb.time as number);
  field(at, 'inputIds', (v) => v instanceof Int32Array && v.length === n, `an Int32Array of batch·time = ${n}`);
  field(at, 'targets', (v) => v instanceof Int32Array && v.length === n, `an Int32Array of batch·time = ${n}`);
  field(at, 'lossMask', (v) => v instanceof Float32Array && v.length === n, `a Float32Array of batch·time = ${n}`);
}

const microBatch = (m: Record<string, unknown>) => microBatchAt(m.microBatch, 'assign.microBatch');

/** > 0, Infinity allowed (maxRejects, maxMessagesPerSecond: unlimited) */
const isPositive = (v: unknown) => typeof v === 'number' && v > 0;
const isPositiveInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
const isNonNegative = (v: unknown) => typeof v === 'number' && v >= 0 && Number.isFinite(v);
/** A RelayPolicy's shape: numbers where numbers go (maxRejects may be Infinity), at most 8 backends. */
function isRelayPolicy(v: unknown): boolean {
  if (!isObject(v)) return false;
  const { security: sec, schedule: sch, recompute, memory } = v;
  if (
    sec !== undefined &&
    !(
      isObject(sec) &&
      isPositive(sec.maxMessagesPerSecond) &&
      isPositive(sec.maxRejects) &&
      isPositiveInt(sec.handshakeTimeoutMs) &&
      (sec.maxBufferedBytes === undefined || isPositiveInt(sec.maxBufferedBytes))
    )
  )
    return false;
  if (
    sch !== undefined &&
    !(
      isObject(sch) &&
      isNonNegative(sch.deadlineFactor) &&
      isNonNegative(sch.deadlineSlackMs) &&
      isNonNegative(sch.unknownExpectedMs)
    )
  )
    return false;
  if (recompute !== undefined && typeof recompute !== 'boolean') return false;
  if (memory === undefined) return true;
  if (!isObject(memory) || Object.keys(memory).length > 8) return false;
  return Object.values(memory).every(
    (n) =>
      isObject(n) &&
      isNonNegative(n.bytes) &&
      isNonNegative(n.recomputing) &&
      typeof n.summary === 'string' &&
      n.summary.length <= 16384 &&
      Array.isArray(n.smaller) &&
      n.smaller.length <= 8 &&
      n.smaller.every(
        (o) => isObject(o) && typeof o.format === 'string' && o.format.length <= 16 && isNonNegative(o.bytes),
      ),
  );
}

const guards: Record<Message['type'], Guard> = {
  hello: (m) => {
    field(m, 'protocol', isInt(0), 'an integer');
    field(m, 'token', isString(512), 'a string', true);
    field(m, 'name', isString(128), 'a string of ≤ 128 chars', true);
    field(m, 'backend', isString(64), 'a backend name');
    field(m, 'platform', (v) => v === 'node' || v === 'browser', '"node" or "browser"');
    field(m, 'adapter', isString(128), 'a string of ≤ 128 chars', true);
    field(m, 'slow', (v) => typeof v === 'boolean', 'a boolean', true);
    field(
      m,
      'codecs',
      (v) => Array.isArray(v) && v.length <= 16 && v.every((c) => typeof c === 'string' && c.length <= 16),
      'a list of codec names',
      true,
    );
    field(
      m,
      'baseFormats',
      (v) => Array.isArray(v) && v.length <= 16 && v.every((c) => typeof c === 'string' && c.length <= 16),
      'a list of base format names',
      true,
    );
    field(m, 'memoryLimit', (v) => isFiniteNumber(v) && (v as number) > 0, 'a number of bytes > 0', true);
    field(
      m,
      'arithmetic',
      (v) => Array.isArray(v) && v.length <= 8 && v.every((c) => typeof c === 'string' && c.length <= 32),
      'a list of arithmetic variant names',
      true,
    );
    field(m, 'multiRun', (v) => isInt(1)(v) && (v as number) <= 64, 'an integer from 1 to 64', true);
    field(m, 'relay', (v) => typeof v === 'boolean', 'a boolean', true);
    field(m, 'relayProtocol', isInt(1), 'an integer ≥ 1', true);
  },
  ready: (m) => field(m, 'paramVersion', isInt(-1), 'an integer ≥ -1 (-1: no parameters yet)'),
  result: (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'tokenCount', isInt(0), 'an integer ≥ 0');
    field(m, 'lossSum', isFiniteNumber, 'a finite number');
    field(m, 'computeMs', (v) => isFiniteNumber(v) && (v as number) >= 0, 'a number ≥ 0');
    packedFloats(m, 'grads');
  },
  'worker-error': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id', true);
    field(m, 'code', isString(64), 'an error code');
    field(m, 'message', isString(4096), 'a message');
  },
  heartbeat: (m) => field(m, 'sentAt', isFiniteNumber, 'a timestamp'),
  welcome: (m) => {
    field(m, 'workerId', isString(64), 'a worker id');
    field(m, 'manifest', isObject, 'a run manifest');
    field(
      { ...(m.manifest as Record<string, unknown>), type: 'welcome.manifest' },
      'arithmetic',
      (v) => (ARITHMETIC_VARIANTS as readonly unknown[]).includes(v),
      `one of ${ARITHMETIC_VARIANTS.join(', ')}`,
      true,
    );
    field(m, 'recompute', (v) => typeof v === 'boolean', 'true or false', true);
    field(
      m,
      'fallback',
      (v) => Array.isArray(v) && v.length <= 16 && v.every((u) => typeof u === 'string' && u.length <= 2048),
      'a list of at most 16 URLs',
      true,
    );
    field(m, 'relayPolicy', isRelayPolicy, 'a relay policy {security?, schedule?, recompute?, memory?}', true);
    field(m, 'relayProtocol', isInt(1), 'an integer ≥ 1', true);
  },
  params: (m) => {
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'deltaFrom', isInt(0), 'an integer ≥ 0', true);
    packedFloats(m, 'tensors');
  },
  assign: (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'step', isInt(0), 'an integer ≥ 0');
    field(m, 'index', isInt(0), 'an integer ≥ 0');
    microBatch(m);
  },
  'assign-local': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'step', isInt(0), 'an integer ≥ 0');
    field(m, 'index', isInt(0), 'an integer ≥ 0');
    field(m, 'lr', (v) => isFiniteNumber(v) && (v as number) >= 0, 'a learning rate ≥ 0');
    field(
      m,
      'microBatches',
      (v) => Array.isArray(v) && v.length >= 1 && v.length <= 4096,
      'a list of 1 to 4096 micro-batches',
    );
    (m.microBatches as unknown[]).forEach((mb, i) => microBatchAt(mb, `assign-local.microBatches[${i}]`));
  },
  reject: (m) => {
    field(m, 'code', isString(64), 'an error code');
    field(m, 'message', isString(4096), 'a message');
  },
  done: (m) => field(m, 'reason', isString(1024), 'a reason'),
  'pool-welcome': (m) => {
    field(m, 'workerId', isString(64), 'a worker id');
    field(m, 'manifest', isObject, 'the base manifest');
  },
  'run-open': (m) => field(m, 'runId', isString(64), 'a run id'),
  'run-close': (m) => {
    field(m, 'runId', isString(64), 'a run id');
    field(m, 'reason', isString(1024), 'a reason');
  },
  channel: (m) => {
    field(m, 'runId', isString(64), 'a run id');
    field(m, 'frame', (v) => v instanceof Uint8Array, 'the bytes of one frame (Uint8Array)');
  },
  capacity: (m) => field(m, 'microBatches', isInt(0), 'an integer ≥ 0'),
  'assign-blocks': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'step', isInt(0), 'an integer ≥ 0');
    field(m, 'blockSize', isInt(1), 'an integer ≥ 1');
    field(m, 'blocks', (v) => Array.isArray(v) && v.length >= 1 && v.length <= 4096, 'a list of 1 to 4096 blocks');
    (m.blocks as unknown[]).forEach((b, i) => {
      const at: Record<string, unknown> = { ...(isObject(b) ? b : {}), type: `assign-blocks.blocks[${i}]` };
      field(at, 'block', isInt(0), 'an integer ≥ 0');
      field(at, 'microBatches', (v) => Array.isArray(v) && v.length >= 1 && v.length <= 4096, 'a list of 1 to 4096');
      (at.microBatches as unknown[]).forEach((mb, j) => microBatchAt(mb, `${at.type}.microBatches[${j}]`));
    });
    field(m, 'forward', (v) => Array.isArray(v) && v.length <= 65536 && v.every(isInt(0)), 'a list of indices');
    field(
      m,
      'outlier',
      (v) => isObject(v) && isFiniteNumber(v.factor) && (v.reference === undefined || isFiniteNumber(v.reference)),
      '{factor, reference?} (finite numbers)',
      true,
    );
    field(m, 'probation', isInt(0), 'an integer ≥ 0', true);
    field(m, 'slots', isInt(1), 'an integer ≥ 1', true);
  },
  'block-sum': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'block', isInt(0), 'an integer ≥ 0');
    field(m, 'lossSum', isFiniteNumber, 'a finite number');
    field(m, 'tokenCount', isInt(0), 'an integer ≥ 0');
    packedFloats(m, 'grads');
  },
  'block-forward': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'index', isInt(0), 'an integer ≥ 0');
    packedFloats(m, 'grads');
  },
  'block-result': (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'items', (v) => Array.isArray(v) && v.length >= 1 && v.length <= 65536, 'a list of 1 to 65536 items');
    (m.items as unknown[]).forEach((item, i) => {
      const at = { ...(isObject(item) ? item : {}), type: `block-result.items[${i}]` };
      field(at, 'index', isInt(0), 'an integer ≥ 0');
      field(at, 'worker', isString(64), 'a worker id');
      field(at, 'name', isString(128), 'a worker name');
      field(at, 'lossSum', isFiniteNumber, 'a finite number');
      field(at, 'tokenCount', isInt(0), 'an integer ≥ 0');
      field(at, 'norm', (v) => isFiniteNumber(v) && (v as number) >= 0, 'a finite number ≥ 0');
    });
    field(
      m,
      'traffic',
      (v) => isObject(v) && isInt(0)(v.bytesIn) && isInt(0)(v.bytesOut),
      '{bytesIn, bytesOut} (integers ≥ 0)',
      true,
    );
  },
  redirect: (m) =>
    field(
      m,
      'url',
      (v) => typeof v === 'string' && v.length <= 2048 && /^wss?:\/\/[^\s]+$/.test(v),
      'a ws:// or wss:// URL',
    ),
  expel: (m) => {
    field(m, 'worker', isString(64), 'a worker id');
    field(m, 'reason', isString(1024), 'a reason');
  },
};

export function parseMessage(raw: unknown): Message {
  if (!isObject(raw)) {
    const kind =
      typeof raw === 'object' && raw !== null && !Array.isArray(raw) && !ArrayBuffer.isView(raw)
        ? `a ${raw.constructor?.name ?? 'non-plain'} object`
        : describe(raw);
    fail(ErrorCodes.DECODE, `a frame should decode to an object (a msgpack map), got ${kind}`);
  }
  const type = raw.type;
  if (typeof type !== 'string' || !Object.hasOwn(guards, type))
    fail(ErrorCodes.UNKNOWN_TYPE, `unknown message type ${describe(type)}`);
  guards[type as Message['type']](raw);
  delete raw.pad; // alignment filler of result and params frames (codec.ts), never part of a message
  return raw as unknown as Message;
}

/**
 * Decodes a float payload of the run: the codec must be the run's for that direction and the
 * length the manifest's adapter size; every decoded value must be finite, unless `finiteChecked` is false: the
 * caller then checks it in a pass of its own (the coordinator's result gate, with the norm: finiteNorm).
 */
export function unpackFloats(
  p: PackedFloats,
  codec: CodecSpec,
  length: number,
  what: string,
  finiteChecked = true,
): Float32Array {
  if (p.codec !== codec.name || (p.codec === 'int8' && p.blockSize !== codec.blockSize)) {
    fail(
      ErrorCodes.CODEC,
      `${what} is in ${p.codec}${p.blockSize ? `/${p.blockSize}` : ''}, ` +
        `this run sends ${codec.name}${codec.blockSize ? `/${codec.blockSize}` : ''}`,
    );
  }
  if (p.values.length !== length)
    fail(ErrorCodes.SHAPE, `${what} has ${p.values.length} values, expected ${length} (the manifest's adapter)`);
  // A decoded frame's arrays belong to that message alone (views of its own received buffer, or
  // copies: codec.ts), so f32 values are used as they are: one copy of every gradient fewer.
  const values = p.codec === 'f32' ? (p.values as Float32Array) : decodeFloats(p);
  if (!finiteChecked) return values;
  const bad = firstNonFinite(values);
  if (bad >= 0) fail(ErrorCodes.NON_FINITE, `${what}[${bad}] is ${values[bad]}`);
  return values;
}

/**
 * Index of the first NaN or ±Infinity in x, or −1. The common case (all finite) is one pass of the reduce kernel's
 * float64 sum of squares (shared/train/reduce-kernel.ts, WebAssembly SIMD), which is finite exactly when every
 * value is (a float32 squared is at most 1.2e77, so finite values cannot overflow it): about 2× the rate of the
 * scalar x − x loop it replaces. The exact index is searched only when something was found.
 */
export function firstNonFinite(x: Float32Array): number {
  if (Number.isFinite(sumSquares(x))) return -1;
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return i;
  return -1;
}

/** Concatenates named tensors in manifest order (a missing tensor is a programming error). */
export function flattenTensors(
  tensors: ReadonlyMap<string, Float32Array>,
  spec: { name: string; shape: [number, number] }[],
  into?: Float32Array,
): Float32Array {
  const count = adapterParameterCount(spec);
  if (into && into.length !== count) fail(ErrorCodes.SHAPE, `cannot flatten ${count} values into ${into.length}`);
  const flat = into ?? new Float32Array(count);
  let offset = 0;
  for (const t of spec) {
    const data = tensors.get(t.name);
    if (!data || data.length !== t.shape[0] * t.shape[1])
      fail(ErrorCodes.SHAPE, `tensor ${t.name} is missing or has the wrong size`);
    flat.set(data, offset);
    offset += data.length;
  }
  return flat;
}

/** Views of a flat vector as named tensors in manifest order (no copy). */
export function splitTensors(
  flat: Float32Array,
  spec: { name: string; shape: [number, number] }[],
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let offset = 0;
  for (const t of spec) {
    const n = t.shape[0] * t.shape[1];
    out.set(t.name, flat.subarray(offset, offset + n));
    offset += n;
  }
  return out;
}
