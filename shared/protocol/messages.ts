/**
 * The wire protocol as a tagged union (`type`), with one runtime guard per message. Everything a
 * peer sends passes parseMessage before any code looks at it; a bad field fails with a stable
 * code naming the field, the value and what was expected.
 */
import type { LoraConfig, ModelConfig } from '../config.ts';
import { describe, ErrorCodes, fail, type ErrorCode } from '../errors.ts';
import type { MicroBatch } from '../train/micro-batch.ts';

export const PROTOCOL_VERSION = 1;

export interface BaseFile {
  /** file name inside the model directory, e.g. model.safetensors */
  name: string;
  sha256: string;
  bytes: number;
}

export interface RunManifest {
  runId: string;
  model: { config: ModelConfig; files: BaseFile[] };
  lora: LoraConfig;
  adapter: { name: string; shape: [number, number] }[];
}

/** A micro-batch travels exactly as the trainer builds it (typed arrays stay typed). */
export type WireMicroBatch = MicroBatch;

export type TensorMap = Record<string, Float32Array>;

// worker → coordinator
export interface Hello {
  type: 'hello'; protocol: number; token?: string; name?: string; backend: string; platform: 'node' | 'browser';
  /** the device behind the backend, e.g. a WebGPU adapter ("SwiftShader", "NVIDIA H200") */
  adapter?: string;
  /** the worker fell back to a slow backend (cpu, software WebGPU) */
  slow?: boolean;
}
/** base model loaded; paramVersion is the version held (-1: none yet) */
export interface Ready { type: 'ready'; paramVersion: number }
export interface Result { type: 'result'; assignmentId: string; paramVersion: number; tokenCount: number; lossSum: number; computeMs: number; grads: TensorMap }
export interface WorkerError { type: 'worker-error'; assignmentId?: string; code: string; message: string }
export interface Heartbeat { type: 'heartbeat'; sentAt: number }
// coordinator → worker
export interface Welcome { type: 'welcome'; workerId: string; manifest: RunManifest }
export interface Params { type: 'params'; paramVersion: number; tensors: TensorMap }
export interface Assign { type: 'assign'; assignmentId: string; paramVersion: number; step: number; index: number; microBatch: WireMicroBatch }
export interface Reject { type: 'reject'; code: ErrorCode; message: string; assignmentId?: string }
export interface Done { type: 'done'; reason: string }

export type WorkerMessage = Hello | Ready | Result | WorkerError | Heartbeat;
export type CoordinatorMessage = Welcome | Params | Assign | Reject | Done;
export type Message = WorkerMessage | CoordinatorMessage;

type Guard = (m: Record<string, unknown>) => void;

// Plain objects only: msgpackr also decodes to Date, Set, RegExp, Error, ArrayBuffer and its 0xC1
// marker, which are not messages (a frame of them is LM_ERR_DECODE, a field of them LM_ERR_FIELD).
const isObject = (v: unknown): v is Record<string, unknown> => {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

function field(m: Record<string, unknown>, name: string, ok: (v: unknown) => boolean, expected: string, optional = false): void {
  const v = m[name];
  if (v === undefined && optional) return;
  if (!ok(v)) fail(ErrorCodes.FIELD, `${m.type}.${name} should be ${expected}, got ${describe(v)}`);
}

const isString = (max: number) => (v: unknown) => typeof v === 'string' && v.length <= max;
const isInt = (min: number) => (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
const isFiniteNumber = (v: unknown) => typeof v === 'number' && Number.isFinite(v);

function tensorMap(m: Record<string, unknown>, name: string): void {
  const v = m[name];
  if (!isObject(v)) fail(ErrorCodes.FIELD, `${m.type}.${name} should be a map of Float32Array, got ${describe(v)}`);
  for (const [key, t] of Object.entries(v)) {
    if (!(t instanceof Float32Array)) fail(ErrorCodes.FIELD, `${m.type}.${name}[${describe(key)}] should be a Float32Array, got ${describe(t)}`); // describe: a peer's key can be ~maxPayload long
  }
}

function microBatch(m: Record<string, unknown>): void {
  const mb = m.microBatch;
  if (!isObject(mb)) fail(ErrorCodes.FIELD, `assign.microBatch should be an object, got ${describe(mb)}`);
  const where = { ...mb, type: 'assign.microBatch' };
  field(where, 'batch', isInt(1), 'an integer ≥ 1');
  field(where, 'time', isInt(1), 'an integer ≥ 1');
  field(where, 'dropoutSeed', isInt(0), 'an integer ≥ 0');
  const n = (mb.batch as number) * (mb.time as number);
  field(where, 'inputIds', (v) => v instanceof Int32Array && v.length === n, `an Int32Array of batch·time = ${n}`);
  field(where, 'targets', (v) => v instanceof Int32Array && v.length === n, `an Int32Array of batch·time = ${n}`);
  field(where, 'lossMask', (v) => v instanceof Float32Array && v.length === n, `a Float32Array of batch·time = ${n}`);
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
  },
  ready: (m) => field(m, 'paramVersion', isInt(-1), 'an integer ≥ -1 (-1: no parameters yet)'),
  result: (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'tokenCount', isInt(0), 'an integer ≥ 0');
    field(m, 'lossSum', isFiniteNumber, 'a finite number');
    field(m, 'computeMs', (v) => isFiniteNumber(v) && (v as number) >= 0, 'a number ≥ 0');
    tensorMap(m, 'grads');
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
  },
  params: (m) => {
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    tensorMap(m, 'tensors');
  },
  assign: (m) => {
    field(m, 'assignmentId', isString(64), 'an assignment id');
    field(m, 'paramVersion', isInt(0), 'an integer ≥ 0');
    field(m, 'step', isInt(0), 'an integer ≥ 0');
    field(m, 'index', isInt(0), 'an integer ≥ 0');
    microBatch(m);
  },
  reject: (m) => {
    field(m, 'code', isString(64), 'an error code');
    field(m, 'message', isString(4096), 'a message');
  },
  done: (m) => field(m, 'reason', isString(1024), 'a reason'),
};

export function parseMessage(raw: unknown): Message {
  if (!isObject(raw)) {
    const kind = typeof raw === 'object' && raw !== null && !Array.isArray(raw) && !ArrayBuffer.isView(raw) ? `a ${raw.constructor?.name ?? 'non-plain'} object` : describe(raw);
    fail(ErrorCodes.DECODE, `a frame should decode to an object (a msgpack map), got ${kind}`);
  }
  const type = raw.type;
  if (typeof type !== 'string' || !Object.hasOwn(guards, type)) fail(ErrorCodes.UNKNOWN_TYPE, `unknown message type ${describe(type)}`);
  guards[type as Message['type']](raw);
  return raw as unknown as Message;
}

/** Checks a tensor map against the run's adapter spec: same names, same lengths, all finite. */
export function checkTensors(tensors: TensorMap, spec: { name: string; shape: [number, number] }[], what: string): void {
  const names = Object.keys(tensors);
  if (names.length !== spec.length) fail(ErrorCodes.SHAPE, `${what} has ${names.length} tensors, expected ${spec.length}`);
  for (const t of spec) {
    const data = tensors[t.name];
    if (!data) fail(ErrorCodes.SHAPE, `${what} lacks tensor ${t.name}`);
    const expected = t.shape[0] * t.shape[1];
    if (data.length !== expected) fail(ErrorCodes.SHAPE, `${what}.${t.name} has ${data.length} values, expected ${expected} for shape [${t.shape}]`);
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) fail(ErrorCodes.NON_FINITE, `${what}.${t.name}[${i}] is ${data[i]}`);
    }
  }
}
