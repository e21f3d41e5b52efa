/**
 * `--resume`: the trainer continues from the run folder's newest valid checkpoint. `--steps` may
 * have grown (extending a run); everything else that shapes the result must match the checkpoint.
 * Unless the run is already finished, the metrics and ledger lines of steps after the checkpoint
 * go (they are redone) and run_config.json records the step total.
 */
import type { TrainConfig } from '../shared/config.ts';
import { ErrorCodes, fail } from '../shared/errors.ts';
import { loadLatestCheckpoint } from './checkpoint.ts';
import type { RunDir } from './run-dir.ts';
import type { Trainer } from './trainer.ts';

/** What a checkpoint must agree with: the run-defining config (local steps change what a step is). */
export type CheckpointConfig = { model: string; lora: unknown; train: TrainConfig; local: unknown };

const withoutSteps = (c: unknown) =>
  JSON.stringify({ ...(c as object), train: { ...(c as { train: object }).train, steps: undefined } });

/** Imports the newest valid checkpoint into `trainer`; returns its path. */
export function resumeFromCheckpoint(
  trainer: Trainer,
  runDir: RunDir,
  config: CheckpointConfig,
  log: (line: string) => void,
): string {
  const checkpoint =
    loadLatestCheckpoint(runDir.path, log) ??
    fail(ErrorCodes.STATE, `--resume ${runDir.path}: no valid checkpoint to resume from`);
  if (withoutSteps(checkpoint.config) !== withoutSteps(config)) {
    fail(
      ErrorCodes.CONFIG,
      `--resume ${runDir.path}: the checkpoint was made with another model, LoRA or training config`,
    );
  }
  trainer.importState(checkpoint.state);
  if (!trainer.done) {
    runDir.truncateMetricsAfter(trainer.step);
    runDir.truncateLedgerAfter(trainer.step);
    runDir.patchConfig({ train: config.train });
  }
  return checkpoint.path;
}
