/**
 * loramesh command line: train (coordinator), worker, generate, merge, logits, demo; the standing pool:
 * pool, tenant, submit, runs, fetch, cancel.
 * Run `loramesh <command> --help` for every option and its default.
 */
import { Command, CommanderError } from 'commander';
import { DEFAULT_LORA, DEFAULT_TRAIN } from '../shared/config.ts';
import { contextLength } from '../shared/config.ts';
import type { AdapterState } from '../shared/lora/adapter.ts';
import { LoraMeshError } from '../shared/errors.ts';
import { BACKENDS } from '../node/backend-names.ts';
import { AGGREGATIONS } from '../shared/train/robust.ts';
import { ARITHMETIC_VARIANTS } from '../shared/arithmetic.ts';
import { defaultCacheDir } from '../node/cache-dir.ts';
import { addresses, host, int, modules, num, oneOf, outlierFactor, port, tokenIds } from './cli/options.ts';
import { DEFAULT_NET_LIMITS } from './net/net-limits.ts';
import { registerAnalysisCommands } from './cli/analysis-cli.ts';
import { DEMO_MODEL_DIR } from './io/paths.ts';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { CODECS, DEFAULT_INT8_BLOCK } from '../shared/protocol/wire-codec.ts';
import { BASE_FORMATS, DEFAULT_BASE_BLOCK } from '../shared/quant/formats.ts';
import { DEFAULT_SECURITY } from './engine/mesh.ts';
import { CLI_DEFAULTS, type DataSpec, DEFAULT_RUN_CONFIG, resolveRunConfig } from './run/run-config.ts';
import { configFromFlags } from './cli/config-flags.ts';
import { readFlagFile } from './cli/preflight.ts';
import { checkListen } from './net/listen.ts';
import { checkRunShape, resumeShape, runShapeFrom, type RunShape } from './cli/resume-flags.ts';

function readRunConfig(dir: string): RunShape {
  const file = join(dir, 'run_config.json');
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    fail(ErrorCodes.CONFIG, `--resume ${dir}: cannot read run_config.json (${(err as Error).message})`);
  }
  return checkRunShape(raw, file);
}

/**
 * Exit codes: 0 done, 1 internal error, 2 a refused input or setting (one line with its code),
 * 128+n stopped by signal n.
 */
const DEPLOY = DEFAULT_RUN_CONFIG.deployment;
const DEFENCE = DEFAULT_RUN_CONFIG.limits.defence;
const OUTER = DEFAULT_RUN_CONFIG.run.outer;
const LOOPBACK = ['127.0.0.1', 'localhost', '::1'];
const EXIT = { internal: 1, usage: 2, SIGINT: 130, SIGTERM: 143 } as const;

// A bad flag is one line with its code, not the error followed by the whole help.
const program = new Command('loramesh')
  .description('Distributed LoRA fine-tuning over a WebSocket worker mesh')
  .exitOverride()
  .configureOutput({
    outputError: (text, write) => write(`loramesh: ${ErrorCodes.CONFIG}: ${text.replace(/^error: /, '')}`),
  });

