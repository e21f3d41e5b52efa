/**
 * runs/<run-id>/: the run's config, metrics.jsonl (one line per step) and the adapter in PEFT
 * layout. Files are written to a temp name, fsynced and renamed, so a crash never leaves half a file.
 * A training process opens the folder with RunDir.open, which holds run.lock until close().
 */
import {
  appendFileSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import type { LoraConfig } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import type { AdapterState, AdapterTensorSpec } from '../../shared/lora/adapter.ts';
import { encodePeftAdapter, peftAdapterConfig } from '../../shared/formats/peft.ts';
import { acquireRunLock, displayPath, type RunLock } from './run-lock.ts';

export interface OpenRunDirOptions {
  /** 'new': the folder must not hold a run yet; 'resume': it must hold run_config.json */
  mode: 'new' | 'resume';
  /** where a takeover of a dead process's lock is reported */
  log?: (line: string) => void;
}

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
  private lock: RunLock | null = null;

  /** A folder without a lock: for writing an adapter somewhere (extract). Training uses RunDir.open. */
  constructor(
    root: string,
    readonly runId: string,
  ) {
    this.path = resolve(root, runId);
    mkdirSync(this.path, { recursive: true });
  }

  /** Opens runs/<run-id>/ for training, holding its run.lock (LM_ERR_LOCKED if another process holds it). */
  static open(root: string, runId: string, opts: OpenRunDirOptions): RunDir {
    const path = resolve(root, runId);
    if (opts.mode === 'new') refuseExistingRun(path);
    else if (!existsSync(join(path, 'run_config.json'))) {
      fail(ErrorCodes.CONFIG, `--resume ${displayPath(path)}: there is no run_config.json, so it is not a run folder`);
    }
    const runDir = new RunDir(root, runId);
    runDir.lock = acquireRunLock(path, opts.log);
    // Checked again under the lock: another process may have started this run meanwhile.
    try {
      if (opts.mode === 'new') refuseExistingRun(path);
    } catch (err) {
      runDir.close();
      throw err;
    }
    return runDir;
  }

  /** Releases the run folder's lock (if this RunDir holds one). */
  close(): void {
    this.lock?.release();
    this.lock = null;
  }

  writeConfig(config: unknown): void {
    writeAtomic(join(this.path, 'run_config.json'), JSON.stringify(config, null, 2) + '\n');
  }

  /** run_config.json as written (the CLI reads it through checkRunShape; this is for the run's own fields). */
  readConfig(): Record<string, unknown> {
    return JSON.parse(readFileSync(join(this.path, 'run_config.json'), 'utf8')) as Record<string, unknown>;
  }

  /** Changes fields of run_config.json (a resume that raised --steps records the new total). */
  patchConfig(fields: Record<string, unknown>): void {
    this.writeConfig({ ...this.readConfig(), ...fields });
  }

  appendMetrics(line: Record<string, unknown>): void {
    appendFileSync(join(this.path, 'metrics.jsonl'), JSON.stringify(line) + '\n');
  }

  /**
   * On resume: drop metrics lines of steps after the checkpoint (they are redone), and the eval
   * line of the checkpoint's own step, which the resumed run logs again before it trains.
   */
  truncateMetricsAfter(step: number): void {
    this.truncateAfter('metrics.jsonl', step, (line) => !(line.step === step && 'eval_loss' in line));
  }

  /** On resume: drop ledger lines of steps after the checkpoint, like the metrics. */
  truncateLedgerAfter(step: number): void {
    this.truncateAfter('ledger.jsonl', step);
  }

  private truncateAfter(file: string, step: number, keep: (line: { step: number }) => boolean = () => true): void {
    const path = join(this.path, file);
    if (!existsSync(path)) return;
    const kept = readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => {
        if (l.trim() === '') return false;
        const line = JSON.parse(l) as { step: number };
        return line.step <= step && keep(line);
      });
    writeAtomic(path, kept.map((l) => l + '\n').join(''));
  }

  /** One line per step: which micro-batch was computed by whom, how many times, which result was used. */
  appendLedger(step: number, microBatches: unknown[]): void {
    appendFileSync(join(this.path, 'ledger.jsonl'), JSON.stringify({ step, microBatches }) + '\n');
  }

  /** Writes adapter_config.json + adapter_model.safetensors into dir (default: the run folder). */
  writeAdapter(
    spec: AdapterTensorSpec[],
    state: AdapterState,
    lora: LoraConfig,
    baseModel: string,
    fanInFanOut: boolean,
    dir = this.path,
  ): string {
    mkdirSync(dir, { recursive: true });
    const modules = new Map<
      string,
      { A: Float32Array; B: Float32Array; aShape: [number, number]; bShape: [number, number] }
    >();
    for (const t of spec) {
      const m =
        modules.get(t.modulePath) ??
        ({} as { A: Float32Array; B: Float32Array; aShape: [number, number]; bShape: [number, number] });
      if (t.which === 'A') Object.assign(m, { A: state.get(t.name)!, aShape: t.shape });
      else Object.assign(m, { B: state.get(t.name)!, bShape: t.shape });
      modules.set(t.modulePath, m);
    }
    writeAtomic(join(dir, 'adapter_model.safetensors'), encodePeftAdapter(modules));
    writeAtomic(
      join(dir, 'adapter_config.json'),
      JSON.stringify(peftAdapterConfig(lora, baseModel, fanInFanOut), null, 2) + '\n',
    );
    return dir;
  }
}

function refuseExistingRun(path: string): void {
  const existing = ['run_config.json', 'metrics.jsonl'].find((name) => existsSync(join(path, name)));
  if (existing) {
    const shown = displayPath(path);
    fail(
      ErrorCodes.CONFIG,
      `run folder ${shown} already exists (it has ${existing}); ` +
        `pick another --run-id or continue it with --resume ${shown}`,
    );
  }
}
