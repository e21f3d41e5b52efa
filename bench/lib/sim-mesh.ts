/**
 * A real coordinator (runTraining: server, mesh, trainer, run folder, monitor) driving simulated
 * workers from a SimWorkerPool. The model is only a config (no weight files): workers never load
 * it, and the coordinator never computes. What is measured is everything but the compute.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkLoraConfig,
  checkModelConfig,
  checkTrainConfig,
  contextLength,
  type Gpt2Config,
  type LoraConfig,
  type ModelConfig,
} from '../../shared/config.ts';
import type { TextTokenizer } from '../../shared/data/tokenizer.ts';
import { Rng } from '../../shared/rng.ts';
import type { Example } from '../../shared/train/micro-batch.ts';
import type { ModelDir } from '../../coordinator/io/model-dir.ts';
import { runTraining } from '../../coordinator/run/train.ts';
import type { StepMetrics } from '../../coordinator/engine/trainer.ts';
import type { SimWorkerPool } from './sim-pool.ts';
import type { IngestThread } from '../../coordinator/relay/ingest.ts';

/** GPT-2 small (124M): 12 layers, d = 768. */
export const GPT2_SMALL = checkModelConfig({
  model_type: 'gpt2',
  vocab_size: 50257,
  n_positions: 1024,
  n_embd: 768,
  n_layer: 12,
  n_head: 12,
}) as Gpt2Config;
/** A 2-layer, d = 32 GPT-2 for smoke tests (the shape of test/fixtures/hf/gpt2). */
export const GPT2_TINY = checkModelConfig({
  model_type: 'gpt2',
  vocab_size: 64,
  n_positions: 64,
  n_embd: 32,
  n_layer: 2,
  n_head: 4,
}) as Gpt2Config;
/** r = 8 on the fused q/k/v projection: per layer A 8×768 + B 2304×8 for GPT-2 small. */
export const C_ATTN_R8 = checkLoraConfig({ r: 8, alpha: 16, targetModules: ['c_attn'] });
/** PEFT's "all-linear" on a Llama-family model, r = 16: every projection of attention and the MLP (real shapes). */
export const ALL_LINEAR_R16 = checkLoraConfig({
  r: 16,
  alpha: 32,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
});

/** Only padId is read by a run; the rest would mean a mistake in the benchmark. */
function idsOnlyTokenizer(config: ModelConfig): TextTokenizer {
  const unused = (): never => {
    throw new Error('the simulated model has no tokenizer');
  };
  return {
    vocabSize: config.vocab_size,
    bosId: null,
    eosId: null,
    padId: 0,
    addBos: false,
    encode: unused,
    decode: unused,
    renderChat: unused,
  };
}

export function simulatedModelDir(config: ModelConfig): ModelDir {
  const [layers, width] =
    config.model_type === 'gpt2' ? [config.n_layer, config.n_embd] : [config.num_hidden_layers, config.hidden_size];
  return {
    dir: `simulated-${config.model_type}-${layers}x${width}`,
    config,
    rawConfig: { ...config },
    tokenizer: idsOnlyTokenizer(config),
    files: [],
    extraFiles: [],
  };
}

/** Random token sequences of `seqLen` + 1 tokens (inputs and shifted targets), every target counted. */
export function dummyExamples(config: ModelConfig, count: number, seqLen: number): Example[] {
  const rng = new Rng(11);
  const length = Math.min(seqLen, contextLength(config)) + 1;
  return Array.from({ length: count }, () => {
    const tokens = Array.from({ length }, () => Math.floor(rng.next() * config.vocab_size));
    return { tokens, lossWeights: tokens.map((_, i) => (i === 0 ? 0 : 1)) };
  });
}

export interface SimRunOptions {
  pool: SimWorkerPool;
  model: ModelDir;
  lora?: LoraConfig;
  examples: Example[];
  workers: number;
  computeMs: number;
  steps: number;
  /** called after every step with the time it completed (performance.now()) and the straggler copies so far */
  onStep?: (m: StepMetrics, at: number, stragglerCopies: number) => void;
  /** before the workers connect (e.g. to ask for a captured frame) */
  beforeConnect?: () => void;
  /** the workers join through this many relays (coordinator/relay/) in the pool's processes; 0: flat */
  relays?: number;
  /** train.reductionBlock (default with relays or threads: workers / relays (threads), one block each per step) */
  reductionBlock?: number;
  /** the coordinator's ingestion threads (deployment.ingestThreads); the workers are sent there */
  ingestThreads?: number;
  /** the threads once they listen */
  onIngestThreads?: (threads: IngestThread[]) => void;
}

