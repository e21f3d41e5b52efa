/**
 * A run submitted to the pool, checked before anything is queued (issue 18): the same run settings
 * `train` takes (coordinator/run/run-config.ts checkRunSettings, field by field), on the pool's base
 * model, plus the run's share of the pool. Refused with LM_ERR_CONFIG naming the field: an unknown
 * field, a target the pool's model does not have, a rank larger than an adapted layer, a model or base
 * format other than the pool's.
 */
import type { ModelConfig } from '../../shared/config.ts';
import { describe, ErrorCodes, fail } from '../../shared/errors.ts';
import { adapterSpec } from '../../shared/lora/adapter.ts';
import { linearShape } from '../../shared/model/causal-lm.ts';
import type { ResolvedBaseSpec } from '../../shared/quant/formats.ts';
import { checkRunSettings, type RunSettings, within } from '../run/run-config.ts';
import { checkShareSettings, type ShareSettings } from './fair-share.ts';

/** What a client sends (JSON): `run` as in run_config.json's "run", minus what the pool fixes. */
export interface SubmissionInput {
  name?: string;
  run: Record<string, unknown>;
  weight?: number;
  priority?: number;
}

export interface Submission {
  name: string;
  settings: RunSettings;
  share: ShareSettings;
}

/** The pool's base, which every run trains on. */
export interface PoolBase {
  /** the model directory (as run settings name it) */
  model: string;
  config: ModelConfig;
  baseFormat: ResolvedBaseSpec | null;
}

const TOP_FIELDS = ['name', 'run', 'weight', 'priority'];
/** run settings a submission may give (model, data and baseFormat are the pool's) */
const RUN_FIELDS = ['lora', 'train', 'wire', 'local', 'checkpointEvery', 'aggregation', 'arithmetic'];

export function checkSubmission(raw: unknown, base: PoolBase): Submission {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    fail(ErrorCodes.CONFIG, `submission: expected a JSON object, got ${describe(raw)}`);
  const input = raw as Record<string, unknown>;
  for (const field of Object.keys(input))
    if (!TOP_FIELDS.includes(field))
      fail(ErrorCodes.CONFIG, `submission has an unknown field "${field}"; expected some of ${TOP_FIELDS.join(', ')}`);
  const name = input.name ?? 'run';
  if (typeof name !== 'string' || !/^[\w .:-]{1,80}$/.test(name))
    fail(ErrorCodes.CONFIG, `name ${describe(name)}: expected 1–80 of letters, digits, space, "_", ".", ":", "-"`);
  const run = input.run;
  if (typeof run !== 'object' || run === null || Array.isArray(run))
    fail(ErrorCodes.CONFIG, `run: expected an object of run settings, got ${describe(run)}`);
  for (const field of Object.keys(run)) {
    if (field === 'model' || field === 'baseFormat' || field === 'data')
      fail(
        ErrorCodes.CONFIG,
        `run.${field}: the pool fixes it (its base model and format; the data is the upload), leave it out`,
      );
    if (!RUN_FIELDS.includes(field))
      fail(ErrorCodes.CONFIG, `run has an unknown field "${field}"; expected some of ${RUN_FIELDS.join(', ')}`);
  }
  const settings = checkRunSettings({ ...run, model: base.model, data: null, baseFormat: base.baseFormat });
  const spec = within('run.lora', () => adapterSpec(base.config, settings.lora));
  for (const t of spec) {
    if (t.which !== 'A') continue;
    const [dOut, dIn] = linearShape(base.config, t.modulePath);
    if (settings.lora.r > Math.min(dOut, dIn))
      fail(
        ErrorCodes.CONFIG,
        `run.lora.r ${settings.lora.r} is larger than layer ${t.modulePath} (${dOut} × ${dIn}): ` +
          `expected r ≤ ${Math.min(dOut, dIn)}`,
      );
  }
  const share = checkShareSettings({ weight: input.weight as number, priority: input.priority as number });
  return { name, settings, share };
}
