/**
 * The worker, independent of platform and transport: Node processes and browser tabs run this same
 * loop. It answers coordinator messages with messages; the entry point owns the socket, the tfjs
 * backend and how base-model files are fetched and cached.
 */
import { baseForKernels } from './model/compact-base.ts';
import { type ArithmeticKernels, DEFAULT_ARITHMETIC, useArithmetic } from './arithmetic.ts';
import { checkModelConfig } from './config.ts';
import { ErrorCodes, LoraMeshError } from './errors.ts';
import { adapterParameterCount, cloneAdapter, type AdapterTensorSpec } from './lora/adapter.ts';
import { FrozenBase } from './lora/params.ts';
import type { BaseWeights } from './model/compact-base.ts';
import { createModel, type CausalLM } from './model/causal-lm.ts';
import { decodeMessage, encodeMessage } from './protocol/codec.ts';
import {
  flattenTensors,
  PROTOCOL_VERSION,
  splitTensors,
  unpackFloats,
  type Assign,
  type AssignLocal,
  type Message,
  type Params,
  type RunManifest,
  type WorkerMessage,
} from './protocol/messages.ts';
import { cleanPeerText } from './protocol/peer-text.ts';
import { isPermanentCode, MAX_PEER_TEXT, refusalFromReject, type Refusal } from './protocol/refusal.ts';
import { CODECS, ErrorFeedback, F32 } from './protocol/wire-codec.ts';
import { BASE_FORMATS } from './quant/formats.ts';
import { computeGradientsAsync, type GradientResult, type MixedJob, type StepOptions } from './train/gradients.ts';
import { MIX_MAX_RUNS, MixBatcher } from './train/mixed-batcher.ts';
import { type KernelBackend, planMemory } from './model/memory-plan.ts';
import { runLocalJob } from './train/local-steps.ts';

export interface WorkerPlatform {
  backend: string;
  platform: 'node' | 'browser';
  /** the device behind the backend, when known (e.g. the WebGPU adapter) */
  adapter?: string;
  /** true when running on a slow fallback (cpu, software WebGPU) */
  slow?: boolean;
  /** bytes its tensors can use at most, when the backend has a hard limit (the wasm heap) */
  memoryLimit?: number;
  /**
   * its wasm kernels' arithmetic variants (kernels/arithmetic.ts): what hello offers and what the run's manifest
   * selects before the first assignment. Absent (simulated workers, which compute nothing): simd128 only.
   */
  arithmetic?: ArithmeticKernels;
  /**
   * fetches (or reads from cache) the base-model files, verifies their sha256, returns the weights:
   * float32 tensors, or CompactWeights when the manifest names a base format
   */
  loadBase(manifest: RunManifest): Promise<BaseWeights>;
  log(line: string): void;
}

export interface WorkerOptions {
  token?: string;
  name?: string;
  /** fault injection and instrumentation points (see worker/faults.ts) */
  hooks?: WorkerHooks;
}

export interface WorkerHooks {
  /** replaces the gradient computation (simulated workers in benchmarks); the base model is then never loaded */
  compute?(a: Assign | AssignLocal, adapter: ReadonlyMap<string, Float32Array>): Promise<GradientResult>;
  afterParams?(paramVersion: number): void | Promise<void>;
  /** after computing, before the result is sent; may replace the result (fault injection) */
  beforeResult?(a: Assign | AssignLocal, result: WorkerMessage): void | WorkerMessage | Promise<void | WorkerMessage>;
  /** right after the result was handed to the transport */
  afterResult?(a: Assign | AssignLocal): void | Promise<void>;
}

/**
 * A pool's base, loaded once for every run the worker computes there: each run's session uses it instead of
 * loading its own. `files` identifies it (what a run's manifest must name).
 */
interface SharedBase {
  model: CausalLM;
  base: FrozenBase;
  files: string;
  /** every run's computations, in turn, several runs' micro-batches in one pass where they can be */
  mixer: MixBatcher | null;
}

const baseKey = (model: RunManifest['model']) =>
  JSON.stringify([model.files.map((f) => f.sha256), model.baseFormat ?? null]);