/** The flags that define a run's settings (train's and a pool submission's; run-config.ts RunSettings). */
function addRunSettingOptions(cmd: Command): Command {
  return cmd
    .option('--max-tokens <n>', 'sequence length for --data (default: the model context, at most 1024)', int(2))
    .option('--pack', 'pack --data records into full sequences instead of truncating each', false)
    .option(
      '--eval-fraction <x>',
      'share of --data records held out for eval loss',
      num(0, 0.99),
      CLI_DEFAULTS.evalFraction,
    )
    .option('--steps <n>', 'optimizer steps', int(1), DEFAULT_TRAIN.steps)
    .option('--global-batch <n>', 'sequences per step over all workers', int(1), DEFAULT_TRAIN.globalBatch)
    .option('--micro-batch <n>', 'sequences per assignment', int(1), DEFAULT_TRAIN.microBatch)
    .option('--lr <x>', 'peak learning rate', num(0, 10), DEFAULT_TRAIN.lr)
    .option('--warmup <n>', 'warm-up steps', int(0), DEFAULT_TRAIN.warmupSteps)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', num(0, 10), DEFAULT_TRAIN.weightDecay)
    .option('--clip <x>', 'global gradient-norm clip (0: off)', num(0), DEFAULT_TRAIN.clipNorm)
    .option('--seed <n>', 'seed for data order, LoRA init and dropout', int(0), DEFAULT_TRAIN.seed)
    .option(
      '--reduction-block <n>',
      "sum each step's results in fixed blocks of n micro-batches, then the blocks in order: the same bits on " +
        'any topology (default: one block of the whole step)',
      int(1),
    )
    .option('-r, --rank <n>', 'LoRA rank r', int(1), DEFAULT_LORA.r)
    .option('--alpha <x>', 'LoRA alpha (scaling alpha/r)', num(0), DEFAULT_LORA.alpha)
    .option('--dropout <x>', 'dropout on the LoRA branch input', num(0, 0.999), DEFAULT_LORA.dropout)
    .option('--targets <list>', 'comma list of modules to adapt', modules, DEFAULT_LORA.targetModules)
    .option(
      '--init <kind>',
      'LoRA A init: kaiming | gaussian',
      oneOf(['kaiming', 'gaussian'] as const),
      DEFAULT_LORA.init,
    )
    .option('--rslora', 'scale by alpha/sqrt(r) instead of alpha/r', false)
    .option(
      '--aggregation <rule>',
      `how micro-batch gradients combine: ${AGGREGATIONS.join(' | ')} (sum is exact; the others resist bad volunteers)`,
      oneOf(AGGREGATIONS),
      DEFAULT_RUN_CONFIG.run.aggregation,
    )
    .option(
      '--checkpoint-every <n>',
      'save a resumable checkpoint every N steps (and on SIGINT/SIGTERM)',
      int(0),
      CLI_DEFAULTS.checkpointEvery,
    )
    .option(
      '--codec <name>',
      `wire codec of gradients up and parameters down: ${CODECS.join(' | ')} ` +
        '(lossy ones use error feedback; f32 is exact)',
      oneOf(CODECS),
      DEFAULT_RUN_CONFIG.run.wire.up.name,
    )
    .option('--codec-up <name>', 'codec of results (gradients) only (default: --codec)', oneOf(CODECS))
    .option('--codec-down <name>', 'codec of parameters only; lossy ones send deltas (default: --codec)', oneOf(CODECS))
    .option('--codec-block <n>', 'int8: values per scale', int(1), DEFAULT_INT8_BLOCK)
    .option(
      '--arithmetic <variant>',
      `the wasm kernels' arithmetic: ${ARITHMETIC_VARIANTS.join(' | ')}; relaxed-fma (WebAssembly relaxed SIMD's ` +
        'fused multiply-add) is faster, but its last bits may differ between CPUs, and workers without relaxed SIMD ' +
        'are refused (LM_ERR_ARITHMETIC)',
      oneOf(ARITHMETIC_VARIANTS),
      DEFAULT_RUN_CONFIG.run.arithmetic,
    )
    .option(
      '--local-steps <H>',
      'DiLoCo mode: each job runs H inner AdamW steps and sends start − end; ' +
        '--steps counts outer steps of H × --global-batch sequences (0: synchronous)',
      int(0),
      0,
    )
    .option('--inner-lr <x>', 'local steps: peak inner AdamW learning rate (default: --lr)', num(0, 10))
    .option('--outer-lr <x>', 'local steps: outer Nesterov learning rate', num(0, 10), OUTER.outerLr)
    .option('--outer-momentum <x>', 'local steps: outer Nesterov momentum', num(0, 0.999), OUTER.outerMomentum);
}

