/**
 * A run's configuration, typed and checked in one place, in three parts:
 *  - `run`: what defines the run and its adapter's bits (model, data, LoRA, optimizer, codecs, local
 *    steps, aggregation, checkpoint interval, the base's compact format, the kernels' arithmetic variant). Stored in run_config.json; `--resume` keeps it and
 *    refuses flags that contradict it (cli/resume-flags.ts).
 *  - `deployment`: where and how this process serves it (address, token, TLS, workers, backend,
 *    run folder, eval cadence, admin). May change freely on resume.
 *  - `limits`: what the run tolerates of its peers (connection caps, message rates, the result
 *    defence, straggler deadlines). May change freely on resume.
 * The CLI maps flags onto a partial config (`RunConfigInput`); `resolveRunConfig` fills every unset
 * field from DEFAULT_RUN_CONFIG and checks every field, naming it, before anything loads.
 */
import { isIP } from 'node:net';
import { ARITHMETIC_VARIANTS, type ArithmeticVariant, DEFAULT_ARITHMETIC } from '../../shared/arithmetic.ts';
import { checkLoraConfig, checkTrainConfig, type LoraConfig, type TrainConfig } from '../../shared/config.ts';
import { describe, ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';
import { checkCodecSpec, type CodecSpec, F32 } from '../../shared/protocol/wire-codec.ts';
import { type ResolvedBaseSpec, resolveBaseSpec } from '../../shared/quant/formats.ts';
import type { OuterConfig } from '../../shared/train/local-steps.ts';
import { AGGREGATIONS, type Aggregation } from '../../shared/train/robust.ts';
import { BACKENDS, type BackendName } from '../../node/backend-names.ts';
import { DEFAULT_DEFENCE, type DefenceConfig } from '../engine/defence.ts';
import { DEFAULT_SECURITY, type SecurityLimits } from '../engine/mesh.ts';
import { DEFAULT_SCHEDULE, type ScheduleOptions } from '../engine/scheduler.ts';
import { DEFAULT_NET_LIMITS, type NetLimits, resolveNetLimits } from '../net/net-limits.ts';
import type { DataSpec } from '../io/dataset.ts';

export type { DataSpec };

/** What defines a run: stored in run_config.json, kept on resume. */
export interface RunSettings {
  /** the base model directory */
  model: string;
  /** how the examples were made (null: the caller passed examples of its own) */
  data: DataSpec | null;
  lora: LoraConfig;
  train: TrainConfig;
  /** wire codecs: up = results, down = parameters */
  wire: { up: CodecSpec; down: CodecSpec };
  /** local-steps (DiLoCo) mode; null = synchronous */
  local: OuterConfig | null;
  /** save a checkpoint every N steps (0: only at the end and when stopped) */
  checkpointEvery: number;
  aggregation: Aggregation;
  /**
   * the frozen base held compact (shared/quant/formats.ts), quantized once by the coordinator and
   * served to every worker as one file; null: float32 tensors as loaded (the fast float32 kernels)
   */
  baseFormat: ResolvedBaseSpec | null;
  /**
   * the wasm kernels' arithmetic (shared/arithmetic.ts): simd128 (the default, every engine) or relaxed-fma
   * (relaxed SIMD's fused multiply-add: faster, its last bits may differ between CPUs). Every worker and this
   * process's own copy compute with it; a worker that cannot is refused.
   */
  arithmetic: ArithmeticVariant;
}

/** Where and how this process serves the run. */
export interface Deployment {
  /** where run folders go */
  outDir: string;
  /** the run folder's name (default: date + random id) */
  runId: string | null;
  /** continue outDir/runId from its latest valid checkpoint */
  resume: boolean;
  /** compute in this process, no sockets (the single-process reference) */
  inProcess: boolean;
  /** worker processes to start on this machine */
  localWorkers: number;
  /** start once this many workers are ready (null: localWorkers, at least 1) */
  minWorkers: number | null;
  host: string;
  /** 0: pick a free one */
  port: number;
  /** the join token workers present (null: none asked) */
  token: string | null;
  /** the token relays present (coordinator/relay/, `loramesh relay`); null: relays are refused */
  relayToken: string | null;
  /**
   * threads that take the workers' sockets off the main thread (coordinator/relay/ingest.ts): workers are sent to
   * them; 0: none. Needs the run's train.reductionBlock (each thread sums whole blocks).
   */
  ingestThreads: number;
  tls: { cert: string; key: string } | null;
  /** tfjs backend of local workers (and of this process with inProcess) */
  backend: BackendName;
  /**
   * the coordinator's cache of quantized compact bases and local workers' cache of verified base
   * files (null: LORAMESH_CACHE, else ~/.cache/loramesh)
   */
  cacheDir: string | null;
  /**
   * every worker (and this process) recomputes each block's forward in the backward pass: less
   * memory, about a third more compute, the same bits. Without it a worker whose memory limit
   * would not hold the step otherwise is told to recompute.
   */
  recompute: boolean;
  /** ping interval; a worker silent for 2 intervals is dropped */
  heartbeatMs: number;
  keepCheckpoints: number;
  /** steps between eval-loss checks (also before and after training) */
  evalEvery: number;
  /** enables POST /api/admin/… with this bearer token */
  adminToken: string | null;
  dashboardAccess: 'public' | 'admin';
  /** Origins allowed to open the worker WebSocket from a browser page (null: any) */
  allowedOrigins: string[] | null;
}

/** What the run tolerates of its peers. */
export interface Limits {
  net: NetLimits;
  security: SecurityLimits;
  defence: DefenceConfig;
  schedule: ScheduleOptions;
}

export interface RunConfig {
  run: RunSettings;
  deployment: Deployment;
  limits: Limits;
}

/** A config with any field left out; the model and data may come with the caller's inputs instead. */
export interface RunConfigInput {
  run: Partial<RunSettings> & { lora: LoraConfig; train: TrainConfig };
  deployment?: Partial<Deployment>;
  limits?: { [K in keyof Limits]?: Partial<Limits[K]> };
}

/** Every default of a run, in one place (the modules that own a concern export its part). */
export const DEFAULT_RUN_CONFIG = {
  run: {
    wire: { up: F32, down: F32 },
    local: null,
    checkpointEvery: 0,
    aggregation: 'sum',
    baseFormat: null,
    arithmetic: DEFAULT_ARITHMETIC,
    /** the CLI's local-steps settings, used when --local-steps > 0 */
    outer: { outerLr: 0.7, outerMomentum: 0.9 },
  },
  deployment: {
    outDir: 'runs',
    runId: null,
    resume: false,
    inProcess: false,
    localWorkers: 2,
    minWorkers: null,
    host: '127.0.0.1',
    port: 0,
    token: null,
    relayToken: null,
    ingestThreads: 0,
    tls: null,
    backend: 'auto',
    cacheDir: null,
    recompute: false,
    heartbeatMs: 5000,
    keepCheckpoints: 3,
    evalEvery: 50,
    adminToken: null,
    dashboardAccess: 'public',
    allowedOrigins: null,
  },
  limits: {
    net: DEFAULT_NET_LIMITS,
    security: DEFAULT_SECURITY,
    defence: DEFAULT_DEFENCE,
    schedule: DEFAULT_SCHEDULE,
  },
} as const satisfies {
  run: Partial<RunSettings> & { outer: Pick<OuterConfig, 'outerLr' | 'outerMomentum'> };
  deployment: Deployment;
  limits: Limits;
};

/** The CLI's own defaults that are not part of a run's config (demo data size, held-out share, checkpoint cadence). */
export const CLI_DEFAULTS = {
  trainSize: 2000,
  evalFraction: 0.05,
  /** `train` checkpoints every 25 steps; runTraining's callers that leave it out only at the end */
  checkpointEvery: 25,
} as const;

const bad = (field: string, value: unknown, expected: string): never =>
  fail(ErrorCodes.CONFIG, `${field} should be ${expected}, got ${describe(value)}`);

const isInt = (v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): v is number =>
  Number.isInteger(v) && (v as number) >= min && (v as number) <= max;

function checkInt(field: string, v: unknown, min: number, max?: number): number {
  if (!isInt(v, min, max)) bad(field, v, max === undefined ? `an integer ≥ ${min}` : `an integer in [${min}, ${max}]`);
  return v as number;
}

function checkNumber(field: string, v: unknown, min: number, max = Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) bad(field, v, `a number in [${min}, ${max}]`);
  return v as number;
}