export class WorkerSession {
  workerId: string | null = null;
  manifest: RunManifest | null = null;
  paramVersion = -1;
  assignmentsDone = 0;
  finished = false;
  /**
   * The first refusal that retrying cannot change (quarantine, protocol version, codec…), from a
   * reject frame; the entry point stops reconnecting and reports it, so the session does not log it.
   */
  refused: Refusal | null = null;
  /** where to connect if this coordinator cannot be reached (welcome.fallback: a relay's parent, other relays) */
  fallback: string[] = [];
  /** the coordinator sent this worker elsewhere (one of its ingestion threads): connect there next */
  redirect: string | null = null;
  private model: CausalLM | null = null;
  private base: FrozenBase | null = null;
  private spec: AdapterTensorSpec[] = [];
  /** how this worker computes a step (welcome.recompute) */
  private step: StepOptions = {};
  /** the parameters as the coordinator sent them: flat in manifest order, and named views of it */
  private flat: Float32Array = new Float32Array(0);
  private adapter = new Map<string, Float32Array>();
  /** error feedback of the results' codec: what earlier results could not carry goes with the next */
  private up: ErrorFeedback | null = null;
  private queue: Promise<void> = Promise.resolve();
  /** In a standing pool: each open run's own session, speaking the run's protocol in its channel. */
  private readonly runs = new Map<string, WorkerSession>();
  /** this connection is a pool's (pool-welcome), not one run's */
  private poolBase: SharedBase | null = null;

  /** `shared`: this session is one run of a pool, computing on the pool's base. */
  constructor(
    private readonly platform: WorkerPlatform,
    private readonly options: WorkerOptions = {},
    private readonly shared: SharedBase | null = null,
  ) {}

  /** The runs a pool has open on this worker now. */
  get openRuns(): string[] {
    return [...this.runs.keys()];
  }

  /** The first frame of a connection (a new one after a reconnect: a pool opens its runs on it afresh). */
  hello(): Uint8Array {
    this.runs.clear();
    return encodeMessage({
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      token: this.options.token,
      name: this.options.name,
      backend: this.platform.backend,
      platform: this.platform.platform,
      adapter: this.platform.adapter,
      slow: this.platform.slow,
      codecs: [...CODECS],
      baseFormats: [...BASE_FORMATS],
      arithmetic: [...(this.platform.arithmetic?.supported() ?? [DEFAULT_ARITHMETIC])],
      ...(this.platform.memoryLimit ? { memoryLimit: this.platform.memoryLimit } : {}),
      multiRun: MIX_MAX_RUNS,
    });
  }

  /**
   * Whether several runs' micro-batches fit the worker's memory in one pass: planned as one micro-batch of all
   * their sequences at the longest length, with the largest rank on every run's targets (an over-estimate).
   */
  private mixFits(manifest: RunManifest): (jobs: MixedJob[]) => boolean {
    const limit = this.platform.memoryLimit;
    const backend = ['wasm', 'webgpu', 'tensorflow'].includes(this.platform.backend)
      ? (this.platform.backend as KernelBackend)
      : 'cpu';
    return (jobs) => {
      if (!limit) return true;
      const plan = planMemory({
        config: manifest.model.config,
        lora: {
          r: Math.max(...jobs.map((j) => j.lora.r)),
          targetModules: [...new Set(jobs.flatMap((j) => j.lora.targetModules))],
        },
        microBatch: jobs.reduce((n, j) => n + j.mb.batch, 0),
        sequenceLength: Math.max(...jobs.map((j) => j.mb.time)),
        ...(manifest.model.baseFormat ? { baseFormat: manifest.model.baseFormat } : {}),
        backend,
      });
      return plan.total - plan.parts.runtime <= limit;
    };
  }

  /**
   * The run's arithmetic, before anything is computed: the kernels use it from now on. A coordinator refuses a
   * hello without it, so failing here means the manifest asks what hello did not offer.
   */
  private selectArithmetic(manifest: RunManifest, quiet = false): void {
    const variant = manifest.arithmetic ?? DEFAULT_ARITHMETIC;
    const kernels = this.platform.arithmetic ?? { supported: () => [DEFAULT_ARITHMETIC], select: () => {} };
    useArithmetic(variant, kernels, 'this worker');
    if (variant !== DEFAULT_ARITHMETIC && !quiet) this.platform.log(`computing with arithmetic ${variant}`);
  }

  /** The base as the kernels hold it, built once from the weights the platform loads for `manifest`. */
  private async loadBase(manifest: RunManifest): Promise<{ model: CausalLM; base: FrozenBase }> {
    const config = checkModelConfig(manifest.model.config);
    const weights = await this.platform.loadBase(manifest);
    // the base as the kernels hold it (on wasm: float32 matrices as compact f32), the same as the
    // coordinator's trusted copy (coordinator/run/run-builder.ts)
    return { model: createModel(config), base: new FrozenBase(config, baseForKernels(config, weights)) };
  }

  /** A copy of the parameters held now, by tensor name (the browser page's debug record). */
  heldParams(): Record<string, Float32Array> {
    return Object.fromEntries(cloneAdapter(this.adapter));
  }