function addTrainOptions(cmd: Command): Command {
  return addRunSettingOptions(
    cmd
      .option('--model <dir>', 'base model directory (config.json, *.safetensors, vocab.json)', DEMO_MODEL_DIR)
      .option(
        '--data <file>',
        'training data (default: the demo task): .jsonl (one JSON object per line), .parquet or .csv ' +
          '(one record per row, header row in CSV); records are {"text"}, {"prompt","completion"} or ' +
          '{"messages":[{"role","content"},...]}, in Parquet/CSV columns of those names (messages: a list of ' +
          'structs or a JSON string in Parquet, a JSON string in CSV; other columns are ignored)',
      ),
  )
    .option(
      '--eval-every <n>',
      'steps between eval-loss checks (also before and after training)',
      int(1),
      DEPLOY.evalEvery,
    )
    .option('--adapter <dir>', 'continue training from a PEFT adapter (its r, alpha, targets and values)')
    .option('--train-size <n>', 'demo task: number of training examples', int(1), CLI_DEFAULTS.trainSize)
    .option('--local-workers <n>', 'worker processes to start on this machine', int(0), DEPLOY.localWorkers)
    .option(
      '--min-workers <n>',
      'start training once this many workers are ready (default: local workers, ≥ 1)',
      int(1),
    )
    .option('--in-process', 'compute everything in this process, no sockets (the single-process reference)', false)
    .option('--host <addr>', 'address to listen on (0.0.0.0 lets other machines join)', host, DEPLOY.host)
    .option('--port <n>', 'port (0: pick a free one)', port, DEPLOY.port)
    .option(
      '--token <token>',
      'join token workers must present (or LORAMESH_TOKEN, or --token-file); ' +
        'generated and printed when --host is not loopback',
    )
    .option('--token-file <path>', 'read the join token from this file')
    .option(
      '--ingest-threads <n>',
      "threads that take the workers' sockets off the main thread (needs --reduction-block; default 0)",
      int(0),
    )
    .option(
      '--relay-token <token>',
      'token relays (loramesh relay) present; relays are refused without it (or LORAMESH_RELAY_TOKEN)',
    )
    .option('--allowed-origins <list>', 'comma list of browser Origins allowed to join (default: any)')
    .option(
      '--max-connections <n>',
      `concurrent worker connections (default ${DEFAULT_NET_LIMITS.maxConnections})`,
      int(1),
    )
    .option(
      '--max-connections-per-address <n>',
      'concurrent TCP connections per client address, IPv6 per /64 ' +
        `(default ${DEFAULT_NET_LIMITS.maxConnectionsPerAddress})`,
      int(1),
    )
    .option(
      '--max-workers-per-address <n>',
      `concurrent worker connections per client address (default ${DEFAULT_NET_LIMITS.maxWorkersPerAddress})`,
      int(1),
    )
    .option(
      '--max-event-streams <n>',
      'concurrent dashboard event streams, /api/events ' +
        `(default ${DEFAULT_NET_LIMITS.maxEventStreams}; ${DEFAULT_NET_LIMITS.maxEventStreamsPerAddress} per address)`,
      int(1),
    )
    .option(
      '--trusted-proxy <list>',
      'comma list of reverse-proxy addresses whose X-Forwarded-For names the client ' +
        '(default: none, the header is ignored)',
      addresses,
    )
    .option(
      '--max-messages-per-second <n>',
      'per-connection message rate limit',
      int(1),
      DEFAULT_SECURITY.maxMessagesPerSecond,
    )
    .option(
      '--max-rejects <n>',
      'rejected frames and failed assignments before a connection is quarantined',
      int(1),
      DEFAULT_SECURITY.maxRejects,
    )
    .option(
      '--spot-check <fraction>',
      'recompute this secret fraction of micro-batches on the coordinator; ' +
        `quarantine workers that disagree (default ${DEFENCE.spotCheck})`,
      num(0, 1),
    )
    .option(
      '--probation <n>',
      'recompute the first n results of every worker connection, so one that always lies is caught at once ' +
        `(0: off; default ${DEFENCE.probation})`,
      int(0),
    )
    .option(
      '--outlier-factor <K>',
      "recompute a result whose gradient norm is over K × its step's median before it counts; " +
        'quarantine the sender if it disagrees ' +
        `(0: off, else ≥ 1; default ${DEFENCE.outlierFactor})`,
      outlierFactor,
    )
    .option(
      '--admin-token <token>',
      'enables POST /api/admin/{pause,resume,stop,kick?worker=ID} with Authorization: Bearer <token> ' +
        '(or LORAMESH_ADMIN_TOKEN)',
    )
    .option(
      '--dashboard-access <who>',
      'public: anyone who reaches the port sees /api/status; admin: only with --admin-token (open /#admin=…)',
      oneOf(['public', 'admin'] as const),
      DEPLOY.dashboardAccess,
    )
    .option('--tls-cert <pem>', 'serve https/wss with this certificate (with --tls-key)')
    .option('--tls-key <pem>', 'private key for --tls-cert')
    .option('--keep-checkpoints <n>', 'how many checkpoints to keep', int(1), DEPLOY.keepCheckpoints)
    .option(
      '--resume <run-dir>',
      'continue runs/<id> from its latest valid checkpoint (model, data and configs come from the run folder)',
    )
    .option(
      '--recompute',
      'recompute each block in the backward pass on every worker: less activation memory, ~1/3 more compute, ' +
        'the same adapter (without it, only workers whose memory needs it recompute)',
    )
    .option(
      '--heartbeat-ms <n>',
      'ping interval; a worker silent for 2 intervals is dropped and its work reassigned',
      int(100),
      DEPLOY.heartbeatMs,
    )
    .option(
      '--backend <name>',
      `tfjs backend of local workers: ${BACKENDS.join(' | ')}`,
      oneOf(BACKENDS),
      DEPLOY.backend,
    )
    .option(
      '--base-format <format>',
      `hold the frozen base compact: ${BASE_FORMATS.join(' | ')}; the coordinator quantizes it once ` +
        '(cached by the source files’ sha256 and the format) and serves that one file to every worker ' +
        '(default: float32 tensors as loaded)',
      oneOf(BASE_FORMATS),
    )
    .option('--base-block <n>', `int8 and nf4: values per block scale (default ${DEFAULT_BASE_BLOCK})`, int(1))
    .option('--base-double-quant', 'nf4: quantize the block scales too (QLoRA double quantization)')
    .option(
      '--cache-dir <dir>',
      'where the coordinator keeps quantized bases and local workers keep verified base files ' +
        '(default: LORAMESH_CACHE, else ~/.cache/loramesh)',
    )
    .option('--out <dir>', 'where run folders go', DEPLOY.outDir)
    .option('--run-id <id>', 'name of the run folder (default: date + random id)');
}