function checkOneOf<T extends string>(field: string, v: unknown, choices: readonly T[]): T {
  if (!(choices as readonly unknown[]).includes(v)) bad(field, v, `one of ${choices.join(', ')}`);
  return v as T;
}

const HOST_NAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** An address to listen on: an IPv4 or IPv6 address, or a host name (all-numeric names must be valid IPv4). */
export function checkHost(field: string, v: unknown): string {
  if (typeof v !== 'string') return bad(field, v, 'an IP address or a host name');
  const host = v.trim();
  if (isIP(host)) return host;
  if (/^[\d.]+$/.test(host) || !HOST_NAME.test(host)) bad(field, v, 'an IP address or a host name');
  return host;
}

/** Local-steps settings: H ≥ 1 and learning rates / momentum in range. */
export function checkLocal(field: string, v: unknown): OuterConfig {
  const l = (typeof v === 'object' && v !== null ? v : bad(field, v, 'an object')) as Record<string, unknown>;
  checkInt(`${field}.steps`, l.steps, 1);
  checkNumber(`${field}.innerLr`, l.innerLr, 0, 10);
  checkNumber(`${field}.outerLr`, l.outerLr, 0, 10);
  checkNumber(`${field}.outerMomentum`, l.outerMomentum, 0, 0.999);
  return { steps: l.steps, innerLr: l.innerLr, outerLr: l.outerLr, outerMomentum: l.outerMomentum } as OuterConfig;
}