  /** Handles frames strictly in arrival order; `send` gets each reply. */
  receive(bytes: Uint8Array, send: (bytes: Uint8Array) => void): Promise<void> {
    let decoded: { message: Message } | { error: unknown };
    try {
      decoded = { message: decodeMessage(bytes) };
    } catch (error) {
      decoded = { error };
    }
    // A refusal is noted at once, not behind a computation still in the queue: the entry point
    // checks it when the socket closes, which follows the reject frame right away.
    if ('message' in decoded && decoded.message.type === 'reject') {
      this.refused ??= refusalFromReject(decoded.message.code, decoded.message.message);
    }
    // So is a redirect: the coordinator closes the socket right after it.
    if ('message' in decoded && decoded.message.type === 'redirect') this.redirect = decoded.message.url;
    const next = () => {
      if ('error' in decoded) throw decoded.error;
      return this.handle(decoded.message, send);
    };
    this.queue = this.queue.then(next).catch((err) => {
      const code = err instanceof LoraMeshError ? err.code : 'LM_ERR_INTERNAL';
      this.platform.log(`error: ${(err as Error).message}`);
      // Failing an assignment names it: the coordinator then hands it to someone else at once; a
      // worker-error that names nothing this worker holds counts against it as a bad frame.
      const failed =
        'message' in decoded && (decoded.message.type === 'assign' || decoded.message.type === 'assign-local')
          ? decoded.message.assignmentId
          : undefined;
      send(
        encodeMessage({
          type: 'worker-error',
          code,
          message: (err as Error).message,
          ...(failed ? { assignmentId: failed } : {}),
        }),
      );
    });
    return this.queue;
  }

  private async handle(message: Message, send: (bytes: Uint8Array) => void): Promise<void> {
    const reply = (m: WorkerMessage) => send(encodeMessage(m));
    switch (message.type) {
      case 'welcome': {
        this.workerId = message.workerId;
        this.manifest = message.manifest;
        this.fallback = message.fallback ?? [];
        this.selectArithmetic(message.manifest);
        this.step = { recompute: message.recompute === true };
        if (this.step.recompute) this.platform.log('recomputing activations in the backward pass (less memory)');
        if (this.shared) {
          // one run of a pool: it computes on the pool's base, which its manifest must name
          if (baseKey(message.manifest.model) !== this.shared.files)
            throw new LoraMeshError(
              ErrorCodes.MODEL,
              `run ${message.manifest.runId} names a base this pool did not load`,
            );
          this.model = this.shared.model;
          this.base = this.shared.base;
        } else if (!this.base && !this.options.hooks?.compute) {
          ({ model: this.model, base: this.base } = await this.loadBase(message.manifest));
        }
        this.spec = message.manifest.adapter.map((t) => ({
          ...t,
          modulePath: t.name.replace(/\.lora_[AB]$/, ''),
          which: t.name.endsWith('lora_A') ? 'A' : 'B',
        }));
        this.up = new ErrorFeedback(message.manifest.wire.up);
        this.platform.log(`joined run ${message.manifest.runId} as ${message.workerId}`);
        reply({ type: 'ready', paramVersion: this.paramVersion });
        return;
      }
      case 'pool-welcome': {
        if (this.shared || this.manifest) throw new LoraMeshError(ErrorCodes.STATE, 'pool-welcome after a welcome');
        this.workerId = message.workerId;
        if (!this.poolBase) {
          if (this.options.hooks?.compute) {
            // simulated compute: nothing to load or batch
            const none = null as unknown;
            this.poolBase = {
              model: none as CausalLM,
              base: none as FrozenBase,
              files: baseKey(message.manifest.model),
              mixer: null,
            };
          } else {
            const { model, base } = await this.loadBase(message.manifest);
            const mixer = new MixBatcher(model, base, this.mixFits(message.manifest), (line) =>
              this.platform.log(line),
            );
            this.poolBase = { model, base, files: baseKey(message.manifest.model), mixer };
          }
        } else if (this.poolBase.files !== baseKey(message.manifest.model)) {
          throw new LoraMeshError(ErrorCodes.MODEL, 'the pool now serves another base; restart this worker');
        }
        this.platform.log(`joined the pool as ${message.workerId}: base loaded once for every run`);
        reply({ type: 'ready', paramVersion: -1 });
        return;
      }
      case 'run-open': {
        if (!this.poolBase) throw new LoraMeshError(ErrorCodes.STATE, 'run-open before pool-welcome');
        const { runId } = message;
        if (this.runs.has(runId)) return;
        const run = new WorkerSession(
          this.platform,
          { name: this.options.name, hooks: this.options.hooks },
          this.poolBase,
        );
        this.runs.set(runId, run);
        reply({ type: 'channel', runId, frame: run.hello() });
        return;
      }
      case 'channel': {
        const run = this.runs.get(message.runId);
        if (!run) return; // a frame of a run closed here: nothing to do
        // not awaited: the run's session keeps its own order, and another run's frames need not wait for it
        void run
          .receive(message.frame, (frame) => reply({ type: 'channel', runId: message.runId, frame }))
          .then(() => {
            if (run.finished) this.runs.delete(message.runId);
          });
        return;
      }
      case 'run-close':
        if (this.runs.delete(message.runId))
          this.platform.log(`run ${message.runId} closed: ${cleanPeerText(message.reason, MAX_PEER_TEXT)}`);
        return;
      case 'params':
        this.applyParams(message);
        await this.options.hooks?.afterParams?.(message.paramVersion);
        return;
      case 'assign':
      case 'assign-local': {
        const result = await this.compute(message);
        reply((await this.options.hooks?.beforeResult?.(message, result)) ?? result);
        await this.options.hooks?.afterResult?.(message);
        return;
      }
      case 'reject':
        // a permanent one was noted in receive(); the entry point reports it
        if (isPermanentCode(message.code)) return;
        this.platform.log(
          `coordinator rejected a message: ${message.code} ${cleanPeerText(message.message, MAX_PEER_TEXT)}`,
        );
        return;
      case 'done':
        this.finished = true;
        this.platform.log(`run finished: ${message.reason}`);
        return;
      case 'redirect':
        this.redirect = message.url;
        this.platform.log(`sent to ${message.url}`);
        return;
      default:
        throw new LoraMeshError(ErrorCodes.STATE, `a worker does not accept ${message.type} messages`);
    }
  }