addTrainOptions(
  program.command('train').description('run a coordinator (and local workers) to fine-tune a LoRA adapter'),
).action(async (o, cmd: Command) => {
  // One SIGINT/SIGTERM stops the run at any point (waiting for workers or mid-step), with a
  // checkpoint of the last whole step when there is one; a second signal ends the process at once.
  const stop = new AbortController();
  let stoppedBy: 'SIGINT' | 'SIGTERM' | null = null;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.log(`${sig}: stopping (a second ${sig} ends the process now)`);
      stoppedBy = sig;
      stop.abort();
    });
  }
  // Everything that can fail without the model is checked before it loads.
  // On --resume each typed flag is read against the run's own settings, never against the defaults.
  let shape: RunShape;
  if (o.resume) {
    const given = new Set(
      cmd.options.map((opt) => opt.attributeName()).filter((key) => cmd.getOptionValueSource(key) === 'cli'),
    );
    shape = resumeShape(readRunConfig(o.resume), o, given, o.resume);
    [o.runId, o.out] = [basename(resolve(o.resume)), dirname(resolve(o.resume))];
  } else {
    shape = runShapeFrom(o);
  }
  const token =
    o.token ??
    process.env.LORAMESH_TOKEN ??
    (o.tokenFile ? readFlagFile('--token-file', o.tokenFile).trim() : undefined);
  if (token === '') fail(ErrorCodes.CONFIG, `--token-file ${o.tokenFile} is empty`);
  if (!!o.tlsCert !== !!o.tlsKey) fail(ErrorCodes.CONFIG, '--tls-cert and --tls-key go together');
  if (o.tlsCert) [readFlagFile('--tls-cert', o.tlsCert), readFlagFile('--tls-key', o.tlsKey)];
  const config = resolveRunConfig(
    configFromFlags(o, shape, {
      // a coordinator others can reach gets a join token, printed below, unless one was given
      token: token ?? (LOOPBACK.includes(o.host) ? undefined : randomBytes(18).toString('base64url')),
      adminToken: o.adminToken ?? process.env.LORAMESH_ADMIN_TOKEN,
      relayToken: o.relayToken ?? process.env.LORAMESH_RELAY_TOKEN,
      tls: o.tlsCert ? { cert: o.tlsCert, key: o.tlsKey } : undefined,
    }),
  );
  const { deployment } = config;
  if (!deployment.inProcess) await checkListen(deployment.host, deployment.port);

  const { initBackend } = await import('../node/backend.ts');
  const { openModelDir } = await import('./io/model-dir.ts');
  const { dataFileFormat, examplesFor } = await import('./io/dataset.ts');
  const { readAdapterDir } = await import('./io/adapter-io.ts');
  const { runTraining } = await import('./run/train.ts');
  let { lora } = config.run;
  const { train, data: dataSpec } = config.run;
  // a data file of an unsupported format is refused before the model loads (minutes at real sizes)
  if (dataSpec?.kind === 'jsonl') dataFileFormat(dataSpec.path);
  const model = await openModelDir(config.run.model);
  // The coordinator itself computes only the eval loss and result checks (and everything with
  // --in-process); --backend otherwise names the local workers' backend (WebGPU in Node may be software-only).
  const backend = deployment.inProcess || deployment.backend !== 'webgpu' ? deployment.backend : 'auto';
  const running = await initBackend(backend, console.log);
  // This process computes steps itself (--in-process, or a spot check's recomputation): on wasm the
  // model and one micro-batch must fit the heap, said now rather than as a raw Aborted() later.
  if (running.name === 'wasm') {
    const { wasmHeapRefusal } = await import('../shared/model/memory-plan.ts');
    const sequenceLength =
      dataSpec?.kind === 'jsonl' ? (dataSpec.maxTokens ?? Math.min(1024, contextLength(model.config))) : 32;
    const { microBatch } = train;
    const baseFormat = config.run.baseFormat ?? undefined;
    const refusal = wasmHeapRefusal(
      { config: model.config, lora, microBatch, sequenceLength, baseFormat, recompute: deployment.recompute },
      'the coordinator',
    );
    if (refusal) fail(ErrorCodes.MEMORY, refusal);
  }
  let initialAdapter: AdapterState | undefined;
  if (o.adapter && !o.resume) {
    const loaded = readAdapterDir(o.adapter, model.config);
    lora = loaded.lora;
    initialAdapter = loaded.state;
    console.log(
      `continuing from ${o.adapter} (r=${lora.r}, alpha=${lora.alpha}, targets ${lora.targetModules.join(',')})`,
    );
  }
  // runShapeFrom always describes the data (the demo task without --data)
  const data = await examplesFor(dataSpec as DataSpec, model, console.log);
  if (token === undefined && deployment.token)
    console.log(`join token (give it to workers with --token, or open /join#token=…): ${deployment.token}`);
  const result = await runTraining({
    model,
    examples: data.train,
    evalExamples: data.eval,
    initialAdapter,
    config: { ...config, run: { ...config.run, lora } },
    signal: stop.signal,
  });
  if (result.alreadyFinished) return;
  const rejected = Object.entries(result.rejections);
  const refused =
    rejected.length === 0
      ? 'no results or frames rejected'
      : `${rejected.reduce((n, [, c]) => n + c, 0)} results or frames rejected ` +
        `(${rejected.map(([code, c]) => `${code} ${c}`).join(', ')})`;
  const checks = `${refused}, ${result.quarantined} worker(s) quarantined`;
  if (result.interrupted) {
    console.log(`stopped at step ${result.step} of ${train.steps}; ${checks}`);
    if (stoppedBy) process.exitCode = EXIT[stoppedBy];
    return;
  }
  const last = result.metrics[result.metrics.length - 1];
  console.log(
    `done: ${train.steps} steps, final loss ${last ? last.loss.toFixed(4) : '-'}; ${checks}; ` +
      `adapter written to ${result.runDir}`,
  );
});