/** A data spec as written by runShapeFrom / read from run_config.json. */
export function checkDataSpec(field: string, v: unknown): DataSpec | null {
  if (v === null || v === undefined) return null;
  const d = (typeof v === 'object' ? v : bad(field, v, 'an object')) as Record<string, unknown>;
  if (d.kind === 'jsonl') {
    if (typeof d.path !== 'string' || d.path === '') bad(`${field}.path`, d.path, 'a file path');
    if (d.maxTokens !== undefined) checkInt(`${field}.maxTokens`, d.maxTokens, 2);
    if (typeof d.pack !== 'boolean') bad(`${field}.pack`, d.pack, 'true or false');
    if (typeof d.evalFraction !== 'number' || d.evalFraction < 0 || d.evalFraction >= 1)
      bad(`${field}.evalFraction`, d.evalFraction, 'a number in [0, 1)');
  } else if (d.kind === 'demo') {
    checkInt(`${field}.trainSize`, d.trainSize, 1);
  } else {
    bad(`${field}.kind`, d.kind, '"jsonl" or "demo"');
  }
  checkInt(`${field}.seed`, d.seed, 0);
  return d as DataSpec;
}

/**
 * Runs `check`, re-raising a config error with `field` in front
 * (errors of shared/ checkers name only their own field).
 */
export function within<T>(field: string, check: () => T): T {
  try {
    return check();
  } catch (err) {
    throw err instanceof LoraMeshError
      ? new LoraMeshError(ErrorCodes.CONFIG, `${field}: ${err.message.replace(/^LM_ERR_\w+: /, '')}`)
      : err;
  }
}

