/**
 * `loramesh extract --base DIR --tuned DIR --rank k`: a LoRA adapter (PEFT files) from a fully
 * fine-tuned model, by truncated SVD of W_tuned − W_base per target module (best rank-k
 * approximation, Eckart–Young), with the relative Frobenius error per module. Differences in
 * tensors LoRA cannot hold (norms, embeddings, biases) are reported, not silently dropped.
 */
import { basename, dirname, join, resolve } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { checkLoraConfig, loraScaling, type LinearModule } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { extractLowRank } from '../../shared/analysis/extract.ts';
import { adaptedModules, adapterSpec, fanInFanOut, loraName, type AdapterState } from '../../shared/lora/adapter.ts';
import { linearModulePaths, linearShape, linearStorage, moduleKind } from '../../shared/model/causal-lm.ts';
import { baseMatrices, writeJson } from '../io/analysis-io.ts';
import { markdownTable } from './analyze.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';
import { RunDir } from '../io/run-dir.ts';

export interface ExtractOptions {
  base: string;
  tuned: string;
  rank: number;
  out: string;
  /** default: every linear kind of the architecture except lm_head */
  targets?: LinearModule[];
  /** default: the rank, so α/r = 1 */
  alpha?: number;
}

export interface ExtractReport {
  module: string;
  deltaNorm: number;
  error: number;
  relativeError: number;
  optimalError: number;
  /** σ of ΔW up to rank + 4, for context */
  singularValues: number[];
}

/** ‖a − b‖_F of two same-shaped tensors. */
function differenceNorm(a: tf.Tensor, b: tf.Tensor): number {
  const [x, y] = [a.dataSync(), b.dataSync()];
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += (x[i] - y[i]) ** 2;
  return Math.sqrt(sum);
}

export async function extractCommand(
  o: ExtractOptions,
  log: (line: string) => void = console.log,
): Promise<{ out: string; modules: ExtractReport[] }> {
  const base = await openModelDir(o.base);
  const tuned = await openModelDir(o.tuned);
  if (base.config.model_type !== tuned.config.model_type)
    fail(
      ErrorCodes.SHAPE,
      `--tuned ${o.tuned} is a ${tuned.config.model_type} model but --base ${o.base} is ${base.config.model_type}`,
    );
  for (const path of linearModulePaths(base.config)) {
    const [b, t] = [linearShape(base.config, path), linearShape(tuned.config, path)];
    if (b.join() !== t.join())
      fail(
        ErrorCodes.SHAPE,
        `${path} is ${t.join('×')} in --tuned but ${b.join('×')} in --base; expected the same architecture`,
      );
  }
  const kinds = [
    ...new Set(
      linearModulePaths(base.config)
        .filter((p) => p !== 'lm_head')
        .map(moduleKind),
    ),
  ] as LinearModule[];
  const lora = checkLoraConfig({ r: o.rank, alpha: o.alpha ?? o.rank, targetModules: o.targets ?? kinds });
  const scale = loraScaling(lora);
  const baseWeights = loadWeights(base).weights;
  const tunedWeights = loadWeights(tuned).weights;
  const [baseW, tunedW] = [
    baseMatrices(base.config, baseWeights, `--base ${o.base}`),
    baseMatrices(tuned.config, tunedWeights, `--tuned ${o.tuned}`),
  ];
  const state: AdapterState = new Map();
  const modules: ExtractReport[] = [];
  for (const path of adaptedModules(base.config, lora)) {
    const delta = tunedW.weight(path).sub(baseW.weight(path)); // (d_out, d_in)
    const m = extractLowRank(delta, o.rank, scale, path);
    state.set(loraName(path, 'A'), m.A);
    state.set(loraName(path, 'B'), m.B);
    modules.push({
      module: path,
      deltaNorm: m.deltaNorm,
      error: m.error,
      relativeError: m.relativeError,
      optimalError: m.optimalError,
      singularValues: m.singularValues.slice(0, o.rank + 4),
    });
  }
  // What the adapter cannot carry: every other tensor that changed.
  const adapted = new Set(adaptedModules(base.config, lora).map((p) => linearStorage(base.config, p).weight));
  const notCarried = [...baseWeights]
    .filter(([name]) => !adapted.has(name))
    .map(([name, t]) => ({
      tensor: name,
      differenceNorm: differenceNorm(
        t,
        tunedWeights.get(name) ?? fail(ErrorCodes.MODEL, `--tuned ${o.tuned} has no tensor ${name}`),
      ),
    }))
    .filter((d) => d.differenceNorm > 0);
  const out = resolve(o.out);
  new RunDir(dirname(out), basename(out)).writeAdapter(
    adapterSpec(base.config, lora),
    state,
    lora,
    base.dir,
    fanInFanOut(base.config, lora),
  );
  const report = writeJson(out, 'extract_report.json', {
    base: base.dir,
    tuned: tuned.dir,
    rank: o.rank,
    alpha: lora.alpha,
    targets: lora.targetModules,
    modules,
    notCarried,
  });
  log(
    markdownTable(
      ['module', '‖ΔW‖_F', 'error ‖ΔW − BA‖_F', 'relative error', 'σ_k', 'σ_{k+1}'],
      modules.map((m) => [
        m.module,
        m.deltaNorm.toPrecision(4),
        m.error.toPrecision(4),
        m.relativeError.toPrecision(3),
        (m.singularValues[o.rank - 1] ?? 0).toPrecision(3),
        (m.singularValues[o.rank] ?? 0).toPrecision(3),
      ]),
    ),
  );
  const total =
    Math.sqrt(modules.reduce((s, m) => s + m.error ** 2, 0)) /
    Math.sqrt(modules.reduce((s, m) => s + m.deltaNorm ** 2, 0) || 1);
  log(`rank ${o.rank}: relative Frobenius error over all ${modules.length} modules ${total.toPrecision(3)}`);
  if (notCarried.length > 0)
    log(
      'not carried by a LoRA adapter (changed outside the target modules): ' +
        `${notCarried.map((d) => `${d.tensor} (‖Δ‖_F ${d.differenceNorm.toPrecision(3)})`).join(', ')}`,
    );
  log(`wrote ${join(out, 'adapter_config.json')}, adapter_model.safetensors and ${report}`);
  return { out, modules };
}