program
  .command('relay')
  .description("serve a run's workers for a parent coordinator, summing whole reduction blocks (docs/SCALE.md)")
  .argument('<parent>', "the parent's WebSocket URL (a coordinator or another relay), e.g. ws://host:port/ws")
  .option('--token <token>', "the parent's relay token (its --relay-token; or LORAMESH_RELAY_TOKEN)")
  .option('--host <host>', 'address this relay listens on for its workers', host, '127.0.0.1')
  .option('--port <n>', 'port for its workers (0: pick a free one)', port, 0)
  .option('--worker-token <token>', 'join token its workers present (or LORAMESH_TOKEN; default: none)')
  .option(
    '--fallback <urls>',
    "comma list of ws:// URLs its workers try if it dies, before the parent's",
    (v: string) =>
      v
        .split(',')
        .map((u) => u.trim())
        .filter(Boolean),
  )
  .option('--name <name>', "a name shown in the parent's log")
  .action(async (parent: string, o) => {
    if (!/^wss?:\/\//.test(parent))
      fail(ErrorCodes.CONFIG, `relay parent should start with ws:// or wss://, got ${JSON.stringify(parent)}`);
    const { runRelay } = await import('./relay/relay.ts');
    const relay = runRelay({
      parent,
      token: o.token ?? process.env.LORAMESH_RELAY_TOKEN,
      host: o.host,
      port: o.port,
      workerToken: o.workerToken ?? process.env.LORAMESH_TOKEN,
      fallback: o.fallback,
      name: o.name,
    });
    const url = await relay.ready;
    console.log(`[relay] workers join with: loramesh worker ${url}`);
    const why = await relay.finished;
    console.log(`[relay] finished: ${why}`);
    await relay.close();
    process.exit(0);
  });

// the body of a --ingest-threads thread (coordinator/relay/ingest.ts): started by the coordinator, not by hand
program.command('ingest-thread', { hidden: true }).action(async () => {
  const { runIngestThread } = await import('./relay/ingest.ts');
  await runIngestThread();
});

program
  .command('worker')
  .description('join a run as a worker')
  .argument('<url>', 'coordinator WebSocket URL, e.g. ws://host:port/ws')
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), DEPLOY.backend)
  .option('--cache-dir <dir>', 'where verified base-model files are cached', defaultCacheDir())
  .option('--name <name>', 'a name shown in the coordinator log')
  .option('--token <token>', 'join token (or LORAMESH_TOKEN)')
  .option('--max-retries <n>', 'give up after this many failed connection attempts in a row', int(0))
  .option('--exit-with-parent', 'exit when the process that started this worker dies (used by --local-workers)', false)
  .action(async (url: string, o) => {
    if (o.exitWithParent && process.send) process.on('disconnect', () => process.exit(0));
    if (!/^wss?:\/\//.test(url))
      throw new LoraMeshError(
        'LM_ERR_CONFIG',
        `worker url should start with ws:// or wss://, got ${JSON.stringify(url)}`,
      );
    const { runNodeWorker } = await import('../worker/node.ts');
    const session = await runNodeWorker({
      url,
      backend: o.backend,
      cacheDir: o.cacheDir,
      name: o.name,
      token: o.token ?? process.env.LORAMESH_TOKEN,
      maxRetries: o.maxRetries,
    });
    console.log(`[worker${o.name ? ' ' + o.name : ''}] finished after ${session.assignmentsDone} micro-batches`);
    process.exit(0);
  });

program
  .command('generate')
  .description('generate text with a base model plus an optional adapter (KV cache)')
  .option('--model <dir>', 'base model directory', DEMO_MODEL_DIR)
  .option('--adapter <dir>', 'PEFT adapter directory (adapter_config.json + adapter_model.safetensors)')
  .requiredOption('--prompt <text>', 'prompt text (repeat the flag for several)', (v: string, prev: string[] = []) => [
    ...prev,
    v,
  ])
  .option('--max-new-tokens <n>', 'tokens to generate', int(1), 16)
  .option('--temperature <x>', '0 = greedy', num(0, 100), 0)
  .option('--top-p <x>', 'nucleus sampling mass', num(0, 1), 1)
  .option('--seed <n>', 'sampling seed', int(0), 0)
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), DEPLOY.backend)
  .action(async (o) => {
    const { generateCommand } = await import('./commands/generate.ts');
    await generateCommand(o);
  });