/** The run-defining part, checked field by field; `field` prefixes each name (e.g. "run_config.json: "). */
export function checkRunSettings(v: Partial<RunSettings> & Record<string, unknown>, prefix = 'run.'): RunSettings {
  if (typeof v.model !== 'string' || v.model === '') bad(`${prefix}model`, v.model, 'a model directory');
  const wire = v.wire ?? DEFAULT_RUN_CONFIG.run.wire;
  const aggregation = v.aggregation ?? DEFAULT_RUN_CONFIG.run.aggregation;
  // a reduction block orders a sum: robust rules and local steps use every result on its own
  if (v.train?.reductionBlock !== undefined && (v.local != null || aggregation !== 'sum'))
    bad(
      `${prefix}train.reductionBlock`,
      v.train.reductionBlock,
      v.local != null ? 'no reduction block with local steps' : `no reduction block with aggregation ${aggregation}`,
    );
  return {
    model: v.model as string,
    data: checkDataSpec(`${prefix}data`, v.data),
    lora: within(`${prefix}lora`, () => checkLoraConfig(v.lora ?? bad(`${prefix}lora`, v.lora, 'an object'))),
    train: within(`${prefix}train`, () => checkTrainConfig(v.train ?? bad(`${prefix}train`, v.train, 'an object'))),
    wire: {
      up: within(`${prefix}wire.up`, () => checkCodecSpec(wire.up, 'codec')),
      down: within(`${prefix}wire.down`, () => checkCodecSpec(wire.down, 'codec')),
    },
    local: v.local == null ? null : checkLocal(`${prefix}local`, v.local),
    checkpointEvery: checkInt(`${prefix}checkpointEvery`, v.checkpointEvery ?? 0, 0),
    aggregation: checkOneOf(`${prefix}aggregation`, aggregation, AGGREGATIONS),
    baseFormat: v.baseFormat == null ? null : resolveBaseSpec(v.baseFormat, `${prefix}baseFormat`),
    arithmetic: checkOneOf(
      `${prefix}arithmetic`,
      v.arithmetic ?? DEFAULT_RUN_CONFIG.run.arithmetic,
      ARITHMETIC_VARIANTS,
    ),
  };
}

function checkDeployment(d: Deployment): Deployment {
  checkInt('deployment.port', d.port, 0, 65535);
  checkHost('deployment.host', d.host);
  checkInt('deployment.localWorkers', d.localWorkers, 0);
  if (d.minWorkers !== null) checkInt('deployment.minWorkers', d.minWorkers, 1);
  checkInt('deployment.heartbeatMs', d.heartbeatMs, 100);
  checkInt('deployment.ingestThreads', d.ingestThreads, 0);
  if (d.ingestThreads > 64) bad('deployment.ingestThreads', d.ingestThreads, 'at most 64');
  if (typeof d.recompute !== 'boolean') bad('deployment.recompute', d.recompute, 'true or false');
  checkInt('deployment.keepCheckpoints', d.keepCheckpoints, 1);
  checkInt('deployment.evalEvery', d.evalEvery, 1);
  checkOneOf('deployment.backend', d.backend, BACKENDS);
  checkOneOf('deployment.dashboardAccess', d.dashboardAccess, ['public', 'admin'] as const);
  if (typeof d.outDir !== 'string' || d.outDir === '') bad('deployment.outDir', d.outDir, 'a folder');
  if (d.runId !== null && (!/^[\w.-]{1,128}$/.test(d.runId) || /^\.+$/.test(d.runId)))
    bad('deployment.runId', d.runId, 'a folder name of letters, digits, "_", "-" and "."');
  if (d.token !== null && (typeof d.token !== 'string' || d.token === '')) bad('deployment.token', d.token, 'a token');
  if (d.relayToken !== null && (typeof d.relayToken !== 'string' || d.relayToken.length < 8))
    bad('deployment.relayToken', d.relayToken, 'a token of at least 8 characters');
  if (d.relayToken !== null && d.relayToken === d.token)
    bad('deployment.relayToken', '(the join token)', 'a token of its own: relays are trusted, workers are not');
  if (d.tls !== null && (typeof d.tls.cert !== 'string' || typeof d.tls.key !== 'string'))
    bad('deployment.tls', d.tls, 'a certificate file and a key file');
  if (d.dashboardAccess === 'admin' && !d.adminToken)
    fail(
      ErrorCodes.CONFIG,
      'deployment.dashboardAccess "admin" (--dashboard-access admin) needs an admin token (--admin-token)',
    );
  return d;
}

