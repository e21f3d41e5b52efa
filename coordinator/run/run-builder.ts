/**
 * Assembles a run's parts from its config: the engine (trusted model copy, executor — the worker
 * mesh with its result checks, or this process — and the trainer), the network edge (server with
 * admin hooks and the dashboard's monitor) and the workers (local processes, then waiting for
 * enough of them). train.ts runs the steps over what these build.
 */
import { baseForKernels } from '../../shared/model/compact-base.ts';
import { ErrorCodes, LoraMeshError } from '../../shared/errors.ts';
import {
  adapterParameterCount,
  adapterSpec,
  type AdapterState,
  type AdapterTensorSpec,
} from '../../shared/lora/adapter.ts';
import { describeCodec } from '../../shared/protocol/wire-codec.ts';
import type { LoraConfig } from '../../shared/config.ts';
import type { FrozenBase } from '../../shared/lora/params.ts';
import type { CausalLM } from '../../shared/model/causal-lm.ts';
import type { StepOptions } from '../../shared/train/gradients.ts';
import type { InnerOptimizer } from '../../shared/train/local-steps.ts';
import type { Example } from '../../shared/train/micro-batch.ts';
import type { GradientExecutor } from '../engine/trainer.ts';
import { InProcessExecutor } from '../engine/in-process.ts';
import { type DispatchArbiter, MeshExecutor } from '../engine/mesh.ts';
import { Trainer } from '../engine/trainer.ts';
import type { ModelDir } from '../io/model-dir.ts';
import { RunMonitor } from '../net/monitor.ts';
import { parameterShapes } from '../../shared/model/causal-lm.ts';
import type { KernelBackend } from '../../shared/model/memory-plan.ts';
import type { MemoryNeeds, RelayPolicy } from '../../shared/protocol/messages.ts';
import { KERNEL_BACKENDS, memoryCheckFrom, memoryNeeds } from '../engine/worker-policy.ts';
import type { NetLimits } from '../net/net-limits.ts';
import { startServer, type RunningServer } from '../net/server.ts';
import { spawnLocalWorkers } from './local-workers.ts';
import { resultChecks } from './result-checks.ts';
import type { RunControl } from './run-control.ts';
import type { RunConfig } from './run-config.ts';
import type { RunBase } from './run-base.ts';
import { TrustedModel } from './trusted-model.ts';

export interface Engine {
  spec: AdapterTensorSpec[];
  /** the frozen base: what workers fetch and the trusted copy loads */
  base: RunBase;
  /** the coordinator's own model copy: eval loss and result recomputations */
  trusted: TrustedModel;
  /** the worker mesh; null when every micro-batch is computed in this process */
  mesh: MeshExecutor | null;
  trainer: Trainer;
}

export interface EngineInputs {
  model: ModelDir;
  base: RunBase;
  examples: Example[];
  initialAdapter?: AdapterState;
  /**
   * With deployment.inProcess: who computes the run's micro-batches in this process (default: an
   * InProcessExecutor over `parts`). The standing pool passes its lanes (coordinator/pool/lanes.ts).
   */
  executor?: (parts: ExecutorParts) => GradientExecutor;
  /** A host serves the run's workers (the standing pool): its arbiter chooses which worker computes what. */
  host?: RunHost;
  /**
   * The coordinator's model and frozen base, built once and shared by several runs on the same base (the standing
   * pool): the run's eval, result checks and in-process steps use it instead of loading their own copy.
   */
  sharedBase?: () => { model: CausalLM; base: FrozenBase };
  /** makes the run's arithmetic variant this process's kernels' (called before each of the run's computations) */
  selectArithmetic?: () => void;
}

/**
 * Who serves a run's workers instead of the run's own server and local workers: the standing pool
 * (coordinator/pool/pool-mesh.ts), whose workers serve several runs, one attempt at a time.
 */
export interface RunHost {
  arbiter: DispatchArbiter;
  /** the run's mesh is built: the host's workers are offered the run */
  open(mesh: MeshExecutor): void;
  /** the run is over: its workers are told so */
  close(mesh: MeshExecutor, reason: string): void;
}

/** What computing a run's micro-batches in this process takes: the trusted copy's model and base, the run's LoRA. */
export interface ExecutorParts {
  model: CausalLM;
  base: FrozenBase;
  spec: AdapterTensorSpec[];
  lora: LoraConfig;
  inner: InnerOptimizer;
  step: StepOptions;
  /** the run's train.reductionBlock: the order of each step's sum */
  reductionBlock?: number;
  /** makes the run's arithmetic variant the kernels' (before each micro-batch, where runs share a process) */
  select: () => void;
}

