/** Reading a PEFT adapter directory back into loramesh's adapter state. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LoraConfig, ModelConfig } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { decodePeftAdapter, loraConfigFromPeft } from '../../shared/formats/peft.ts';
import { adapterSpec, type AdapterState, type AdapterTensorSpec } from '../../shared/lora/adapter.ts';

export interface LoadedAdapter {
  lora: LoraConfig;
  spec: AdapterTensorSpec[];
  state: AdapterState;
}

export function readAdapterDir(dir: string, model: ModelConfig): LoadedAdapter {
  const configPath = join(dir, 'adapter_config.json');
  const weightsPath = join(dir, 'adapter_model.safetensors');
  if (!existsSync(configPath) || !existsSync(weightsPath))
    fail(ErrorCodes.MODEL, `--adapter ${dir}: expected adapter_config.json and adapter_model.safetensors`);
  const lora = loraConfigFromPeft(JSON.parse(readFileSync(configPath, 'utf8')));
  const modules = decodePeftAdapter(new Uint8Array(readFileSync(weightsPath)));
  const spec = adapterSpec(model, lora);
  const state: AdapterState = new Map();
  for (const t of spec) {
    const m = modules.get(t.modulePath) ?? fail(ErrorCodes.SHAPE, `adapter ${dir} has no tensors for ${t.modulePath}`);
    const [data, shape] = t.which === 'A' ? [m.A, m.aShape] : [m.B, m.bShape];
    if (shape[0] !== t.shape[0] || shape[1] !== t.shape[1])
      fail(ErrorCodes.SHAPE, `adapter ${t.name} has shape [${shape}], the model needs [${t.shape}]`);
    state.set(t.name, data);
  }
  const extra = [...modules.keys()].filter((path) => !spec.some((t) => t.modulePath === path));
  if (extra.length > 0)
    fail(ErrorCodes.SHAPE, `adapter ${dir} has modules this model does not: ${extra.slice(0, 3).join(', ')}`);
  return { lora, spec, state };
}
