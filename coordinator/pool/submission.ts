/**
 * A run submitted to the pool, checked before anything is queued (issue 18): the same run settings
 * `train` takes (coordinator/run/run-config.ts checkRunSettings, field by field), on the pool's base
 * model, plus the run's share of the pool. Refused with LM_ERR_CONFIG naming the field: an unknown
 * field, a target the pool's model does not have, a rank larger than an adapted layer, a model or base
 * format other than the pool's.
 */
import type { ModelConfig } from '../../shared/config.ts';
import { describe, ErrorCodes, fail } from '../../shared/errors.ts';
import { adapterParameterCount, adapterSpec } from '../../shared/lora/adapter.ts';
import { linearShape } from '../../shared/model/causal-lm.ts';
import type { ResolvedBaseSpec } from '../../shared/quant/formats.ts';
import { checkDataSpec, checkRunSettings, type RunSettings, within } from '../run/run-config.ts';
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
  /** how the upload becomes examples (as `train --data`'s flags): the pool adds the file */
  data: PoolDataOptions;
}

/** `run.data` of a submission: train's data options; the file is the run's upload. */
export interface PoolDataOptions {
  maxTokens?: number;
  pack: boolean;
  evalFraction: number;
  /** seeds the train/eval split (default: the run's train.seed) */
  seed?: number;
}

const DATA_FIELDS = ['maxTokens', 'pack', 'evalFraction', 'seed'];

function checkData(raw: unknown): PoolDataOptions {
  if (raw === undefined) return { pack: false, evalFraction: 0 };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    fail(ErrorCodes.CONFIG, `run.data: expected an object of ${DATA_FIELDS.join(', ')}, got ${describe(raw)}`);
  const d = raw as Record<string, unknown>;
  for (const field of Object.keys(d))
    if (!DATA_FIELDS.includes(field))
      fail(
        ErrorCodes.CONFIG,
        `run.data has "${field}"; expected some of ${DATA_FIELDS.join(', ')} (the file is the upload)`,
      );
  // train's own check of a data spec, on a stand-in for the upload's path
  checkDataSpec('run.data', { kind: 'jsonl', path: 'upload', pack: false, evalFraction: 0, seed: 0, ...d });
  return {
    ...(d.maxTokens !== undefined ? { maxTokens: d.maxTokens as number } : {}),
    pack: (d.pack as boolean | undefined) ?? false,
    evalFraction: (d.evalFraction as number | undefined) ?? 0,
    ...(d.seed !== undefined ? { seed: d.seed as number } : {}),
  };
}

/** The pool's base, which every run trains on. */
export interface PoolBase {
  /** the model directory (as run settings name it) */
  model: string;
  config: ModelConfig;
  baseFormat: ResolvedBaseSpec | null;
  /** the largest result frame the pool's workers may send (bytes); absent: not limited */
  maxResultBytes?: number;
  /** the pool computes every run itself (lanes.ts), which serves synchronous runs only */
  inProcess?: boolean;
}

const TOP_FIELDS = ['name', 'run', 'weight', 'priority'];
/** run settings a submission may give (model and baseFormat are the pool's; data's file is the upload) */
const RUN_FIELDS = ['lora', 'train', 'wire', 'local', 'checkpointEvery', 'aggregation', 'arithmetic', 'data'];

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
    if (field === 'model' || field === 'baseFormat')
      fail(ErrorCodes.CONFIG, `run.${field}: the pool fixes it (its base model and format), leave it out`);
    if (!RUN_FIELDS.includes(field))
      fail(ErrorCodes.CONFIG, `run has an unknown field "${field}"; expected some of ${RUN_FIELDS.join(', ')}`);
  }
  const { data: rawData, ...rest } = run as Record<string, unknown>;
  const data = checkData(rawData);
  const settings = checkRunSettings({ ...rest, model: base.model, data: null, baseFormat: base.baseFormat });
  if (settings.local && base.inProcess)
    fail(
      ErrorCodes.CONFIG,
      'run.local: local steps (DiLoCo) need workers; this pool computes in-process. Submit a synchronous run',
    );
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
  // a result carries 4 bytes per adapter value; the pool's socket takes frames up to maxResultBytes
  const resultBytes = 4 * adapterParameterCount(spec) + 64 * 1024;
  if (base.maxResultBytes !== undefined && resultBytes > base.maxResultBytes)
    fail(
      ErrorCodes.CONFIG,
      `run.lora: this adapter's results are ${(resultBytes / 2 ** 20).toFixed(1)} MiB; the pool takes at most ` +
        `${(base.maxResultBytes / 2 ** 20).toFixed(1)} MiB (a smaller lora.r or fewer targets)`,
    );
  const share = checkShareSettings({ weight: input.weight as number, priority: input.priority as number });
  return { name, settings, share, data };
}