/** The trainer over its executor; `log` is read at each call, so it may be rebound later (the monitor). */
export function buildEngine(
  config: RunConfig,
  inputs: EngineInputs,
  runId: string,
  log: (line: string) => void,
): Engine {
  const { model, base } = inputs;
  const { lora, train, wire, local, aggregation, arithmetic } = config.run;
  const spec = adapterSpec(model.config, lora);
  const inner = {
    beta1: train.beta1,
    beta2: train.beta2,
    eps: train.eps,
    weightDecay: train.weightDecay,
    clipNorm: train.clipNorm,
  };
  const step = { recompute: config.deployment.recompute };
  // the base as the kernels hold it (on wasm float32 matrices become compact f32 for the run's arithmetic
  // variant), as every worker builds it from the manifest (shared/worker-loop.ts)
  const trusted = new TrustedModel(
    model.config,
    lora,
    spec,
    inner,
    () => baseForKernels(model.config, base.load()),
    step,
    inputs.sharedBase,
    inputs.selectArithmetic,
  );
  const needsOf = memoryTable(config, inputs);
  const mesh = config.deployment.inProcess
    ? null
    : new MeshExecutor({
        manifest: {
          runId,
          model: {
            config: model.config,
            files: base.files.map(({ name, sha256, bytes }) => ({ name, sha256, bytes })),
            ...(base.format ? { baseFormat: base.format } : {}),
          },
          lora,
          adapter: spec.map((t) => ({ name: t.name, shape: t.shape })),
          wire,
          ...(local ? { local: { steps: local.steps, ...inner } } : {}),
          arithmetic,
        },
        checks: resultChecks(config.limits.defence, wire.up, trusted, log),
        log,
        schedule: config.limits.schedule,
        security: config.limits.security,
        memoryCheck: memoryCheckFrom(needsOf),
        relayPolicy: relayPolicyFor(config, needsOf),
        recompute: config.deployment.recompute,
        reductionBlock: train.reductionBlock,
        ...(inputs.host ? { arbiter: inputs.host.arbiter } : {}),
        ...(aggregation !== 'sum'
          ? { relayRefusal: `--aggregation ${aggregation} needs every result on its own; relays serve sum runs` }
          : {}),
      });
  const parts = (): ExecutorParts => ({
    model: trusted.get().model,
    base: trusted.get().base,
    select: inputs.selectArithmetic ?? (() => {}),
    spec,
    lora,
    inner,
    step,
    reductionBlock: train.reductionBlock,
  });
  const executor: GradientExecutor =
    mesh ??
    inputs.executor?.(parts()) ??
    new InProcessExecutor(trusted.get().model, trusted.get().base, spec, lora, inner, step, train.reductionBlock);
  const trainer = new Trainer(
    {
      model: model.config,
      lora,
      train,
      examples: inputs.examples,
      padId: model.tokenizer.padId,
      initialAdapter: inputs.initialAdapter,
      aggregation,
      local: local ?? undefined,
    },
    executor,
  );
  const localSteps = local
    ? `local steps: H=${local.steps}, inner lr ${local.innerLr}, ` +
      `outer lr ${local.outerLr}, outer momentum ${local.outerMomentum}`
    : '';
  if (mesh)
    log(`wire: ${describeCodec(wire.up)} up, ${describeCodec(wire.down)} down${local ? `; ${localSteps}` : ''}`);
  else if (local) log(localSteps);
  return { spec, base, trusted, mesh, trainer };
}

/** The server for `mesh`: the base's files, the worker socket, the dashboard and the admin hooks into `control`. */
export async function startEdge(
  config: RunConfig,
  engine: Engine & { mesh: MeshExecutor },
  control: RunControl,
  monitor: RunMonitor,
): Promise<RunningServer> {
  const { deployment, limits } = config;
  const { mesh, spec, base } = engine;
  // The largest legitimate frame is a result: 4 bytes per adapter value plus framing.
  const maxPayload = 4 * adapterParameterCount(spec) + 64 * 1024 + 16 * spec.length * 64;
  return startServer({
    host: deployment.host,
    port: deployment.port,
    files: base.files,
    mesh,
    maxPayload,
    heartbeatMs: deployment.heartbeatMs,
    token: deployment.token ?? undefined,
    relayToken: deployment.relayToken ?? undefined,
    // A relay's largest frame is one block sum or one result sent up whole (as large as a result), or the
    // block-result naming at most a step's micro-batches (worker id ≤ 64 and name ≤ 128 characters, four numbers).
    relayMaxPayload: maxPayload + 320 * (config.run.train.globalBatch / config.run.train.microBatch),
    allowedOrigins: deployment.allowedOrigins ?? undefined,
    tls: deployment.tls ?? undefined,
    limits: roomForLocalWorkers(limits.net, deployment.localWorkers),
    headersTimeoutMs: limits.security.handshakeTimeoutMs,
    adminToken: deployment.adminToken ?? undefined,
    dashboardAccess: deployment.dashboardAccess,
    admin: {
      pause: () => control.pause(),
      resume: () => control.resume(),
      stop: () => control.stop(),
      kick: (id) => mesh.kick(id),
    },
    monitor,
  });
}