export interface SimRunResult {
  /** log lines that mean something went wrong (rejects, lost workers, errors) */
  problems: string[];
  /** micro-batches also given to a second worker because the first looked slow (scheduler.ts) */
  stragglerCopies: number;
  bytesUp: number;
  bytesDown: number;
}

/**
 * Simulated workers share this machine's cores, so under load they answer pings late; with the
 * default 5 s heartbeat the coordinator dropped some at N = 256 and the run lost its N.
 */
export const HEARTBEAT_MS = 30_000;
const RELAY_TOKEN = 'bench-relay-token';

const PROBLEM = /reject|error|left holding|missed a heartbeat|dropping|closed \(/i;

/**
 * Every simulated worker connects from 127.0.0.1, which the default per-address caps
 * (DEFAULT_NET_LIMITS: 32 workers, 64 TCP connections) would refuse past N = 32.
 */
const ONE_ADDRESS_FOR_ALL = (workers: number) => ({
  maxWorkersPerAddress: workers + 16,
  maxConnectionsPerAddress: workers + 64,
});

/**
 * One run: N micro-batches of 1 sequence per step (one per worker), the coordinator listening on
 * an ephemeral loopback port, the pool's sessions joining as soon as it listens.
 */
export async function runSimulated(o: SimRunOptions): Promise<SimRunResult> {
  const outDir = mkdtempSync(join(tmpdir(), 'loramesh-bench-scale-'));
  const problems: string[] = [];
  let stragglerCopies = 0;
  let connected = false;
  // After the last step, workers leave holding straggler copies nobody needs: not a problem.
  let finished = false;
  try {
    const result = await runTraining({
      model: o.model,
      examples: o.examples,
      config: {
        run: {
          lora: o.lora ?? C_ATTN_R8,
          train: checkTrainConfig({
            steps: o.steps,
            globalBatch: o.workers,
            microBatch: 1,
            warmupSteps: 0,
            seed: 1,
            ...(o.reductionBlock || o.relays || o.ingestThreads
              ? { reductionBlock: o.reductionBlock ?? Math.ceil(o.workers / (o.relays || o.ingestThreads!)) }
              : {}),
          }),
        },
        deployment: {
          outDir,
          runId: `sim-${o.workers}`,
          localWorkers: 0,
          minWorkers: o.workers,
          heartbeatMs: HEARTBEAT_MS,
          ...(o.relays ? { relayToken: RELAY_TOKEN } : {}),
          ...(o.ingestThreads ? { ingestThreads: o.ingestThreads } : {}),
        },
        limits: {
          net: ONE_ADDRESS_FOR_ALL(o.workers),
          // Simulated workers send made-up gradients of a model that has no weights: nothing to recompute.
          defence: { spotCheck: 0, outlierFactor: 0, probation: 0 },
        },
      },
      progress: false,
      onIngestThreads: o.onIngestThreads,
      log: (line) => {
        if (process.env.SIM_LOG) console.log(line);
        const url = /listening on (wss?:\S+)/.exec(line)?.[1];
        if (url && !connected) {
          connected = true;
          o.beforeConnect?.();
          if (o.relays) o.pool.connectRelayed(url, RELAY_TOKEN, o.relays, Math.ceil(o.workers / o.relays), o.computeMs);
          else o.pool.connect(url, o.workers, o.computeMs);
        }
        if (finished) return;
        if (/is slow; also giving it/.test(line)) stragglerCopies++;
        else if (PROBLEM.test(line) && problems.length < 50) problems.push(line);
      },
      onStep: (m) => {
        finished = m.step === o.steps;
        o.onStep?.(m, performance.now(), stragglerCopies);
      },
    });
    return { problems, stragglerCopies, bytesUp: result.bytesUp, bytesDown: result.bytesDown };
  } finally {
    rmSync(outDir, { recursive: true, force: true });
  }
}