  /**
   * A full vector replaces the parameters; a delta (lossy down codecs) is added, in float32 like the coordinator's
   * copy.
   */
  private applyParams(message: Params): void {
    if (!this.manifest) throw new LoraMeshError(ErrorCodes.STATE, 'params before welcome');
    // Full vectors are always f32 (exact); deltas come in the run's down codec.
    const codec = message.deltaFrom === undefined ? F32 : this.manifest.wire.down;
    const values = unpackFloats(message.tensors, codec, adapterParameterCount(this.manifest.adapter), 'params.tensors');
    if (message.deltaFrom === undefined) {
      this.flat = values;
    } else {
      if (message.deltaFrom !== this.paramVersion)
        throw new LoraMeshError(
          ErrorCodes.STALE,
          `params delta from version ${message.deltaFrom}, I hold ${this.paramVersion}`,
        );
      for (let i = 0; i < values.length; i++) this.flat[i] += values[i];
    }
    this.adapter = splitTensors(this.flat, this.manifest.adapter);
    this.paramVersion = message.paramVersion;
  }

  private async compute(a: Assign | AssignLocal): Promise<WorkerMessage> {
    const simulate = this.options.hooks?.compute;
    if (!this.manifest || (!simulate && (!this.model || !this.base)))
      throw new LoraMeshError(ErrorCodes.STATE, 'assignment before welcome');
    if (a.paramVersion !== this.paramVersion) {
      return {
        type: 'worker-error',
        assignmentId: a.assignmentId,
        code: ErrorCodes.STALE,
        message: `assignment for version ${a.paramVersion}, I hold ${this.paramVersion}`,
      };
    }
    const started = performance.now();
    const { lora } = this.manifest;
    const manifest = this.manifest;
    // in a pool, the runs' computations take turns (and share passes) in the pool's batcher, each selecting its
    // own arithmetic first
    const mixer = this.shared?.mixer;
    const variant = manifest.arithmetic ?? DEFAULT_ARITHMETIC;
    const select = () => this.selectArithmetic(manifest, true);
    let r: GradientResult;
    if (simulate) r = await simulate(a, this.adapter);
    else if (a.type === 'assign') {
      const job = { spec: this.spec, adapter: this.adapter, lora, mb: a.microBatch };
      r = mixer
        ? await mixer.gradients(job, this.step, variant, select)
        : await computeGradientsAsync(this.model!, this.base!, this.spec, this.adapter, lora, a.microBatch, this.step);
    } else if (!manifest.local) throw new LoraMeshError(ErrorCodes.STATE, 'assign-local in a run without local steps');
    else {
      const local = manifest.local;
      const job = () =>
        runLocalJob(this.model!, this.base!, this.spec, this.adapter, lora, a.microBatches, a.lr, local, this.step);
      r = mixer ? await mixer.alone(variant, select, job) : await job();
    }
    this.assignmentsDone++;
    return {
      type: 'result',
      assignmentId: a.assignmentId,
      paramVersion: a.paramVersion,
      tokenCount: r.tokenCount,
      lossSum: r.lossSum,
      computeMs: performance.now() - started,
      grads: this.up!.encode(flattenTensors(r.grads, this.manifest.adapter)),
    };
  }
}
