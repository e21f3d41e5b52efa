/**
 * The child process of the checkpoint kill test (test/coordinator/io/checkpoint.test.ts):
 *
 *   node --import tsx test/helpers/checkpoint-writer.ts <run-dir>
 *
 * Resumes from the newest valid checkpoint in <run-dir> (step 1 when there is none), prints
 * `ready <first step>`, then saves step after step until it is killed, printing `begin <step>`
 * before each save and `done <step>` after it. stdout is a pipe, which Node writes synchronously,
 * so a line is in the pipe before the work it announces starts. The state of a step is
 * writerState(step), so the parent can check a loaded checkpoint bit for bit.
 */
import { pathToFileURL } from 'node:url';
import { loadLatestCheckpoint, saveCheckpoint } from '../../coordinator/io/checkpoint.ts';
import type { TrainerState } from '../../coordinator/engine/trainer.ts';

/** 4 tensors × 80k floats × (adapter, m, v) ≈ 3.8 MB per checkpoint. */
export const WRITER_TENSORS = ['layers.0.q.lora_A', 'layers.0.q.lora_B', 'layers.1.v.lora_A', 'layers.1.v.lora_B'];
export const WRITER_TENSOR_LENGTH = 80_000;
export const WRITER_KEEP = 3;
export const WRITER_CONFIG = { model: 'kill-test', lora: { r: 8, alpha: 16 }, train: { steps: 1_000_000 } };

/**
 * Every bit pattern comes from (step, group, tensor, index), NaN payloads and -0 included,
 * so a stale or mixed-up tensor shows.
 */
function fill(step: number, group: number, tensor: number): Float32Array {
  const bits = new Uint32Array(WRITER_TENSOR_LENGTH);
  const base = Math.imul(step, 0x9e3779b1) ^ Math.imul(group * 16 + tensor + 1, 0x85ebca6b);
  for (let i = 0; i < bits.length; i++) bits[i] = Math.imul(base + i, 0xc2b2ae35) ^ (i << 7);
  return new Float32Array(bits.buffer);
}

export function writerState(step: number): TrainerState {
  const group = (g: number) => new Map(WRITER_TENSORS.map((name, t) => [name, fill(step, g, t)]));
  return {
    step,
    paramVersion: step,
    cursor: { epoch: Math.floor(step / 7), position: step % 7 },
    adapter: group(0),
    adam: { step, m: group(1), v: group(2) },
  };
}

/** A ledger the size a real one reaches after a few hundred steps (~40 kB of JSON). */
export function writerLedger(step: number): unknown {
  return Array.from({ length: 200 }, (_, i) => ({
    step: step - i,
    microBatches: [{ index: 0, usedWorker: `w${i % 5}`, attempts: 1 }],
  }));
}

function main(dir: string): void {
  const resumed = loadLatestCheckpoint(dir, (line) => process.stderr.write(`${line}\n`));
  let step = resumed ? resumed.state.step + 1 : 1;
  process.stdout.write(`ready ${step}\n`);
  for (; ; step++) {
    const state = writerState(step);
    const ledger = writerLedger(step);
    process.stdout.write(`begin ${step}\n`);
    saveCheckpoint(dir, state, { config: WRITER_CONFIG, ledger }, WRITER_KEEP);
    process.stdout.write(`done ${step}\n`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main(process.argv[2]);
