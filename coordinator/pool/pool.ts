/**
 * `loramesh pool`: a long-running coordinator for one base model (issue 18). Tenants upload data and
 * submit runs over the HTTP API (api.ts); the registry (registry.ts) keeps every acknowledged change in
 * SQLite; each run trains through `runTraining`, the code `train` runs, in its own folder
 * (<pool>/runs/<run id>/, checkpointed as a run folder is), its micro-batches served by the lanes
 * (lanes.ts) in fair-share order. A pool restarted after a kill resumes every unfinished run from its
 * latest checkpoint; each still ends bit-identical to the run trained alone.
 *
 * Stage: the pool process computes the micro-batches itself. Workers joining the pool over its mesh
 * (and staying across runs) is the next step; the lanes are where they plug in.
 *
 * Pool folder: pool.lock (one live process), pool.sqlite, uploads/<id>/<file>, runs/<run id>/.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { examplesFor } from '../io/dataset.ts';
import type { ModelDir } from '../io/model-dir.ts';
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
  backend?: BackendName;
  log?: (line: string) => void;
  /** every micro-batch as it is computed (tests; the pool's fairness figures) */
  onServe?: (s: Served) => void;
}

export class Pool {
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private closing = false;

  private constructor(
    readonly dir: string,
    readonly url: string,
    readonly registry: PoolRegistry,
    private readonly server: Server,
    private readonly lock: RunLock,
    private readonly lanes: PoolLanes,
    private readonly opts: PoolOptions,
    private readonly base: PoolBase,
  ) {}

  static async start(opts: PoolOptions): Promise<Pool> {
    const log = opts.log ?? ((line: string) => console.log(line));
    mkdirSync(opts.dir, { recursive: true });
    const lock = acquireRunLock(opts.dir, log);
    let registry: PoolRegistry | null = null;
    try {
      registry = PoolRegistry.open(join(opts.dir, 'pool.sqlite'), { ownsFolder: true });
      const base: PoolBase = { model: opts.model.dir, config: opts.model.config, baseFormat: opts.baseFormat ?? null };
      const lanes = new PoolLanes(opts.onServe);
      let pool: Pool | null = null;
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
      });
      const server = createServer((req, res) => {
        if (!handle(req, res)) res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve);
      });
      const address = server.address() as AddressInfo;
      const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
      pool = new Pool(opts.dir, url, registry, server, lock, lanes, opts, base);
      log(`pool: ${opts.model.dir} at ${url} (folder ${opts.dir})`);
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
        pool.launch(run, submission, existsSync(join(opts.dir, 'runs', run.id)));
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
              inProcess: true,
              localWorkers: 0,
              backend: this.opts.backend ?? 'wasm',
            },
          },
          signal: abort.signal,
          progress: false,
          log: (line) => log(`[${run.id}] ${line}`),
          onStep: (record) => {
            // the registry's step is for `runs` and the API (resuming reads the checkpoint): written at each
            // checkpoint and otherwise once a second at most, not an fsync every step on the lanes' thread
            const every = submission.settings.checkpointEvery;
            const checkpointed = every > 0 && record.step % every === 0;
            if (this.closing || (!checkpointed && performance.now() - lastWrite < 1000)) return;
            lastWrite = performance.now();
            this.registry.update(run.id, { step: record.step });
          },
          executor: (parts) => this.lanes.lane(run.id, submission.share, parts),
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
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.registry.close();
    this.lock.release();
  }
}
