/**
 * A whole training run: model directory in, adapter in PEFT layout out. With localWorkers ≥ 0 (or
 * remote workers joining) it runs the mesh over real WebSockets; with inProcess it computes every
 * micro-batch in this process, which is the reference the distributed run must equal.
 */
import { nanoid } from 'nanoid';
import cliProgress from 'cli-progress';
import type * as tf from '@tensorflow/tfjs-core';
import { type ArithmeticKernels, DEFAULT_ARITHMETIC, useArithmetic } from '../../shared/arithmetic.ts';
import { selectArithmetic, supportedArithmetic } from '../../kernels/arithmetic.ts';
import { ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';
import {
  adapterParameterCount,
  type AdapterState,
  type AdapterTensorSpec,
  fanInFanOut,
} from '../../shared/lora/adapter.ts';
import { firstNonFinite } from '../../shared/protocol/messages.ts';
import type { Example } from '../../shared/train/micro-batch.ts';
import { saveCheckpoint } from '../io/checkpoint.ts';
import { type spawnLocalWorkers, stopLocalWorkers } from './local-workers.ts';
import type { ModelDir } from '../io/model-dir.ts';
import { resumeFromCheckpoint, type CheckpointConfig, type RunInputs } from './resume.ts';
import { RunControl } from './run-control.ts';
import { prepareBase } from './run-base.ts';
import { buildEngine, buildMonitor, type EngineInputs, startEdge, startWorkers } from './run-builder.ts';
import { resolveRunConfig, type RunConfig, type RunConfigInput } from './run-config.ts';
import { RunDir } from '../io/run-dir.ts';
import type { RunningServer } from '../net/server.ts';
import { type IngestThread, startIngestThreads, threadUrl } from '../relay/ingest.ts';
import { metricsLine, stepRecord, type StepRecord } from '../engine/step-record.ts';
import { NO_TRAFFIC, trafficSince } from '../engine/traffic.ts';
import type { StepMetrics, Trainer } from '../engine/trainer.ts';

/** A run: the inputs the caller loaded, its config, and hooks into its progress. */
export interface RunOptions {
  /** the base model, opened by the caller (the config's run.model defaults to its folder) */
  model: ModelDir;
  examples: Example[];
  /** held-out examples: their mean token loss is computed before training, every evalEvery steps and at the end */
  evalExamples?: Example[];
  /** start from this adapter (e.g. a PEFT adapter being continued) */
  initialAdapter?: AdapterState;
  /**
   * float32 weights already loaded by the caller (for evaluation), reused for the coordinator's own
   * computations (not by a run with a compact base format: it loads the compact file)
   */
  weights?: Map<string, tf.Tensor>;
  /** the run's settings; what is left out comes from DEFAULT_RUN_CONFIG (run-config.ts), all checked */
  config: RunConfigInput;
  /** show a progress bar (default: when stderr is a terminal) */
  progress?: boolean;
  workerOutput?: 'inherit' | 'ignore';
  log?: (line: string) => void;
  /** extra environment per local worker (fault injection in tests) */
  workerEnv?: (index: number) => Record<string, string>;
  /** called once the server listens (before workers are awaited), with its WebSocket and HTTP URLs */
  onListening?: (urls: { wsUrl: string; url: string }) => void | Promise<void>;
  /** the run's ingestion threads once they listen (deployment.ingestThreads; bench:scale reads their CPU) */
  onIngestThreads?: (threads: IngestThread[]) => void;
  /** called after every step (tests use it to add or remove workers mid-run) */
  onStep?: (record: StepRecord) => void | Promise<void>;
  /** stop after the current step, checkpoint and return (SIGINT/SIGTERM) */
  signal?: AbortSignal;
  /** with deployment.inProcess: who computes the micro-batches here (run-builder.ts EngineInputs.executor) */
  executor?: EngineInputs['executor'];
  /** who serves the run's workers instead of its own server and local workers (the standing pool) */
  host?: EngineInputs['host'];
  /** the coordinator's model and base, shared with other runs on the same base (run-builder.ts EngineInputs) */
  sharedBase?: EngineInputs['sharedBase'];
  /** set by runTraining: the run's arithmetic made this process's (before each of its computations) */
  selectArithmetic?: () => void;
  /** this process's wasm kernels, made to use the run's arithmetic variant (default: kernels/arithmetic.ts; tests fake it) */
  arithmetic?: ArithmeticKernels;
}

export interface EvalPoint {
  step: number;
  loss: number;
}

export interface RunResult {
  runId: string;
  runDir: string;
  adapter: AdapterState;
  /**
   * one record per step this process ran: loss, timing, bytes on the wire
   * and the fp32-LoRA / full fine-tuning baselines
   */
  metrics: StepRecord[];
  bytesUp: number;
  bytesDown: number;
  /** bytes between relays (and ingestion threads) and their workers, as the relays report them (0 without) */
  relayedBytesUp: number;
  relayedBytesDown: number;
  workers: number;
  /**
   * what full fine-tuning would move over the same protocol:
   * fp32 gradients of every weight up per micro-batch, all weights down per worker
   */
  fullFineTuneBytes: number;
  adapterParameters: number;
  modelParameters: number;
  evalLosses: EvalPoint[];
  /** the step the run stopped at */
  step: number;
  /** stopped by a signal or the admin before its last step (a checkpoint holds where it stopped) */
  interrupted: boolean;
  /** --resume of a run that had already done all its steps: nothing was trained */
  alreadyFinished: boolean;
  /** refused frames and results by error code, and workers quarantined */
  rejections: Record<string, number>;
  quarantined: number;
}

const PROCESS_KERNELS: ArithmeticKernels = { supported: supportedArithmetic, select: selectArithmetic };

export async function runTraining(opts: RunOptions): Promise<RunResult> {
  const config = resolveRunConfig(opts.config, opts.model.dir);
  const { deployment } = config;
  // This process's own copy (eval loss, result checks, every step with --in-process) computes with the run's
  // variant like its workers, or the run stops here, before its folder exists: a spot check in other arithmetic
  // would convict honest workers, and an --in-process run would not be this run.
  const selectArithmetic = () =>
    useArithmetic(config.run.arithmetic, opts.arithmetic ?? PROCESS_KERNELS, 'the coordinator');
  selectArithmetic();
  if (config.run.arithmetic !== DEFAULT_ARITHMETIC)
    (opts.log ?? console.log)(`arithmetic: ${config.run.arithmetic} (workers without it are refused)`);
  const runId =
    deployment.runId ?? `${new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-')}-${nanoid(6)}`;
  // The folder's run.lock is held for the whole run, whichever way it ends.
  const runDir = RunDir.open(deployment.outDir, runId, {
    mode: deployment.resume ? 'resume' : 'new',
    log: opts.log,
  });
  try {
    return await trainInRunDir({ ...opts, selectArithmetic }, config, runId, runDir);
  } finally {
    runDir.close();
  }
}

async function trainInRunDir(opts: RunOptions, config: RunConfig, runId: string, runDir: RunDir): Promise<RunResult> {
  const userLog = opts.log ?? ((line: string) => console.log(line));
  let log = userLog;
  const { run, deployment } = config;
  const { model } = opts;
  const { lora, train, wire, local } = run;
  const checkpointConfig: CheckpointConfig = {
    model: model.dir,
    lora,
    train,
    local: local ?? undefined,
    // only when set: a float32 run's checkpoints read as they did before compact bases
    ...(run.baseFormat ? { baseFormat: run.baseFormat } : {}),
  };
  // What the run was made from, by content: a resume refuses a model or data set that changed in place.
  const inputs: RunInputs = {
    modelFiles: model.files.map(({ name, sha256 }) => ({ name, sha256 })),
    examples: opts.examples.length,
  };
  if (!deployment.resume) {
    runDir.writeConfig({
      runId,
      ...checkpointConfig,
      wire,
      modelConfig: model.config,
      data: run.data,
      localWorkers: deployment.localWorkers,
      inProcess: deployment.inProcess,
      checkpointEvery: run.checkpointEvery,
      aggregation: run.aggregation,
      arithmetic: run.arithmetic,
      ...inputs,
    });
  }

  // 1. The engine: the trainer over the worker mesh (with its result checks) or this process, on the
  //    run's base (with --base-format, one compact file quantized once and cached).
  const base = await prepareBase(config, model, (line) => log(line), opts.weights);
  const engine = buildEngine(config, { ...opts, base }, runId, (line) => log(line));
  const { spec, trusted, mesh, trainer } = engine;

  // 2. Resume, if asked; a finished run has nothing to do.
  let checkpointedStep = -1;
  if (deployment.resume) {
    const path = resumeFromCheckpoint(trainer, runDir, checkpointConfig, inputs, log);
    checkpointedStep = trainer.step;
    if (trainer.done) {
      mesh?.close();
      log(
        `run ${runId} already finished: step ${trainer.step} of ${train.steps}; ` +
          'nothing to do (raise --steps to train further)',
      );
      return finishedResult(runId, runDir.path, trainer, spec);
    }
    log(`resuming ${runId} at step ${trainer.step} of ${train.steps} from ${path}`);
  }
  // Checkpoints hold what resume needs (state + config); the ledger stays in ledger.jsonl, truncated on resume.
  const checkpoint = () => {
    if (checkpointedStep === trainer.step) return;
    log(
      `checkpoint: ${saveCheckpoint(
        runDir.path,
        trainer.exportState(),
        { config: checkpointConfig },
        deployment.keepCheckpoints,
      )}`,
    );
    checkpointedStep = trainer.step;
  };

  // 3. What the run shows: the dashboard's monitor (every log line goes there too) and the eval loss.
  const { monitor, modelParameters } = buildMonitor(config, model, engine, runId);
  log = (line: string) => {
    monitor.log(line);
    userLog(line);
  };
  const evaluate = trusted.evaluator(opts.evalExamples, train.microBatch, model.tokenizer.padId);
  const evalLosses: EvalPoint[] = [];
  const runEval = () => {
    if (!evaluate) return;
    const loss = evaluate(trainer.adapter);
    evalLosses.push({ step: trainer.step, loss });
    monitor.evalPoint(trainer.step, loss);
    runDir.appendMetrics({ step: trainer.step, eval_loss: loss });
    log(`step ${trainer.step}: eval loss ${loss.toFixed(4)}`);
  };

  // 4. Control (signals, admin) and the network edge.
  const control = new RunControl(opts.signal, () =>
    mesh?.abort(new LoraMeshError(ErrorCodes.STATE, 'the run was stopped')),
  );
  let server: RunningServer | null = null;
  let children: ReturnType<typeof spawnLocalWorkers> = [];
  let threads: IngestThread[] = [];
  if (mesh && opts.host) {
    opts.host.open(mesh);
  } else if (mesh) {
    server = await startEdge(config, { ...engine, mesh }, control, monitor);
    // ingestion threads are relays this process starts, linked to its mesh by MessagePorts (relay/ingest.ts);
    // with them the address is announced once they listen: a worker that said hello before would stay
    if (deployment.ingestThreads > 0) {
      const secure = !!deployment.tls;
      threads = await startIngestThreads(
        deployment.ingestThreads,
        {
          parent: server.wsUrl,
          // the ports after the coordinator's (8787: 8788, 8789…), or free ones when it picked its own
          firstPort: deployment.port === 0 ? 0 : deployment.port + 1,
          host: deployment.host,
          workerToken: deployment.token ?? undefined,
          rootPort: Number(new URL(server.wsUrl).port),
          secure,
          tls: deployment.tls ?? undefined,
          allowedOrigins: deployment.allowedOrigins ?? undefined,
          limits: config.limits.net,
          heartbeatMs: deployment.heartbeatMs,
        },
        mesh,
        log,
      );
      // a worker's hello here is answered with the next thread's socket, as the worker reached this machine
      let next = 0;
      mesh.redirect = (peer) => {
        const t = threads[next++ % threads.length];
        return threadUrl(peer.hostname ?? deployment.host, t.port, secure);
      };
      log(`ingestion threads: ${threads.length}, on ports ${threads.map((t) => t.port).join(', ')}`);
      opts.onIngestThreads?.(threads);
    }
    log(`coordinator listening on ${server.wsUrl} (run ${runId})`);
    await opts.onListening?.({ wsUrl: server.wsUrl, url: server.url });
  }

  // 5. Workers, then the steps.
  const metrics: StepRecord[] = [];
  const showBar = opts.progress ?? process.stderr.isTTY;
  const bar = showBar
    ? new cliProgress.SingleBar(
        {
          format: 'train |{bar}| step {value}/{total} | loss {loss} | {tps} tok/s | ETA {eta_formatted}',
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  try {
    if (mesh && server) {
      const workers = startWorkers(config, mesh, server.wsUrl, control, log, {
        stdio: opts.workerOutput,
        env: opts.workerEnv,
      });
      children = workers.children;
      await workers.ready;
    }
    bar?.start(train.steps, trainer.step, { loss: '-', tps: '-' });
    if (!control.stopRequested) {
      runEval();
      trainer.start();
    }
    let lastTraffic = mesh?.traffic.snapshot() ?? NO_TRAFFIC;
    const sizes = { adapterParameters: adapterParameterCount(spec), modelParameters, globalBatch: train.globalBatch };
    while (!trainer.done && !control.stopRequested) {
      let m: StepMetrics;
      try {
        m = await trainer.runStep();
      } catch (err) {
        if (control.stopRequested) break;
        // A failed step left the trainer at the last whole step (nothing non-finite is ever applied):
        // keep that state, then stop with the error.
        if (trainer.step > 0) checkpoint();
        throw err;
      }
      const now = mesh?.traffic.snapshot() ?? NO_TRAFFIC;
      const record = stepRecord(m, trafficSince(lastTraffic, now), mesh?.readyCount() ?? 0, sizes);
      lastTraffic = now;
      metrics.push(record);
      runDir.appendLedger(
        m.step,
        mesh
          ? mesh.lastLedger
          : [{ step: m.step - 1, worker: 'in-process', microBatches: train.globalBatch / train.microBatch }],
      );
      monitor.step(record);
      runDir.appendMetrics(metricsLine(record));
      bar?.update(m.step, { loss: m.loss.toFixed(4), tps: m.tokensPerSecond.toFixed(0) });
      await opts.onStep?.(record);
      if (evaluate && m.step % deployment.evalEvery === 0 && m.step !== train.steps) runEval();
      if (run.checkpointEvery && m.step % run.checkpointEvery === 0) checkpoint();
      await control.holdIfPaused(log, m.step);
      if (!bar && (m.step % 10 === 0 || m.step === train.steps))
        log(
          `step ${m.step}/${train.steps} loss ${m.loss.toFixed(4)} lr ${m.lr.toExponential(2)} ` +
            `${m.tokensPerSecond.toFixed(0)} tok/s`,
        );
    }
    if (trainer.done) {
      runEval();
      checkpoint(); // the last step always has a checkpoint, so a resume knows the run is finished
    } else {
      if (trainer.step > 0) checkpoint();
      log(
        `interrupted at step ${trainer.step} of ${train.steps}; ` +
          `${trainer.step > 0 ? `continue with: loramesh train --resume ${runDir.path}` : 'nothing to save yet'}`,
      );
    }
  } finally {
    bar?.stop();
    monitor.done();
    const ending = trainer.done ? 'training complete' : 'the run was stopped';
    mesh?.finish(ending);
    if (mesh) opts.host?.close(mesh, ending);
    mesh?.close();
    await stopLocalWorkers(children);
    // the threads pass the run's end on to their workers before they stop
    await Promise.all(threads.map((t) => t.close()));
    await server?.close();
  }

  // 6. The adapter (never a non-finite one) and the run's summary.
  for (const [name, values] of trainer.adapter) {
    if (firstNonFinite(values) >= 0)
      fail(ErrorCodes.NON_FINITE, `the adapter tensor ${name} is not finite at step ${trainer.step}; not writing it`);
  }
  runDir.writeAdapter(trainer.spec, trainer.adapter, lora, model.dir, fanInFanOut(model.config, lora));
  return {
    runId,
    runDir: runDir.path,
    adapter: trainer.adapter,
    metrics,
    bytesUp: mesh?.bytesIn ?? 0,
    bytesDown: mesh?.bytesOut ?? 0,
    relayedBytesUp: mesh?.traffic.relayedInTotal ?? 0,
    relayedBytesDown: mesh?.traffic.relayedOutTotal ?? 0,
    workers: Math.max(1, deployment.localWorkers),
    fullFineTuneBytes: metrics.reduce((n, r) => n + r.fullFineTuneBytes, 0),
    adapterParameters: adapterParameterCount(trainer.spec),
    modelParameters,
    evalLosses,
    step: trainer.step,
    interrupted: !trainer.done,
    alreadyFinished: false,
    rejections: Object.fromEntries(mesh?.rejections ?? []),
    quarantined: mesh?.quarantinedCount ?? 0,
  };
}

/** The result of a resumed run that had already done all its steps: nothing was trained. */
function finishedResult(runId: string, runDir: string, trainer: Trainer, spec: AdapterTensorSpec[]): RunResult {
  return {
    runId,
    runDir,
    adapter: trainer.adapter,
    metrics: [],
    bytesUp: 0,
    bytesDown: 0,
    relayedBytesUp: 0,
    relayedBytesDown: 0,
    workers: 0,
    fullFineTuneBytes: 0,
    adapterParameters: adapterParameterCount(spec),
    modelParameters: 0,
    evalLosses: [],
    step: trainer.step,
    interrupted: false,
    alreadyFinished: true,
    rejections: {},
    quarantined: 0,
  };
}
