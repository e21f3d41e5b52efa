/**
 * `loramesh logits`: what loramesh computes for fixed prompts given as token ids, written to one
 * safetensors file that scripts/interop/peft_check.py compares with transformers + PEFT. Per prompt k:
 *
 *   input_ids.k       I32 [1, T]     the prompt
 *   logits.k          F32 [1, T, V]  float32 base + the unmerged LoRA branches (the training forward)
 *   greedy.k          I32 [N]        the greedy continuation on the same parameters (KV cache), exactly
 *                                    N tokens: no EOS stop
 *   logits_compact.k  F32 [1, T, V]  only for an adapter trained on a compact base (its run_config.json,
 *                                    or --base-format): the same forward on that base, so the check can
 *                                    state the gap between the base the adapter saw and the float one
 *
 * __metadata__ (strings): generator, version, command, model, adapter, base_format, base_format_source,
 * prompts, greedy_tokens. Prompts may differ in length; each is computed alone (batch 1, no padding).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { contextLength, type ModelConfig } from '../../shared/config.ts';
import { describe, ErrorCodes, fail } from '../../shared/errors.ts';
import { encodeSafetensors, type TensorInput } from '../../shared/formats/safetensors.ts';
import { generate } from '../../shared/generate.ts';
import { type BaseWeights, compactBase } from '../../shared/model/compact-base.ts';
import { FrozenBase, withAdapter } from '../../shared/lora/params.ts';
import { createModel, type CausalLM, type ParamSource } from '../../shared/model/causal-lm.ts';
import {
  type BaseFormat,
  describeBaseSpec,
  type ResolvedBaseSpec,
  resolveBaseSpec,
} from '../../shared/quant/formats.ts';
import { packagePath } from '../../node/package-root.ts';
import { type LoadedAdapter, readAdapterDir } from '../io/adapter-io.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';
import { writeAtomic } from '../io/run-dir.ts';

export interface LogitsOptions {
  model: string;
  adapter?: string;
  /** one token-id list per prompt (the CLI's --prompt-ids, parsed by cli/options.ts tokenIds) */
  promptIds: number[][];
  greedyTokens: number;
  /** the compact base the adapter was trained on, when no run_config.json says it */
  baseFormat?: BaseFormat;
  out: string;
}

/** Every id inside the vocabulary, every prompt plus its greedy tokens inside the context. */
export function checkPrompts(config: ModelConfig, prompts: number[][], greedyTokens: number): void {
  if (prompts.length === 0) fail(ErrorCodes.CONFIG, '--prompt-ids: expected at least one prompt');
  prompts.forEach((ids, k) => {
    const bad = ids.find((id) => id >= config.vocab_size);
    if (bad !== undefined)
      fail(
        ErrorCodes.CONFIG,
        `--prompt-ids ${ids.join(',')} (prompt ${k}): token id ${bad} is outside the vocabulary ` +
          `[0, ${config.vocab_size - 1}] of config.vocab_size ${config.vocab_size}`,
      );
    if (ids.length + greedyTokens > contextLength(config))
      fail(
        ErrorCodes.CONFIG,
        `--prompt-ids (prompt ${k}, ${ids.length} tokens) plus --greedy-tokens ${greedyTokens} is ` +
          `${ids.length + greedyTokens} positions; the model's context is ${contextLength(config)}`,
      );
  });
}

/**
 * The compact base an adapter was trained on: its run folder's run_config.json (baseFormat, exact with
 * its block size), else --base-format (default block size), else none. A flag that contradicts the
 * run's record is refused rather than silently preferred.
 */
export function adapterBaseFormat(
  adapterDir: string | undefined,
  flag: BaseFormat | undefined,
): { spec: ResolvedBaseSpec | null; source: string } {
  const file = adapterDir === undefined ? undefined : join(adapterDir, 'run_config.json');
  let recorded: ResolvedBaseSpec | null | undefined;
  if (file && existsSync(file)) {
    let raw: { baseFormat?: unknown };
    try {
      raw = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      fail(ErrorCodes.CONFIG, `${file}: not valid JSON (${(err as Error).message})`);
    }
    recorded = raw.baseFormat == null ? null : resolveBaseSpec(raw.baseFormat, `${file}: baseFormat`);
  }
  if (recorded !== undefined) {
    const format = recorded?.format ?? 'f32';
    if (flag !== undefined && flag !== format)
      fail(
        ErrorCodes.CONFIG,
        `--base-format ${flag} contradicts ${file}, which records baseFormat ${format}; ` +
          'drop the flag (the run folder says how the adapter was trained)',
      );
    return { spec: format === 'f32' ? null : recorded, source: file! };
  }
  if (flag === undefined || flag === 'f32') return { spec: null, source: flag ? '--base-format' : 'none' };
  return { spec: resolveBaseSpec({ format: flag }), source: '--base-format' };
}

