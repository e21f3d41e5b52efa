/**
 * runs/<run-id>/: the run's config, metrics.jsonl (one line per step) and the adapter in PEFT
 * layout. Files are written to a temp name, fsynced and renamed, so a crash never leaves half a file.
 */
import { appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { LoraConfig } from '../shared/config.ts';
import type { AdapterState, AdapterTensorSpec } from '../shared/lora/adapter.ts';
import { encodePeftAdapter, peftAdapterConfig } from '../shared/formats/peft.ts';

export function writeAtomic(path: string, data: Uint8Array | string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dirFd = openSync(resolve(path, '..'), 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

export class RunDir {
  readonly path: string;

  constructor(root: string, readonly runId: string) {
    this.path = resolve(root, runId);
    mkdirSync(this.path, { recursive: true });
  }

  writeConfig(config: unknown): void {
    writeAtomic(join(this.path, 'run_config.json'), JSON.stringify(config, null, 2) + '\n');
  }

  appendMetrics(line: Record<string, unknown>): void {
    appendFileSync(join(this.path, 'metrics.jsonl'), JSON.stringify(line) + '\n');
  }

  /** On resume: drop metrics lines of steps after the checkpoint (they are redone). */
  truncateMetricsAfter(step: number): void {
    const path = join(this.path, 'metrics.jsonl');
    if (!existsSync(path)) return;
    const kept = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '' && (JSON.parse(l) as { step: number }).step <= step);
    writeAtomic(path, kept.map((l) => l + '\n').join(''));
  }

  /** The ledger so far (one entry per step), for checkpoints. */
  readLedger(): unknown[] {
    const path = join(this.path, 'ledger.jsonl');
    return existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l)) : [];
  }

  /** On resume: the checkpoint's ledger replaces the file (steps after it are redone). */
  writeLedger(entries: unknown[]): void {
    writeAtomic(join(this.path, 'ledger.jsonl'), entries.map((e) => JSON.stringify(e) + '\n').join(''));
  }

  /** One line per step: which micro-batch was computed by whom, how many times, which result was used. */
  appendLedger(step: number, microBatches: unknown[]): void {
    appendFileSync(join(this.path, 'ledger.jsonl'), JSON.stringify({ step, microBatches }) + '\n');
  }

  /** Writes adapter_config.json + adapter_model.safetensors into dir (default: the run folder). */
  writeAdapter(spec: AdapterTensorSpec[], state: AdapterState, lora: LoraConfig, baseModel: string, fanInFanOut: boolean, dir = this.path): string {
    mkdirSync(dir, { recursive: true });
    const modules = new Map<string, { A: Float32Array; B: Float32Array; aShape: [number, number]; bShape: [number, number] }>();
    for (const t of spec) {
      const m = modules.get(t.modulePath) ?? ({} as { A: Float32Array; B: Float32Array; aShape: [number, number]; bShape: [number, number] });
      if (t.which === 'A') Object.assign(m, { A: state.get(t.name)!, aShape: t.shape });
      else Object.assign(m, { B: state.get(t.name)!, bShape: t.shape });
      modules.set(t.modulePath, m);
    }
    writeAtomic(join(dir, 'adapter_model.safetensors'), encodePeftAdapter(modules));
    writeAtomic(join(dir, 'adapter_config.json'), JSON.stringify(peftAdapterConfig(lora, baseModel, fanInFanOut), null, 2) + '\n');
    return dir;
  }
}
