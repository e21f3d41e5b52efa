/**
 * `train --resume`: the run folder's run_config.json defines the run; flags given on the command
 * line may only repeat it. Run-defining settings (model, data, LoRA, optimizer, seed, codecs, local
 * steps, checkpoint interval, aggregation, reduction block, base format, arithmetic variant) are kept and a flag that contradicts one is refused,
 * naming each; `--steps` may be raised to extend a run. Deployment settings (host, port, tokens,
 * workers, limits, heartbeat, spot checks) are not stored and may change freely.
 */
import { resolve } from 'node:path';
import { ARITHMETIC_VARIANTS, type ArithmeticVariant, DEFAULT_ARITHMETIC } from '../../shared/arithmetic.ts';
import { checkLoraConfig, checkTrainConfig, type LoraConfig, type TrainConfig } from '../../shared/config.ts';
import { describe, ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';
import { checkDataSpec, checkLocal, type DataSpec, within } from '../run/run-config.ts';
import { checkCodecSpec, type CodecName, type CodecSpec } from '../../shared/protocol/wire-codec.ts';
import { type ResolvedBaseSpec, resolveBaseSpec } from '../../shared/quant/formats.ts';
import { AGGREGATIONS } from '../../shared/train/robust.ts';
import type { OuterConfig } from '../../shared/train/local-steps.ts';

/** commander's parsed `train` options (flag values after parsing, defaults filled in). */
export type TrainFlags = Record<string, any>;

/** What defines a run: stored in run_config.json, rebuilt from flags for a new run. */
export interface RunShape {
  model: string;
  data: DataSpec;
  lora: LoraConfig;
  train: TrainConfig;
  wire?: { up: CodecSpec; down: CodecSpec };
  local?: OuterConfig;
  checkpointEvery?: number;
  aggregation?: string;
  /** absent: a float32 base (and every run_config.json written before compact bases) */
  baseFormat?: ResolvedBaseSpec;
  /** absent: simd128, the only arithmetic before variants (every run_config.json written before them) */
  arithmetic?: ArithmeticVariant;
}

/** The run the flags define on their own (a new run), in run_config.json's shape. */
export function runShapeFrom(o: TrainFlags): RunShape {
  const data: DataSpec = o.data
    ? {
        kind: 'jsonl',
        path: resolve(o.data),
        maxTokens: o.maxTokens,
        pack: o.pack,
        evalFraction: o.evalFraction,
        seed: o.seed,
      }
    : { kind: 'demo', trainSize: o.trainSize, seed: o.seed };
  const lora = checkLoraConfig({
    r: o.rank,
    alpha: o.alpha,
    dropout: o.dropout,
    targetModules: o.targets,
    init: o.init,
    useRslora: o.rslora,
  });
  const train = checkTrainConfig({
    steps: o.steps,
    globalBatch: o.globalBatch,
    microBatch: o.microBatch,
    lr: o.lr,
    warmupSteps: o.warmup,
    weightDecay: o.weightDecay,
    clipNorm: o.clip,
    seed: o.seed,
    ...(o.reductionBlock !== undefined ? { reductionBlock: o.reductionBlock } : {}),
  });
  const codec = (name: CodecName): CodecSpec => (name === 'int8' ? { name, blockSize: o.codecBlock } : { name });
  const wire = { up: codec(o.codecUp ?? o.codec), down: codec(o.codecDown ?? o.codec) };
  const local: OuterConfig | undefined =
    o.localSteps > 0
      ? { steps: o.localSteps, innerLr: o.innerLr ?? o.lr, outerLr: o.outerLr, outerMomentum: o.outerMomentum }
      : undefined;
  const baseFormat = baseFormatFrom(o);
  return {
    model: resolve(o.model),
    data,
    lora,
    train,
    wire,
    ...(local ? { local } : {}),
    checkpointEvery: o.checkpointEvery,
    aggregation: o.aggregation,
    ...(baseFormat ? { baseFormat } : {}),
    arithmetic: o.arithmetic,
  };
}

/** The flag each field of a base format spec comes from. */
const BASE_FLAGS: Record<string, string> = {
  '--base-format.format': '--base-format',
  '--base-format.blockSize': '--base-block',
  '--base-format.doubleQuant': '--base-double-quant',
};

/**
 * --base-format with --base-block and --base-double-quant as a checked spec (undefined: none asked).
 * An option that does not apply (--base-block with f16, --base-double-quant with int8 or alone) is
 * refused, naming the flag, rather than silently doing nothing.
 */
function baseFormatFrom(o: TrainFlags): ResolvedBaseSpec | undefined {
  if (o.baseFormat === undefined) {
    const stray = o.baseBlock !== undefined ? '--base-block' : o.baseDoubleQuant ? '--base-double-quant' : null;
    if (stray) fail(ErrorCodes.CONFIG, `${stray} needs --base-format int8 or nf4`);
    return undefined;
  }
  const spec = {
    format: o.baseFormat,
    ...(o.baseBlock === undefined ? {} : { blockSize: o.baseBlock }),
    ...(o.baseDoubleQuant ? { doubleQuant: true } : {}),
  };
  try {
    return resolveBaseSpec(spec, '--base-format');
  } catch (err) {
    if (!(err instanceof LoraMeshError)) throw err;
    const message = err.message.replace(/^LM_ERR_\w+: /, '').replace(/--base-format\.\w+/, (f) => BASE_FLAGS[f] ?? f);
    throw new LoraMeshError(ErrorCodes.CONFIG, message);
  }
}

/** The flags that define `shape` (runShapeFrom's inverse), so a typed flag is read against the run's own others. */
export function flagsOf(shape: RunShape): TrainFlags {
  const { data, lora, train, wire, local } = shape;
  const sameCodec = !wire || wire.up.name === wire.down.name;
  return {
    model: shape.model,
    ...(data.kind === 'jsonl'
      ? { data: data.path, maxTokens: data.maxTokens, pack: data.pack, evalFraction: data.evalFraction }
      : { data: undefined, trainSize: data.trainSize }),
    steps: train.steps,
    globalBatch: train.globalBatch,
    microBatch: train.microBatch,
    lr: train.lr,
    warmup: train.warmupSteps,
    weightDecay: train.weightDecay,
    clip: train.clipNorm,
    seed: train.seed,
    reductionBlock: train.reductionBlock,
    rank: lora.r,
    alpha: lora.alpha,
    dropout: lora.dropout,
    targets: lora.targetModules,
    init: lora.init,
    rslora: lora.useRslora,
    codec: wire?.up.name ?? 'f32',
    codecUp: sameCodec ? undefined : wire!.up.name,
    codecDown: sameCodec ? undefined : wire!.down.name,
    codecBlock: [wire?.up, wire?.down].find((c) => c?.name === 'int8')?.blockSize,
    localSteps: local?.steps ?? 0,
    innerLr: local?.innerLr,
    outerLr: local?.outerLr,
    outerMomentum: local?.outerMomentum,
    // an older run_config.json lacks these: the flags' own values stand
    ...(shape.checkpointEvery === undefined ? {} : { checkpointEvery: shape.checkpointEvery }),
    ...(shape.aggregation === undefined ? {} : { aggregation: shape.aggregation }),
    ...baseFlagsOf(shape.baseFormat),
    arithmetic: shape.arithmetic ?? DEFAULT_ARITHMETIC,
  };
}

/** The --base-* flags that give this spec (baseFormatFrom's inverse; the CLI's dq block is the default). */
function baseFlagsOf(spec: ResolvedBaseSpec | undefined): TrainFlags {
  return {
    baseFormat: spec?.format,
    baseBlock: spec && 'blockSize' in spec ? spec.blockSize : undefined,
    baseDoubleQuant: spec?.format === 'nf4' && spec.doubleQuant ? true : undefined,
  };
}

/**
 * run_config.json as read back for --resume, checked field by field with the same checkers a new
 * run's flags go through (a hand-edited or damaged file fails here, naming the field, not later).
 */
export function checkRunShape(raw: unknown, file: string): RunShape {
  const bad = (field: string, value: unknown, expected: string): never =>
    fail(ErrorCodes.CONFIG, `${file}: ${field} should be ${expected}, got ${describe(value)}`);
  const o = (typeof raw === 'object' && raw !== null ? raw : bad('the file', raw, 'a JSON object')) as Record<
    string,
    any
  >;
  if (typeof o.model !== 'string' || o.model === '') bad('model', o.model, 'a model directory');
  const data = within(file, () => checkDataSpec('data', o.data ?? bad('data', o.data, 'an object')));
  const lora = within(`${file}: lora`, () => checkLoraConfig(o.lora ?? bad('lora', o.lora, 'an object')));
  const train = within(`${file}: train`, () => checkTrainConfig(o.train ?? bad('train', o.train, 'an object')));
  const wire =
    o.wire === undefined
      ? undefined
      : {
          up: within(`${file}: wire.up`, () => checkCodecSpec(o.wire.up, 'codec')),
          down: within(`${file}: wire.down`, () => checkCodecSpec(o.wire.down, 'codec')),
        };
  const local = o.local == null ? undefined : within(file, () => checkLocal('local', o.local));
  const baseFormat = o.baseFormat == null ? undefined : resolveBaseSpec(o.baseFormat, `${file}: baseFormat`);
  // an older run_config.json may lack these two: the flags' values stand (resumeShape)
  if (o.checkpointEvery !== undefined && !(Number.isInteger(o.checkpointEvery) && o.checkpointEvery >= 0))
    bad('checkpointEvery', o.checkpointEvery, 'an integer ≥ 0');
  if (o.aggregation !== undefined && !(AGGREGATIONS as readonly string[]).includes(o.aggregation))
    bad('aggregation', o.aggregation, `one of ${AGGREGATIONS.join(', ')}`);
  if (o.arithmetic !== undefined && !(ARITHMETIC_VARIANTS as readonly string[]).includes(o.arithmetic))
    bad('arithmetic', o.arithmetic, `one of ${ARITHMETIC_VARIANTS.join(', ')}`);
  return {
    model: o.model,
    data: data as DataSpec,
    lora,
    train,
    ...(wire ? { wire } : {}),
    ...(local ? { local } : {}),
    ...(o.checkpointEvery !== undefined ? { checkpointEvery: o.checkpointEvery } : {}),
    ...(o.aggregation !== undefined ? { aggregation: o.aggregation } : {}),
    ...(baseFormat ? { baseFormat } : {}),
    ...(o.arithmetic !== undefined ? { arithmetic: o.arithmetic } : {}),
  };
}

type Pick = (s: RunShape) => unknown;
const data =
  (key: string): Pick =>
  (s) =>
    (s.data as Record<string, unknown>)[key];

/** commander's option key → the part of the run it sets. */
const RUN_DEFINING: Record<string, { flag: string; pick: Pick }> = {
  model: { flag: '--model', pick: (s) => s.model },
  data: { flag: '--data', pick: (s) => (s.data.kind === 'jsonl' ? s.data.path : null) },
  maxTokens: { flag: '--max-tokens', pick: data('maxTokens') },
  pack: { flag: '--pack', pick: data('pack') },
  evalFraction: { flag: '--eval-fraction', pick: data('evalFraction') },
  trainSize: { flag: '--train-size', pick: data('trainSize') },
  globalBatch: { flag: '--global-batch', pick: (s) => s.train.globalBatch },
  microBatch: { flag: '--micro-batch', pick: (s) => s.train.microBatch },
  lr: { flag: '--lr', pick: (s) => s.train.lr },
  warmup: { flag: '--warmup', pick: (s) => s.train.warmupSteps },
  weightDecay: { flag: '--weight-decay', pick: (s) => s.train.weightDecay },
  clip: { flag: '--clip', pick: (s) => s.train.clipNorm },
  seed: { flag: '--seed', pick: (s) => s.train.seed },
  reductionBlock: { flag: '--reduction-block', pick: (s) => s.train.reductionBlock },
  rank: { flag: '--rank', pick: (s) => s.lora.r },
  alpha: { flag: '--alpha', pick: (s) => s.lora.alpha },
  dropout: { flag: '--dropout', pick: (s) => s.lora.dropout },
  targets: { flag: '--targets', pick: (s) => s.lora.targetModules },
  init: { flag: '--init', pick: (s) => s.lora.init },
  rslora: { flag: '--rslora', pick: (s) => s.lora.useRslora },
  codec: { flag: '--codec', pick: (s) => s.wire },
  codecUp: { flag: '--codec-up', pick: (s) => s.wire?.up },
  codecDown: { flag: '--codec-down', pick: (s) => s.wire?.down },
  codecBlock: {
    flag: '--codec-block',
    pick: (s) => [s.wire?.up, s.wire?.down].find((c) => c?.name === 'int8')?.blockSize,
  },
  localSteps: { flag: '--local-steps', pick: (s) => s.local?.steps ?? 0 },
  innerLr: { flag: '--inner-lr', pick: (s) => s.local?.innerLr },
  outerLr: { flag: '--outer-lr', pick: (s) => s.local?.outerLr },
  outerMomentum: { flag: '--outer-momentum', pick: (s) => s.local?.outerMomentum },
  checkpointEvery: { flag: '--checkpoint-every', pick: (s) => s.checkpointEvery },
  aggregation: { flag: '--aggregation', pick: (s) => s.aggregation },
  baseFormat: { flag: '--base-format', pick: (s) => s.baseFormat?.format },
  baseBlock: { flag: '--base-block', pick: (s) => baseFlagsOf(s.baseFormat).baseBlock },
  baseDoubleQuant: { flag: '--base-double-quant', pick: (s) => baseFlagsOf(s.baseFormat).baseDoubleQuant },
  // an older run_config.json has none: it computed with simd128, so another flag contradicts it
  arithmetic: { flag: '--arithmetic', pick: (s) => s.arithmetic ?? DEFAULT_ARITHMETIC },
};

/** Flags that make no sense with --resume at all. */
const NOT_WITH_RESUME: Record<string, string> = {
  adapter: '--adapter (the checkpoint already holds the adapter)',
  runId: '--run-id (the run folder given to --resume names the run)',
  out: '--out (the run folder given to --resume says where it is)',
};

const show = (v: unknown) => (v === undefined ? 'unset' : JSON.stringify(v));

/**
 * The run to continue: `stored` (run_config.json) with `--steps` raised if asked. `flags` are the
 * parsed options; `given` names the option keys the user typed. Each typed flag is read together
 * with the run's own values for the others (`--codec-block 32` against the run's int8 codec, not
 * against the f32 default), and refused when the run it then describes differs from the stored one.
 */
export function resumeShape(stored: RunShape, flags: TrainFlags, given: ReadonlySet<string>, runDir: string): RunShape {
  const typed = Object.fromEntries([...given].filter((k) => k in flags).map((k) => [k, flags[k]]));
  const fromFlags = runShapeFrom({ ...flags, ...flagsOf(stored), ...typed });
  const problems: string[] = [];
  for (const key of given) {
    if (NOT_WITH_RESUME[key]) problems.push(`${NOT_WITH_RESUME[key]} cannot be combined with --resume`);
    const setting = RUN_DEFINING[key];
    if (!setting) continue;
    // A flag that does not apply to the run it describes (--inner-lr without local steps) shows as typed.
    const [theirs, ours] = [setting.pick(fromFlags) ?? typed[key], setting.pick(stored)];
    // Settings an older run_config.json did not record are taken from the flag.
    if (ours === undefined && (key === 'checkpointEvery' || key === 'aggregation')) continue;
    if (JSON.stringify(theirs) !== JSON.stringify(ours))
      problems.push(`${setting.flag} ${show(theirs)} contradicts the run's ${show(ours)}`);
  }
  let steps = stored.train.steps;
  if (given.has('steps')) {
    if (fromFlags.train.steps < stored.train.steps)
      problems.push(
        `--steps ${fromFlags.train.steps} is below the run's ${stored.train.steps} (steps may only be raised)`,
      );
    else steps = fromFlags.train.steps;
  }
  if (problems.length > 0) {
    fail(
      ErrorCodes.CONFIG,
      `--resume ${runDir}: ${problems.join('; ')}. ` +
        'Run-defining settings come from run_config.json; leave these flags out',
    );
  }
  return {
    ...stored,
    train: { ...stored.train, steps },
    checkpointEvery: fromFlags.checkpointEvery,
    aggregation: fromFlags.aggregation,
  };
}
