/**
 * `loramesh pool`: a long-running coordinator for one base model (issue 18). Tenants upload data and
 * submit runs over the HTTP API (api.ts); the registry (registry.ts) keeps every acknowledged change in
 * SQLite; each run trains through `runTraining`, the code `train` runs, in its own folder
 * (<pool>/runs/<run id>/, checkpointed as a run folder is), its micro-batches served by the lanes
 * (lanes.ts) in fair-share order. A pool restarted after a kill resumes every unfinished run from its
 * latest checkpoint; each still ends bit-identical to the run trained alone.
 *
 * Workers join the pool's mesh (pool-mesh.ts) at /ws, as they join a run, load the base once and stay
 * across runs; each run is a MeshExecutor with its own checks, its workers chosen in fair-share order.
 * With `inProcess` the pool process computes every micro-batch itself instead (lanes.ts): a pool on one
 * machine, and what the pool's own tests use.
 *
 * Pool folder: pool.lock (one live process), pool.sqlite, uploads/<id>/<file>, runs/<run id>/.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { loadLatestCheckpoint } from '../io/checkpoint.ts';
import { join } from 'node:path';
import { DEFAULT_LORA } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import type { RunManifest } from '../../shared/protocol/messages.ts';
import { F32 } from '../../shared/protocol/wire-codec.ts';
import { defaultCacheDir } from '../../node/cache-dir.ts';
import { compactBaseFile } from '../io/compact-cache.ts';
import { examplesFor } from '../io/dataset.ts';
import { loadWeights, type ModelDir, type ModelFile } from '../io/model-dir.ts';
import { loadCompactBaseFile } from '../../node/compact-file.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { type CausalLM, createModel } from '../../shared/model/causal-lm.ts';
import { baseForKernels } from '../../shared/model/compact-base.ts';
import { startServer, type RunningServer } from '../net/server.ts';
import { PoolMesh, type PoolServed } from './pool-mesh.ts';
import { PoolMonitor } from './pool-monitor.ts';
import { acquireRunLock, type RunLock } from '../io/run-lock.ts';
import type { ResolvedBaseSpec } from '../../shared/quant/formats.ts';
import type { BackendName } from '../../node/backend-names.ts';
import { runTraining } from '../run/train.ts';
import { poolApi } from './api.ts';
import { PoolLanes, type Served } from './lanes.ts';
import { PoolRegistry, type PoolRun } from './registry.ts';
import { checkSubmission, type PoolBase, type Submission } from './submission.ts';

export interface PoolOptions {
  dir: string;
  model: ModelDir;
  baseFormat?: ResolvedBaseSpec | null;
  host?: string;
  /** 0: pick a free one */
  port?: number;
  adminToken: string | null;
  /** join token workers present at the upgrade (undefined: any worker may join) */
  joinToken?: string;
  /** https + wss with these PEM files */
  tls?: { cert: string; key: string };
  backend?: BackendName;
  /** the pool process computes every micro-batch itself (lanes.ts); default: its workers do */
  inProcess?: boolean;
  /** ms between worker pings (default 10 s) */
  heartbeatMs?: number;
  /** largest result frame a worker may send, in bytes (default 256 MiB); submissions whose result is larger are refused */
  maxResultBytes?: number;
  /** where the compact base file is cached (default: the user cache) */
  cacheDir?: string;
  log?: (line: string) => void;
  /** every micro-batch as it is computed in-process (tests; the pool's fairness figures) */
  onServe?: (s: Served) => void;
  /** every attempt handed to a worker (tests; the pool's fairness figures) */
  onAssign?: (s: PoolServed) => void;
  /** the most runs' micro-batches one worker takes at once and computes in one pass (default 1: one at a time) */
  maxRunsPerWorker?: number;
}

export const DEFAULT_MAX_RESULT_BYTES = 256 << 20;

export class Pool {
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private closing = false;

  private constructor(
    readonly dir: string,
    readonly url: string,
    readonly registry: PoolRegistry,
    private readonly server: RunningServer,
    private readonly lock: RunLock,
    private readonly lanes: PoolLanes,
    readonly mesh: PoolMesh,
    readonly monitor: PoolMonitor,
    private readonly opts: PoolOptions,
    private readonly files: ModelFile[],
  ) {}

  /** the coordinator's model and frozen base, built on first use and shared by every run (eval, checks) */
  private trusted: { model: CausalLM; base: FrozenBase } | null = null;
  /** times the pool process loaded its base: one however many runs (tests) */
  baseLoads = 0;

