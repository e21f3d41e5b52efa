/**
 * One record per step, built once and read by everyone: metrics.jsonl (metricsLine), the dashboard
 * (RunMonitor), the ledger's step number and the run's result. What the trainer measured, what
 * crossed the wire, and what synchronous fp32 LoRA and full fine-tuning would have moved for the
 * same samples.
 */
import type { StepMetrics } from './trainer.ts';
import type { Traffic } from './traffic.ts';

export interface StepRecord extends StepMetrics {
  /** WebSocket frames with their headers, worker → coordinator and back */
  bytesUp: number;
  bytesDown: number;
  /** encoded float values inside results (up) and params frames (down) */
  payloadUp: number;
  payloadDown: number;
  /** coordinator → workers by kind: parameters, micro-batches (the data), the rest */
  paramsDown: number;
  dataDown: number;
  otherDown: number;
  framesUp: number;
  framesDown: number;
  /** what synchronous fp32 LoRA and full fine-tuning would move for the same samples */
  fp32LoraBytes: number;
  fullFineTuneBytes: number;
  /** ready workers when the step ended (0 in-process) */
  workers: number;
  /** bytes between relays (ingestion threads included) and their workers, up and down, as the relays report */
  relayedBytesUp: number;
  relayedBytesDown: number;
}

export interface RunSizes {
  adapterParameters: number;
  modelParameters: number;
  globalBatch: number;
}

/**
 * The step's record. Baselines: a gradient up per micro-batch, and the parameters down to every
 * worker after every synchronous step (`samples / globalBatch` of them: H per outer step).
 */
export function stepRecord(m: StepMetrics, traffic: Traffic, workers: number, sizes: RunSizes): StepRecord {
  const receivers = Math.max(1, workers);
  const baseline = (parameters: number) =>
    4 * parameters * (m.microBatches + (m.samples / sizes.globalBatch) * receivers);
  return {
    ...m,
    bytesUp: traffic.bytesIn,
    bytesDown: traffic.bytesOut,
    payloadUp: traffic.payloadIn,
    payloadDown: traffic.payloadOut,
    paramsDown: traffic.outParams,
    dataDown: traffic.outAssign,
    otherDown: traffic.outOther,
    framesUp: traffic.framesIn,
    framesDown: traffic.framesOut,
    fp32LoraBytes: baseline(sizes.adapterParameters),
    fullFineTuneBytes: baseline(sizes.modelParameters),
    workers,
    relayedBytesUp: traffic.relayedIn,
    relayedBytesDown: traffic.relayedOut,
  };
}

/** The record as one metrics.jsonl line (the file's field names, unchanged since protocol 2). */
export function metricsLine(r: StepRecord): Record<string, unknown> {
  return {
    step: r.step,
    loss: r.loss,
    lr: r.lr,
    grad_norm: r.gradNorm,
    tokens: r.tokens,
    samples: r.samples,
    tokens_per_s: r.tokensPerSecond,
    step_ms: r.stepMs,
    bytes_up: r.bytesUp,
    bytes_down: r.bytesDown,
    payload_up: r.payloadUp,
    payload_down: r.payloadDown,
    data_down: r.dataDown,
    frames_up: r.framesUp,
    frames_down: r.framesDown,
    fp32_lora_bytes: r.fp32LoraBytes,
    full_ft_bytes: r.fullFineTuneBytes,
    ...(r.factorGap !== undefined ? { factor_gap: r.factorGap } : {}),
    ...(r.relayedBytesUp || r.relayedBytesDown
      ? { relayed_bytes_up: r.relayedBytesUp, relayed_bytes_down: r.relayedBytesDown }
      : {}),
    workers: r.workers,
  };
}
