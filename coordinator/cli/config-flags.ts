/**
 * `train`'s flags onto the run config (run/run-config.ts). The run-defining part comes from
 * resume-flags.ts (`runShapeFrom`, or run_config.json on --resume); this module places every other
 * flag by a table, so a new deployment or limit flag is one line here plus its option in cli.ts.
 */
import { F32 } from '../../shared/protocol/wire-codec.ts';
import type { Aggregation } from '../../shared/train/robust.ts';
import {
  CLI_DEFAULTS,
  DEFAULT_RUN_CONFIG,
  type Deployment,
  type Limits,
  type RunConfigInput,
  type RunSettings,
} from '../run/run-config.ts';
import type { TrainFlags } from './resume-flags.ts';
import type { RunShape } from './resume-flags.ts';

type LimitPath = { [K in keyof Limits]: `limits.${K}.${keyof Limits[K] & string}` }[keyof Limits];

/** commander option key → where its (parsed) value goes. Flags left unset keep the config's default. */
export const CONFIG_FLAGS: Record<string, `deployment.${keyof Deployment}` | LimitPath> = {
  out: 'deployment.outDir',
  runId: 'deployment.runId',
  inProcess: 'deployment.inProcess',
  localWorkers: 'deployment.localWorkers',
  minWorkers: 'deployment.minWorkers',
  host: 'deployment.host',
  port: 'deployment.port',
  backend: 'deployment.backend',
  cacheDir: 'deployment.cacheDir',
  recompute: 'deployment.recompute',
  heartbeatMs: 'deployment.heartbeatMs',
  ingestThreads: 'deployment.ingestThreads',
  keepCheckpoints: 'deployment.keepCheckpoints',
  evalEvery: 'deployment.evalEvery',
  dashboardAccess: 'deployment.dashboardAccess',
  maxConnections: 'limits.net.maxConnections',
  maxConnectionsPerAddress: 'limits.net.maxConnectionsPerAddress',
  maxWorkersPerAddress: 'limits.net.maxWorkersPerAddress',
  maxEventStreams: 'limits.net.maxEventStreams',
  trustedProxy: 'limits.net.trustedProxies',
  maxMessagesPerSecond: 'limits.security.maxMessagesPerSecond',
  maxRejects: 'limits.security.maxRejects',
  spotCheck: 'limits.defence.spotCheck',
  probation: 'limits.defence.probation',
  outlierFactor: 'limits.defence.outlierFactor',
};

/** Values that do not come from one flag: secrets read from files or the environment, paired flags. */
export interface FlagExtras {
  token?: string;
  relayToken?: string;
  adminToken?: string;
  tls?: { cert: string; key: string };
}

/** The config `train` runs: the run's settings, each flag of CONFIG_FLAGS placed, and the extras. */
export function configFromFlags(o: TrainFlags, shape: RunShape, extras: FlagExtras): RunConfigInput {
  const run: RunSettings = {
    model: shape.model,
    data: shape.data,
    lora: shape.lora,
    train: shape.train,
    wire: shape.wire ?? { up: F32, down: F32 },
    local: shape.local ?? null,
    checkpointEvery: shape.checkpointEvery ?? CLI_DEFAULTS.checkpointEvery,
    aggregation: (shape.aggregation ?? o.aggregation) as Aggregation,
    baseFormat: shape.baseFormat ?? null,
    // a run_config.json from before arithmetic variants: its runs computed with the default
    arithmetic: shape.arithmetic ?? DEFAULT_RUN_CONFIG.run.arithmetic,
  };
  const config = { run, deployment: {} as Record<string, unknown>, limits: {} as Record<string, any> };
  for (const [key, path] of Object.entries(CONFIG_FLAGS)) {
    if (o[key] === undefined) continue;
    const [part, group, field] = path.split('.');
    if (part === 'deployment') config.deployment[group] = o[key];
    else {
      config.limits[group] ??= {};
      config.limits[group][field] = o[key];
    }
  }
  const d = config.deployment;
  d.resume = !!o.resume;
  if (o.inProcess) d.localWorkers = 0;
  if (extras.token !== undefined) d.token = extras.token;
  if (extras.relayToken !== undefined) d.relayToken = extras.relayToken;
  if (extras.adminToken !== undefined) d.adminToken = extras.adminToken;
  if (extras.tls) d.tls = extras.tls;
  if (o.allowedOrigins)
    d.allowedOrigins = String(o.allowedOrigins)
      .split(',')
      .map((x: string) => x.trim());
  return config as RunConfigInput;
}