function checkLimits(l: Limits): Limits {
  l.net = resolveNetLimits(l.net);
  // Infinity turns these two off (tests and trusted meshes)
  if (l.security.maxMessagesPerSecond !== Infinity)
    checkNumber('limits.security.maxMessagesPerSecond', l.security.maxMessagesPerSecond, 1);
  if (l.security.maxRejects !== Infinity) checkInt('limits.security.maxRejects', l.security.maxRejects, 1);
  checkInt('limits.security.handshakeTimeoutMs', l.security.handshakeTimeoutMs, 1);
  if (l.security.maxBufferedBytes !== undefined)
    checkInt('limits.security.maxBufferedBytes', l.security.maxBufferedBytes, 1);
  checkNumber('limits.defence.spotCheck', l.defence.spotCheck, 0, 1);
  checkInt('limits.defence.probation', l.defence.probation, 0);
  const k = checkNumber('limits.defence.outlierFactor', l.defence.outlierFactor, 0);
  if (k > 0 && k < 1) bad('limits.defence.outlierFactor', k, '0 (off) or a number ≥ 1');
  checkNumber('limits.defence.tolerance', l.defence.tolerance, 0);
  checkNumber('limits.schedule.deadlineFactor', l.schedule.deadlineFactor, 1);
  checkNumber('limits.schedule.deadlineSlackMs', l.schedule.deadlineSlackMs, 0);
  checkNumber('limits.schedule.unknownExpectedMs', l.schedule.unknownExpectedMs, 1);
  return l;
}

/**
 * The whole config: each part's given fields over its defaults, every field checked. `model` names the
 * model directory when the input's run leaves it out (callers that loaded it already).
 */
export function resolveRunConfig(input: RunConfigInput, model?: string): RunConfig {
  const { outer: _outer, ...runDefaults } = DEFAULT_RUN_CONFIG.run;
  const given = input.limits ?? {};
  const run = checkRunSettings({ ...runDefaults, data: null, model, ...defined(input.run) });
  const deployment = checkDeployment({ ...DEFAULT_RUN_CONFIG.deployment, ...defined(input.deployment) } as Deployment);
  if (deployment.ingestThreads > 0) {
    const why = deployment.inProcess
      ? '0 with --in-process (there are no workers)'
      : run.train.reductionBlock === undefined
        ? '0 without a reduction block: each thread sums whole blocks (set --reduction-block K, about workers / ' +
          'threads; the order of the sum is part of the run)'
        : null;
    if (why) bad('deployment.ingestThreads', deployment.ingestThreads, why);
  }
  return {
    run,
    deployment,
    limits: checkLimits({
      net: { ...DEFAULT_RUN_CONFIG.limits.net, ...defined(given.net) } as NetLimits,
      security: { ...DEFAULT_RUN_CONFIG.limits.security, ...defined(given.security) },
      defence: { ...DEFAULT_RUN_CONFIG.limits.defence, ...defined(given.defence) },
      schedule: { ...DEFAULT_RUN_CONFIG.limits.schedule, ...defined(given.schedule) },
    }),
  };
}

/** `o` without its undefined fields: a field given as undefined keeps its default. */
function defined<T extends object>(o: T | undefined): Partial<T> {
  return Object.fromEntries(Object.entries(o ?? {}).filter(([, v]) => v !== undefined)) as Partial<T>;
}
