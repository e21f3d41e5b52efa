/**
 * `loramesh merge`: W' = W + (α/r)·B·A written as a Hugging Face model directory with the base's
 * tensor names and dtypes (config, tokenizer and generation files copied), so transformers loads
 * it like the base model.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { encodeSafetensors, type TensorInput } from '../../shared/formats/safetensors.ts';
import { mergeAdapter } from '../../shared/lora/adapter.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { readAdapterDir } from '../io/adapter-io.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';
import { writeAtomic } from '../io/run-dir.ts';

export interface MergeOptions {
  model: string;
  adapter: string;
  out: string;
}

export async function mergeCommand(o: MergeOptions, log: (line: string) => void = console.log): Promise<string> {
  const dir = await openModelDir(o.model);
  const out = resolve(o.out);
  if (out === dir.dir) fail(ErrorCodes.CONFIG, `--out ${o.out} is the base model directory; choose another folder`);
  const { weights, stored } = loadWeights(dir);
  const adapter = readAdapterDir(o.adapter, dir.config);
  const merged = mergeAdapter(dir.config, weights, adapter.spec, adapter.state, adapter.lora);
  const tensors: Record<string, TensorInput> = {};
  for (const [name, t] of merged) {
    const s = stored.get(name)!;
    // F16/BF16 bases stay F16/BF16: the merged float32 values round to nearest even.
    tensors[s.fileName] = {
      data: t.dataSync() as Float32Array,
      shape: t.shape,
      dtype: s.dtype === 'F16' || s.dtype === 'BF16' ? s.dtype : 'F32',
    };
  }
  mkdirSync(out, { recursive: true });
  writeAtomic(join(out, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  writeAtomic(join(out, 'config.json'), JSON.stringify(dir.rawConfig, null, 2) + '\n');
  for (const f of dir.extraFiles) copyFileSync(join(dir.dir, f), join(out, f));
  log(
    `merged ${adapter.spec.length / 2} LoRA modules (r=${adapter.lora.r}, α=${adapter.lora.alpha}) ` +
      `into ${out}/model.safetensors`,
  );
  return out;
}