  private readonly sharedBase = () => {
    if (this.trusted) return this.trusted;
    const { config } = this.opts.model;
    const format = this.opts.baseFormat;
    const file = this.files.find((f) => f.name.endsWith('.safetensors'));
    const weights =
      format && file ? loadCompactBaseFile(config, file.path, format) : loadWeights(this.opts.model).weights;
    this.baseLoads++;
    this.trusted = { model: createModel(config), base: new FrozenBase(config, baseForKernels(config, weights)) };
    return this.trusted;
  };

  static async start(opts: PoolOptions): Promise<Pool> {
    const log = opts.log ?? ((line: string) => console.log(line));
    mkdirSync(opts.dir, { recursive: true });
    const lock = acquireRunLock(opts.dir, log);
    let registry: PoolRegistry | null = null;
    try {
      registry = PoolRegistry.open(join(opts.dir, 'pool.sqlite'), { ownsFolder: true });
      const maxResultBytes = opts.maxResultBytes ?? DEFAULT_MAX_RESULT_BYTES;
      const base: PoolBase = {
        model: opts.model.dir,
        config: opts.model.config,
        baseFormat: opts.baseFormat ?? null,
        maxResultBytes,
        inProcess: !!opts.inProcess,
      };
      const lanes = new PoolLanes(opts.onServe);
      const files = await baseFiles(opts, log);
      const mesh = new PoolMesh({
        manifest: baseManifest(opts, files),
        log,
        onServe: opts.onAssign,
        ...(opts.maxRunsPerWorker ? { maxRunsPerWorker: opts.maxRunsPerWorker } : {}),
      });
      let pool: Pool | null = null;
      const monitor = new PoolMonitor(registry, () => mesh.info(), {
        model: opts.model.dir,
        baseFormat: opts.baseFormat ?? null,
        inProcess: !!opts.inProcess,
      });
      const handle = poolApi({
        registry,
        base,
        dir: opts.dir,
        adminToken: opts.adminToken,
        validateUpload: async (path) =>
          (await examplesFor({ kind: 'jsonl', path, pack: false, evalFraction: 0, seed: 0 }, opts.model, () => {}))
            .train.length,
        onSubmit: (run, submission) => pool?.launch(run, submission, false),
        onCancel: (run) => pool?.running.get(run.id)?.abort.abort(),
        runFile: (run, name) => {
          const path = join(opts.dir, 'runs', run.id, name);
          return existsSync(path) ? path : null;
        },
        monitor,
      });
      const server = await startServer({
        host: opts.host ?? '127.0.0.1',
        port: opts.port ?? 0,
        files,
        mesh,
        monitor,
        routes: handle,
        home: 'pool',
        // a result frame, and the largest upload a quota allows travels over HTTP, not here
        maxPayload: maxResultBytes + (1 << 20),
        heartbeatMs: opts.heartbeatMs ?? 10_000,
        token: opts.joinToken,
        ...(opts.tls ? { tls: opts.tls } : {}),
      });
      const url = server.url;
      pool = new Pool(opts.dir, url, registry, server, lock, lanes, mesh, monitor, opts, files);
      log(
        `pool: ${opts.model.dir} at ${url} (folder ${opts.dir}); ` +
          (opts.inProcess
            ? 'computing every run in this process'
            : `workers join with: loramesh worker ${server.wsUrl}`),
      );
      // a restart: every unfinished run continues from its latest checkpoint
      for (const run of registry.unfinished()) {
        const stored = run.config as { run: Record<string, unknown> };
        let submission: Submission;
        try {
          submission = checkSubmission(
            { name: run.name, run: stored.run, weight: run.weight, priority: run.priority },
            base,
          );
        } catch (err) {
          // one run this pool can no longer read fails; the others still resume
          registry.update(run.id, { state: 'failed', error: (err as Error).message });
          log(`[${run.id}] failed on restart: ${(err as Error).message}`);
          continue;
        }
        // from its latest checkpoint; a run killed before its first checkpoint starts again from step 0
        // (the same run: its bits do not depend on where it restarted)
        const runDir = join(opts.dir, 'runs', run.id);
        const resume = existsSync(runDir) && loadLatestCheckpoint(runDir, log) !== null;
        if (!resume) rmSync(runDir, { recursive: true, force: true });
        pool.launch(run, submission, resume);
      }
      return pool;
    } catch (err) {
      registry?.close();
      lock.release();
      throw err;
    }
  }