program
  .command('merge')
  .description('merge a PEFT adapter into its base model: W + (alpha/r)·B·A, written as a HF model directory')
  .option('--model <dir>', 'base model directory', DEMO_MODEL_DIR)
  .requiredOption('--adapter <dir>', 'PEFT adapter directory')
  .requiredOption('--out <dir>', 'output directory (base tensor names and dtypes; config and tokenizer copied)')
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), DEPLOY.backend)
  .action(async (o) => {
    const { initBackend } = await import('../node/backend.ts');
    const { mergeCommand } = await import('./commands/merge.ts');
    await initBackend(o.backend, (l) => console.error(l));
    await mergeCommand(o);
  });

program
  .command('logits')
  .description(
    'write the logits and greedy tokens of token-id prompts (base + unmerged adapter) to a safetensors file, ' +
      'for scripts/interop/peft_check.py',
  )
  .option('--model <dir>', 'base model directory', DEMO_MODEL_DIR)
  .option('--adapter <dir>', 'PEFT adapter directory (a run folder: its run_config.json gives the base format)')
  .requiredOption(
    '--prompt-ids <ids>',
    'a prompt as comma-separated token ids (repeat the flag for several)',
    (v: string, prev: number[][] = []) => [...prev, tokenIds(v)],
  )
  .option('--greedy-tokens <n>', 'greedy tokens per prompt (no EOS stop)', int(1), 32)
  .option(
    '--base-format <format>',
    `the compact base the adapter was trained on when no run_config.json says it: ${BASE_FORMATS.join(' | ')}; ` +
      'int8/nf4/f16/bf16 add logits_compact.k',
    oneOf(BASE_FORMATS),
  )
  .requiredOption('--out <file>', 'the safetensors file to write')
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), DEPLOY.backend)
  .action(async (o) => {
    const { initBackend } = await import('../node/backend.ts');
    const { logitsCommand } = await import('./commands/logits.ts');
    await initBackend(o.backend, (l) => console.error(l));
    await logitsCommand(o);
  });

program
  .command('demo')
  .description('the built-in demo: LoRA-teach the demo model a new skill with 2 local workers')
  .option('--local-workers <n>', 'worker processes', int(1), DEPLOY.localWorkers)
  .option('--steps <n>', 'optimizer steps', int(1))
  .option('--out <dir>', 'where run folders go', 'runs')
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), 'wasm')
  .action(async (o) => {
    const { runDemo } = await import('./commands/demo.ts');
    await runDemo(o);
  });

// ---- the standing pool (issue 18) ----
const poolFlags = (cmd: Command) =>
  cmd
    .option('--pool <url>', 'the pool (or LORAMESH_POOL)')
    .option('--token <token>', 'your tenant token (or LORAMESH_POOL_TOKEN)');

