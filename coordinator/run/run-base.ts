/**
 * The run's frozen base, as workers fetch it and as the coordinator's own copy loads it: the
 * checkpoint's files as they are (float32 tensors), or with run.baseFormat one compact base file
 * quantized from them once (io/compact-cache.ts). Workers then download, verify and cache that one
 * file instead of the checkpoint, and the coordinator's eval, spot checks and --in-process steps
 * run on the very same bits.
 */
import * as tf from '@tensorflow/tfjs-core';
import { defaultCacheDir } from '../../node/cache-dir.ts';
import { loadCompactBaseFile } from '../../node/compact-file.ts';
import type { BaseWeights } from '../../shared/model/compact-base.ts';
import type { ResolvedBaseSpec } from '../../shared/quant/formats.ts';
import { compactBaseFile } from '../io/compact-cache.ts';
import { loadWeights, type ModelDir, type ModelFile } from '../io/model-dir.ts';
import type { RunConfig } from './run-config.ts';

export interface RunBase {
  /** the files workers fetch by sha256: config.json and the weight files, or config.json and the compact file */
  files: ModelFile[];
  /** the compact format of the weights workers fetch; null: the checkpoint's own, loaded as float32 */
  format: ResolvedBaseSpec | null;
  /** the base for this process (read only when first needed) */
  load(): BaseWeights;
}

/**
 * The base of a run. `weights`: a float32 base the caller already loaded, used as is by a float32
 * run (a compact run loads its compact file, the bits the workers hold).
 */
export async function prepareBase(
  config: RunConfig,
  model: ModelDir,
  log: (line: string) => void,
  weights?: Map<string, tf.Tensor>,
): Promise<RunBase> {
  const format = config.run.baseFormat;
  // The caller's tensors stay the caller's: the run gets clones (tfjs shares the data, nothing is
  // copied), which it may dispose, as baseForKernels does when it re-holds a base for relaxed-fma.
  const handOver = (w: Map<string, tf.Tensor>) => new Map([...w].map(([name, t]) => [name, tf.clone(t)]));
  if (!format)
    return { files: model.files, format, load: () => (weights ? handOver(weights) : loadWeights(model).weights) };
  const file = await compactBaseFile(model, format, config.deployment.cacheDir ?? defaultCacheDir(), log);
  return {
    files: [...model.files.filter((f) => !f.name.endsWith('.safetensors')), file],
    format,
    load: () => loadCompactBaseFile(model.config, file.path, format),
  };
}