/** The logits (T·V values, row-major) of one prompt, a batch of 1. */
function logitsOf(model: CausalLM, params: ParamSource, ids: number[]): Float32Array {
  return tf.tidy(() => model.forward(params, tf.tensor2d(ids, [1, ids.length], 'int32')).dataSync()) as Float32Array;
}

/** Computes every prompt on `base` (with the adapter's branches beside it, unmerged, when given). */
function onBase<T>(base: FrozenBase, adapter: LoadedAdapter | undefined, use: (params: ParamSource) => T): T {
  return adapter ? withAdapter(base, adapter.state, adapter.lora, use) : use(base);
}

function projectVersion(): string {
  return JSON.parse(readFileSync(packagePath('package.json'), 'utf8')).version;
}

export async function logitsCommand(o: LogitsOptions, log: (line: string) => void = console.log): Promise<string> {
  const dir = await openModelDir(o.model);
  const out = resolve(o.out);
  if (existsSync(out) && statSync(out).isDirectory())
    fail(ErrorCodes.CONFIG, `--out ${o.out} is a directory; expected a file path like ref.safetensors`);
  if (!Number.isInteger(o.greedyTokens) || o.greedyTokens < 1)
    fail(ErrorCodes.CONFIG, `--greedy-tokens should be an integer ≥ 1, got ${describe(o.greedyTokens)}`);
  checkPrompts(dir.config, o.promptIds, o.greedyTokens);
  const adapter = o.adapter === undefined ? undefined : readAdapterDir(o.adapter, dir.config);
  const compact = adapterBaseFormat(o.adapter, o.baseFormat);

  const model = createModel(dir.config);
  const weights = loadWeights(dir).weights;
  const tensors: Record<string, TensorInput> = {};
  const vocab = dir.config.vocab_size;
  const floatBase = new FrozenBase(dir.config, weights);
  onBase(floatBase, adapter, (params) =>
    o.promptIds.forEach((ids, k) => {
      const [greedy] = generate(model, params, [ids], { maxNewTokens: o.greedyTokens, temperature: 0 });
      tensors[`input_ids.${k}`] = { data: Int32Array.from(ids), shape: [1, ids.length] };
      tensors[`logits.${k}`] = { data: logitsOf(model, params, ids), shape: [1, ids.length, vocab] };
      tensors[`greedy.${k}`] = { data: Int32Array.from(greedy), shape: [greedy.length] };
    }),
  );
  floatBase.dispose();
  if (compact.spec) {
    const compactWeights: BaseWeights = compactBase(dir.config, weights, compact.spec);
    const base = new FrozenBase(dir.config, compactWeights);
    onBase(base, adapter, (params) =>
      o.promptIds.forEach((ids, k) => {
        tensors[`logits_compact.${k}`] = { data: logitsOf(model, params, ids), shape: [1, ids.length, vocab] };
      }),
    );
    base.dispose();
  }
  tf.dispose([...weights.values()]);

  const metadata: Record<string, string> = {
    generator: 'loramesh logits',
    version: projectVersion(),
    command: ['loramesh', ...process.argv.slice(2)].join(' '),
    model: dir.dir,
    adapter: o.adapter === undefined ? '' : resolve(o.adapter),
    base_format: compact.spec ? describeBaseSpec(compact.spec) : 'f32',
    base_format_source: compact.source,
    prompts: String(o.promptIds.length),
    greedy_tokens: String(o.greedyTokens),
  };
  writeAtomic(out, encodeSafetensors(tensors, metadata));
  log(
    `wrote ${o.promptIds.length} prompt(s) × (logits, ${o.greedyTokens} greedy tokens)` +
      `${compact.spec ? ` + logits on the ${describeBaseSpec(compact.spec)} base the adapter was trained on` : ''}` +
      ` to ${out}`,
  );
  return out;
}