program
  .command('pool')
  .description(
    'a standing pool for one base model: workers join once (loramesh worker ws://HOST:PORT/ws) and serve every ' +
      'run; tenants upload data and submit runs over HTTP, each trained exactly as `train` would train it alone',
  )
  .requiredOption('--dir <folder>', 'the pool folder: its registry (pool.sqlite), uploads and run folders')
  .option('--model <dir>', 'the base model every run trains on', DEMO_MODEL_DIR)
  .option('--host <addr>', 'address to listen on', host, '127.0.0.1')
  .option('--port <n>', 'port (0: pick a free one)', port, 8790)
  .option(
    '--admin-token <token>',
    'the admin token for tenant management (or LORAMESH_POOL_ADMIN_TOKEN; generated and printed if neither)',
  )
  .option('--token <token>', 'join token workers must present (or LORAMESH_TOKEN); none: any worker may join')
  .option('--in-process', 'compute every run in this process instead of on workers (a pool on one machine)')
  .option('--tls-cert <pem>', 'serve https/wss with this certificate (with --tls-key)')
  .option('--tls-key <pem>', 'private key for --tls-cert')
  .option(
    '--runs-per-worker <n>',
    "the most runs' micro-batches a worker takes at once and computes in one forward and backward " +
      '(the multi-adapter pass; 1: one at a time)',
    int(1),
    1,
  )
  .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), 'wasm')
  .action(async (o) => {
    const { initBackend } = await import('../node/backend.ts');
    const { openModelDir } = await import('./io/model-dir.ts');
    const { Pool } = await import('./pool/pool.ts');
    const joinToken: string | undefined = o.token ?? process.env.LORAMESH_TOKEN;
    if (!!o.tlsCert !== !!o.tlsKey) fail(ErrorCodes.CONFIG, '--tls-cert and --tls-key go together');
    if (o.tlsCert) [readFlagFile('--tls-cert', o.tlsCert), readFlagFile('--tls-key', o.tlsKey)];
    const adminToken = o.adminToken ?? process.env.LORAMESH_POOL_ADMIN_TOKEN ?? randomBytes(18).toString('base64url');
    await checkListen(o.host, o.port);
    await initBackend(o.backend, console.log);
    const pool = await Pool.start({
      dir: resolve(o.dir),
      model: await openModelDir(o.model),
      host: o.host,
      port: o.port,
      adminToken,
      backend: o.backend,
      inProcess: !!o.inProcess,
      maxRunsPerWorker: o.runsPerWorker,
      ...(o.tlsCert ? { tls: { cert: o.tlsCert, key: o.tlsKey } } : {}),
      ...(joinToken ? { joinToken } : {}),
    });
    if (!o.adminToken && !process.env.LORAMESH_POOL_ADMIN_TOKEN) console.log(`admin token: ${adminToken}`);
    console.log(`add a tenant: loramesh tenant add NAME --pool ${pool.url} --admin-token …`);
    await new Promise<void>((done) => {
      for (const sig of ['SIGINT', 'SIGTERM'] as const)
        process.once(sig, () => {
          console.log(`${sig}: stopping; runs checkpoint and resume when the pool starts again`);
          done();
        });
    });
    await pool.close();
    process.exit(0); // wasm threads would otherwise keep the process
  });

const tenant = program.command('tenant').description("manage a pool's tenants (admin)");
tenant
  .command('add <name>')
  .description('a new tenant and its token (shown once)')
  .option('--pool <url>', 'the pool (or LORAMESH_POOL)')
  .option('--admin-token <token>', 'the pool admin token (or LORAMESH_POOL_ADMIN_TOKEN)')
  .option('--max-runs <n>', 'runs queued or running at once (default 4)', int(0))
  .option('--max-steps <n>', 'steps one run may ask for (default 10000)', int(0))
  .option('--max-upload-bytes <n>', 'bytes of uploads kept (default 256 MiB)', int(0))
  .action(async (name, o) => {
    const { poolClient, tenantAdd } = await import('./commands/pool-client.ts');
    const quotas = Object.fromEntries(
      [
        ['maxConcurrentRuns', o.maxRuns],
        ['maxSteps', o.maxSteps],
        ['maxUploadBytes', o.maxUploadBytes],
      ].filter(([, v]) => v !== undefined),
    );
    console.log(await tenantAdd(poolClient({ ...o, token: o.adminToken }, 'LORAMESH_POOL_ADMIN_TOKEN'), name, quotas));
  });