/** What the dashboard shows of the run (every log line goes there too), and the model's parameter count. */
export function buildMonitor(
  config: RunConfig,
  model: ModelDir,
  engine: Engine,
  runId: string,
): { monitor: RunMonitor; modelParameters: number } {
  const { lora, train, wire, local, arithmetic } = config.run;
  const { mesh, spec } = engine;
  const modelParameters = [...parameterShapes(model.config).values()].reduce(
    (n, s) => n + s.reduce((a, b) => a * b, 1),
    0,
  );
  const monitor = new RunMonitor(
    {
      runId,
      model: model.dir,
      modelType: model.config.model_type,
      modelParameters,
      adapterParameters: adapterParameterCount(spec),
      steps: train.steps,
      lora,
      train,
      wire: mesh ? `${describeCodec(wire.up)} up, ${describeCodec(wire.down)} down` : null,
      local: local ? { steps: local.steps, outerLr: local.outerLr, outerMomentum: local.outerMomentum } : null,
      arithmetic,
    },
    () => mesh?.info() ?? [],
  );
  return { monitor, modelParameters };
}

export interface WorkerStart {
  /** the local worker processes (stop them with stopLocalWorkers) */
  children: ReturnType<typeof spawnLocalWorkers>;
  /** resolves once enough workers are ready, or the run is stopped; rejects if local workers die first */
  ready: Promise<unknown>;
}

/** Starts the deployment's local workers and waits for minWorkers (default: the local ones, at least 1). */
export function startWorkers(
  config: RunConfig,
  mesh: MeshExecutor,
  wsUrl: string,
  control: RunControl,
  log: (line: string) => void,
  child: { stdio?: 'inherit' | 'ignore'; env?: (index: number) => Record<string, string> },
): WorkerStart {
  const { deployment } = config;
  const children =
    deployment.localWorkers > 0
      ? spawnLocalWorkers(deployment.localWorkers, wsUrl, {
          backend: deployment.backend,
          cacheDir: deployment.cacheDir ?? undefined,
          token: deployment.token ?? undefined,
          stdio: child.stdio ?? 'inherit',
          env: child.env,
        })
      : [];
  const minWorkers = deployment.minWorkers ?? Math.max(1, deployment.localWorkers);
  if (deployment.localWorkers === 0) log(`waiting for ${minWorkers} worker(s): loramesh worker ${wsUrl}`);
  const childrenGone = failWhenChildrenExit(children, minWorkers);
  childrenGone.catch(() => {}); // only matters while waiting; workers exit normally at the end
  return { children, ready: Promise.race([mesh.waitForWorkers(minWorkers), childrenGone, control.stopped]) };
}

/**
 * What a joining worker must hold per kernel backend: the model and one micro-batch of the run's longest sequence,
 * planned for that backend (shared/model/memory-plan.ts), if need be with activations recomputed (the worker is
 * then told to), each planned on first use, so a flood of hellos costs a lookup each. The mesh refuses a worker
 * whose stated limit is below it in one line with the plan's numbers (engine/worker-policy.ts); relays and
 * ingestion threads get the whole table in their welcome.
 */
function memoryTable(config: RunConfig, inputs: EngineInputs): (kernels: KernelBackend) => MemoryNeeds {
  const { model, examples } = inputs;
  const { lora, train, baseFormat } = config.run;
  // a loop, not Math.max(...spread): a real data set has more examples than a call has arguments
  let sequenceLength = 1;
  for (const e of examples) sequenceLength = Math.max(sequenceLength, e.tokens.length);
  const table = new Map<KernelBackend, MemoryNeeds>();
  return (backend) => {
    let needs = table.get(backend);
    if (!needs) {
      needs = memoryNeeds({
        config: model.config,
        lora,
        microBatch: train.microBatch,
        sequenceLength,
        backend,
        baseFormat: baseFormat ?? undefined,
        recompute: config.deployment.recompute,
      });
      table.set(backend, needs);
    }
    return needs;
  };
}

/** The run's worker policy for its relays and ingestion threads: its limits, deadlines and memory table. */
function relayPolicyFor(config: RunConfig, needsOf: (kernels: KernelBackend) => MemoryNeeds): () => RelayPolicy {
  return () => ({
    security: config.limits.security,
    schedule: config.limits.schedule,
    ...(config.deployment.recompute ? { recompute: true } : {}),
    memory: Object.fromEntries(KERNEL_BACKENDS.map((b) => [b, needsOf(b)])),
  });
}

/** Local workers all connect from loopback: the per-address caps make room for them (and one more). */
function roomForLocalWorkers(limits: NetLimits, localWorkers: number): NetLimits {
  return {
    ...limits,
    maxWorkersPerAddress: Math.max(limits.maxWorkersPerAddress, localWorkers + 1),
    maxConnectionsPerAddress: Math.max(limits.maxConnectionsPerAddress, 2 * localWorkers + 8),
  };
}

/** Rejects if local workers exit before enough of them are ready, instead of waiting forever. */
function failWhenChildrenExit(children: ReturnType<typeof spawnLocalWorkers>, needed: number): Promise<never> {
  if (children.length === 0) return new Promise(() => {});
  return new Promise((_, reject) => {
    let exited = 0;
    for (const child of children) {
      child.once('exit', (code, signal) => {
        exited++;
        if (children.length - exited < needed) {
          reject(
            new LoraMeshError(
              ErrorCodes.STATE,
              `${exited} local worker(s) exited (last: code ${code}, signal ${signal}) before ${needed} were ready; ` +
                'run `loramesh worker` by hand to see why',
            ),
          );
        }
      });
    }
  });
}
