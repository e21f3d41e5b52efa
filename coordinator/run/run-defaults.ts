/**
 * Defaults of where and how a run is served, in one place: the CLI shows them in --help and passes
 * them on, runTraining falls back to them for callers that leave a field out. Run-defining defaults
 * live with their configs (DEFAULT_LORA, DEFAULT_TRAIN in shared/config.ts); limits with their
 * modules (DEFAULT_SECURITY in mesh.ts, DEFAULT_NET_LIMITS in net-limits.ts, DEFAULT_DEFENCE in
 * defence.ts).
 */
export const DEFAULT_DEPLOYMENT = {
  host: '127.0.0.1',
  /** 0: pick a free port */
  port: 0,
  heartbeatMs: 5000,
  localWorkers: 2,
  /** the CLI's checkpoint interval; runTraining's callers that leave it out checkpoint at the end and when stopped */
  checkpointEvery: 25,
  keepCheckpoints: 3,
  backend: 'auto',
} as const;