tenant
  .command('revoke <id>')
  .description("revoke a tenant's token")
  .option('--pool <url>', 'the pool (or LORAMESH_POOL)')
  .option('--admin-token <token>', 'the pool admin token (or LORAMESH_POOL_ADMIN_TOKEN)')
  .action(async (id, o) => {
    const { poolClient, tenantRevoke } = await import('./commands/pool-client.ts');
    console.log(await tenantRevoke(poolClient({ ...o, token: o.adminToken }, 'LORAMESH_POOL_ADMIN_TOKEN'), id));
  });

addRunSettingOptions(
  poolFlags(
    program
      .command('submit')
      .description("upload a data file and submit a run to a pool (train's run flags; the pool fixes the model)")
      .requiredOption('--data <file>', 'training data: .jsonl, .parquet or .csv, validated by the pool on upload')
      .option('--name <text>', 'a name for the run', 'run')
      .option('--weight <x>', 'share of the pool within its priority level, relative to other runs', num(0), 1)
      .option('--priority <n>', 'strict priority level (higher first)', int(-1000), 0),
  ),
).action(async (o) => {
  const { poolClient, submit } = await import('./commands/pool-client.ts');
  const shape = runShapeFrom({ ...o, data: o.data, model: DEMO_MODEL_DIR });
  const run = {
    lora: shape.lora,
    train: shape.train,
    ...(shape.wire ? { wire: shape.wire } : {}),
    ...(shape.local ? { local: shape.local } : {}),
    ...(shape.checkpointEvery !== undefined ? { checkpointEvery: shape.checkpointEvery } : {}),
    ...(shape.aggregation ? { aggregation: shape.aggregation } : {}),
    ...(shape.arithmetic ? { arithmetic: shape.arithmetic } : {}),
    data: {
      ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}),
      pack: o.pack,
      evalFraction: o.evalFraction,
    },
  };
  const client = poolClient(o, 'LORAMESH_POOL_TOKEN');
  console.log(await submit(client, o.data, { name: o.name, run, weight: o.weight, priority: o.priority }, console.log));
});

poolFlags(program.command('runs').description("your runs in a pool (the admin's token: every run)")).action(
  async (o) => {
    const { listRuns, poolClient } = await import('./commands/pool-client.ts');
    console.log(await listRuns(poolClient(o, 'LORAMESH_POOL_TOKEN')));
  },
);

poolFlags(
  program
    .command('fetch <run>')
    .description("a finished run's PEFT adapter (adapter_config.json, adapter_model.safetensors)")
    .requiredOption('--out <dir>', 'where the files go'),
).action(async (run, o) => {
  const { fetchRun, poolClient } = await import('./commands/pool-client.ts');
  console.log(await fetchRun(poolClient(o, 'LORAMESH_POOL_TOKEN'), run, o.out));
});

poolFlags(program.command('cancel <run>').description('cancel a queued or running run')).action(async (run, o) => {
  const { cancelRun, poolClient } = await import('./commands/pool-client.ts');
  console.log(await cancelRun(poolClient(o, 'LORAMESH_POOL_TOKEN'), run));
});

registerAnalysisCommands(program);

/**
 * Every failure is one line: a refused input with its LM_ERR code (exit 2), anything else as an
 * internal error (exit 1) with the stack only when LORAMESH_DEBUG is set. Handled here rather than
 * left to Node, whose report of an error rethrown through tfjs-wasm's handler prints its minified source.
 */
function exitWith(err: unknown): never {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : EXIT.usage); // commander printed it
  if (err instanceof LoraMeshError) {
    console.error(`loramesh: ${err.message}`);
    process.exit(EXIT.usage);
  }
  const e = err instanceof Error ? err : new Error(String(err));
  console.error(
    `loramesh: internal error: ${e.message.split('\n')[0]}` +
      `${process.env.LORAMESH_DEBUG ? `\n${e.stack}` : ' (LORAMESH_DEBUG=1 shows the stack)'}`,
  );
  process.exit(EXIT.internal);
}
// commander answers `loramesh frobnicate --help` with the main help and exit 0: an unknown command
// is named and refused first, whatever follows it.
const command = process.argv[2];
const commands = [...program.commands.flatMap((c) => [c.name(), ...c.aliases()]), 'help'];
if (command !== undefined && !command.startsWith('-') && !commands.includes(command)) {
  exitWith(
    new LoraMeshError(
      ErrorCodes.CONFIG,
      `unknown command ${JSON.stringify(command)}; expected one of ${commands.join(', ')}`,
    ),
  );
}
process.on('uncaughtException', exitWith);
process.on('unhandledRejection', exitWith);
program.parseAsync().catch(exitWith);