  /** Trains a queued run (or resumes one) in its own folder; its state follows in the registry. */
  private launch(run: PoolRun, submission: Submission, resume: boolean): void {
    const log = this.opts.log ?? ((line: string) => console.log(line));
    const abort = new AbortController();
    const upload =
      this.registry.upload(run.tenantId, run.uploadId) ?? fail(ErrorCodes.NOT_FOUND, `no upload ${run.uploadId}`);
    const { data } = submission;
    const spec = {
      kind: 'jsonl' as const,
      path: join(this.dir, upload.path),
      ...(data.maxTokens !== undefined ? { maxTokens: data.maxTokens } : {}),
      pack: data.pack,
      evalFraction: data.evalFraction,
      seed: data.seed ?? submission.settings.train.seed,
    };
    let lastWrite = -Infinity;
    const host = this.opts.inProcess
      ? undefined
      : {
          arbiter: this.mesh.arbiter(run.id, submission.share),
          open: (mesh: import('../engine/mesh.ts').MeshExecutor) => this.mesh.open(run.id, mesh),
          close: (_mesh: unknown, reason: string) => this.mesh.close(run.id, reason),
        };
    const done = (async () => {
      try {
        const examples = await examplesFor(spec, this.opts.model, (line) => log(`[${run.id}] ${line}`));
        if (run.state === 'queued') this.registry.update(run.id, { state: 'running' });
        const result = await runTraining({
          model: this.opts.model,
          examples: examples.train,
          evalExamples: examples.eval.length > 0 ? examples.eval : undefined,
          config: {
            run: { ...submission.settings, data: spec },
            deployment: {
              outDir: join(this.dir, 'runs'),
              runId: run.id,
              resume,
              inProcess: !!this.opts.inProcess,
              localWorkers: 0,
              ...(this.opts.cacheDir ? { cacheDir: this.opts.cacheDir } : {}),
              backend: this.opts.backend ?? 'wasm',
            },
          },
          signal: abort.signal,
          progress: false,
          log: (line) => log(`[${run.id}] ${line}`),
          onStep: (record) => {
            this.monitor.step(run.id, record.step, record.loss);
            // the registry's step is for `runs` and the API (resuming reads the checkpoint): written at each
            // checkpoint and otherwise once a second at most, not an fsync every step on the lanes' thread
            const every = submission.settings.checkpointEvery;
            const checkpointed = every > 0 && record.step % every === 0;
            if (this.closing || (!checkpointed && performance.now() - lastWrite < 1000)) return;
            lastWrite = performance.now();
            this.registry.update(run.id, { step: record.step });
          },
          executor: (parts) => this.lanes.lane(run.id, submission.share, parts),
          host,
          sharedBase: this.sharedBase,
        });
        const now = this.registry.runById(run.id)!;
        if (now.state === 'cancelled' || this.closing) return; // a restart resumes an unfinished run
        this.registry.update(run.id, { state: 'done', step: result.step });
        log(`[${run.id}] done: ${result.step} steps`);
      } catch (err) {
        if (this.closing) return;
        const state = this.registry.runById(run.id)?.state;
        if (state === 'queued' || state === 'running')
          this.registry.update(run.id, { state: 'failed', error: (err as Error).message });
        log(`[${run.id}] failed: ${(err as Error).message}`);
      } finally {
        this.lanes.close(run.id);
        this.mesh.close(run.id, 'the run stopped');
        this.running.delete(run.id);
      }
    })();
    this.running.set(run.id, { abort, done });
  }

  /** Resolves once run `id` has stopped (finished, failed, cancelled). */
  async settled(id: string): Promise<PoolRun | null> {
    await this.running.get(id)?.done;
    return this.registry.runById(id);
  }

  /** Stops serving: runs stop after their current step and checkpoint (a restart resumes them). */
  async close(): Promise<void> {
    this.closing = true;
    for (const { abort } of this.running.values()) abort.abort();
    await Promise.all([...this.running.values()].map((r) => r.done));
    this.mesh.terminateAll();
    await this.server.close();
    this.registry.close();
    this.lock.release();
  }
}

/** The files workers fetch: the checkpoint's, or config.json and the compact base file made once (cached). */
async function baseFiles(opts: PoolOptions, log: (line: string) => void): Promise<ModelFile[]> {
  const { model, baseFormat } = opts;
  if (!baseFormat) return model.files;
  const file = await compactBaseFile(model, baseFormat, opts.cacheDir ?? defaultCacheDir(), log);
  return [...model.files.filter((f) => !f.name.endsWith('.safetensors')), file];
}

/** What pool-welcome tells a worker: the base alone (no adapter: each run's welcome brings its own). */
function baseManifest(opts: PoolOptions, files: ModelFile[]): RunManifest {
  return {
    runId: 'pool',
    model: {
      config: opts.model.config,
      files: files.map(({ name, sha256, bytes }) => ({ name, sha256, bytes })),
      ...(opts.baseFormat ? { baseFormat: opts.baseFormat } : {}),
    },
    lora: DEFAULT_LORA,
    adapter: [],
    wire: { up: F32, down: F32 },
  };
}
