/**
 * `--resume`: the trainer continues from the run folder's newest valid checkpoint. `--steps` may
 * have grown (extending a run); everything else that shapes the result must match the checkpoint.
 * Unless the run is already finished, the metrics and ledger lines of steps after the checkpoint
 * go (they are redone) and run_config.json records the step total.
 */
import type { TrainConfig } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { loadLatestCheckpoint } from '../io/checkpoint.ts';
import type { RunDir } from '../io/run-dir.ts';
import type { Trainer } from '../engine/trainer.ts';

/** What a checkpoint must agree with: the run-defining config (local steps change what a step is). */
export type CheckpointConfig = {
  model: string;
  lora: unknown;
  train: TrainConfig;
  local: unknown;
  baseFormat?: unknown;
};

const withoutSteps = (c: unknown) =>
  JSON.stringify({ ...(c as object), train: { ...(c as { train: object }).train, steps: undefined } });

/** What a run was made from, by content (run_config.json; older files lack it). */
export interface RunInputs {
  modelFiles: { name: string; sha256: string }[];
  /** training examples after tokenization and the eval split */
  examples: number;
}

/** Refuses a model file or a data set that changed since the run began (names the first difference). */
function checkInputs(stored: Partial<RunInputs>, now: RunInputs, runDir: string): void {
  for (const file of stored.modelFiles ?? []) {
    const current = now.modelFiles.find((f) => f.name === file.name);
    if (current?.sha256 !== file.sha256) {
      fail(
        ErrorCodes.CONFIG,
        `--resume ${runDir}: the model's ${file.name} ` +
          `${current ? 'changed since the run began (sha256 differs)' : 'is missing'}`,
      );
    }
  }
  if (stored.examples !== undefined && stored.examples !== now.examples) {
    fail(
      ErrorCodes.CONFIG,
      `--resume ${runDir}: the data now gives ${now.examples} training examples, the run began with ${stored.examples}`,
    );
  }
}

/** Imports the newest valid checkpoint into `trainer`; returns its path. */
export function resumeFromCheckpoint(
  trainer: Trainer,
  runDir: RunDir,
  config: CheckpointConfig,
  inputs: RunInputs,
  log: (line: string) => void,
): string {
  checkInputs(runDir.readConfig() as Partial<RunInputs>, inputs, runDir.path);
  const checkpoint =
    loadLatestCheckpoint(runDir.path, log) ??
    fail(ErrorCodes.STATE, `--resume ${runDir.path}: no valid checkpoint to resume from`);
  if (withoutSteps(checkpoint.config) !== withoutSteps(config)) {
    fail(
      ErrorCodes.CONFIG,
      `--resume ${runDir.path}: the checkpoint was made with another model, LoRA, training config or base format`,
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
