/**
 * The 🤗 PEFT adapter layout, so PEFT / transformers load loramesh adapters unchanged and
 * loramesh loads theirs: adapter_config.json plus adapter_model.safetensors with keys
 *   base_model.model.<module path>.lora_A.weight   (r, d_in)
 *   base_model.model.<module path>.lora_B.weight   (d_out, r)
 * Inside loramesh a module path is e.g. `model.layers.0.self_attn.q_proj`.
 */
import { checkLoraConfig, type LinearModule, type LoraConfig } from '../config.ts';
import { describe, ErrorCodes, fail } from '../errors.ts';
import { decodeSafetensors, encodeSafetensors } from './safetensors.ts';

/** One adapted module: A (r, d_in) and B (d_out, r), row-major. */
export interface PeftModule {
  A: Float32Array;
  B: Float32Array;
  aShape: [number, number];
  bShape: [number, number];
}

/** The adapter_config.json fields PEFT reads for a LoRA adapter (others take PEFT's defaults). */
export interface PeftAdapterConfig {
  peft_type: 'LORA';
  task_type: 'CAUSAL_LM';
  base_model_name_or_path: string;
  revision: null;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: LinearModule[];
  bias: 'none';
  /** true for GPT-2's Conv1D layers (weights stored (in, out)); A and B keep the same shapes either way */
  fan_in_fan_out: boolean;
  use_rslora: boolean;
  init_lora_weights: true | 'gaussian';
  modules_to_save: null;
  inference_mode: true;
}

const KEY_PREFIX = 'base_model.model.';
const KEY_PATTERN = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/;

export function peftKey(modulePath: string, which: 'A' | 'B'): string {
  return `${KEY_PREFIX}${modulePath}.lora_${which}.weight`;
}

/** The module path and side of a PEFT LoRA key, or null for any other key. */
export function parsePeftKey(key: string): { modulePath: string; which: 'A' | 'B' } | null {
  const match = KEY_PATTERN.exec(key);
  return match ? { modulePath: match[1], which: match[2] as 'A' | 'B' } : null;
}

export function peftAdapterConfig(
  lora: LoraConfig,
  baseModelNameOrPath: string,
  fanInFanOut = false,
): PeftAdapterConfig {
  return {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: baseModelNameOrPath,
    revision: null,
    r: lora.r,
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    target_modules: [...lora.targetModules],
    bias: 'none',
    fan_in_fan_out: fanInFanOut,
    use_rslora: lora.useRslora,
    init_lora_weights: lora.init === 'kaiming' ? true : 'gaussian',
    modules_to_save: null,
    inference_mode: true,
  };
}

const isEmpty = (value: unknown) =>
  value === undefined ||
  value === null ||
  (Array.isArray(value) && value.length === 0) ||
  (typeof value === 'object' && Object.keys(value as object).length === 0);

/**
 * Parses adapter_config.json into a LoraConfig. Missing fields take PEFT's defaults (r 8,
 * lora_alpha 8, lora_dropout 0, use_rslora false, init_lora_weights true). Features loramesh
 * cannot reproduce (bias terms, transposed weights, DoRA, per-module ranks, extra trained modules,
 * other initialisations) are refused rather than silently dropped.
 */
export function loraConfigFromPeft(json: unknown): LoraConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    fail(ErrorCodes.CONFIG, `adapter_config.json should be an object, got ${describe(json)}`);
  const c = json as Record<string, unknown>;
  const refuse = (field: string, expected: string) =>
    fail(
      ErrorCodes.CONFIG,
      `adapter_config.${field} is ${JSON.stringify(c[field])}; loramesh supports only ${expected}`,
    );
  if (c.peft_type !== 'LORA') refuse('peft_type', '"LORA"');
  if ((c.bias ?? 'none') !== 'none') refuse('bias', '"none"');
  // fan_in_fan_out only says how the BASE weight is stored (GPT-2 Conv1D); loramesh knows that from the architecture.
  if (typeof (c.fan_in_fan_out ?? false) !== 'boolean') refuse('fan_in_fan_out', 'true or false');
  if ((c.use_dora ?? false) !== false) refuse('use_dora', 'false');
  for (const field of ['rank_pattern', 'alpha_pattern', 'modules_to_save', 'layers_to_transform']) {
    if (!isEmpty(c[field])) refuse(field, 'null or empty');
  }
  if (!Array.isArray(c.target_modules)) {
    fail(
      ErrorCodes.CONFIG,
      `adapter_config.target_modules should be a list of module names, got ${JSON.stringify(c.target_modules)}`,
    );
  }
  const init = c.init_lora_weights ?? true;
  if (init !== true && init !== 'gaussian') refuse('init_lora_weights', 'true or "gaussian"');
  return checkLoraConfig({
    r: (c.r ?? 8) as number,
    alpha: (c.lora_alpha ?? 8) as number,
    dropout: (c.lora_dropout ?? 0) as number,
    targetModules: c.target_modules as LinearModule[],
    init: init === true ? 'kaiming' : 'gaussian',
    useRslora: (c.use_rslora ?? false) as boolean,
  });
}

/** adapter_model.safetensors bytes; F16/BF16 round from the float32 values to nearest even. */
export function encodePeftAdapter(modules: Map<string, PeftModule>, dtype: 'F32' | 'F16' | 'BF16' = 'F32'): Uint8Array {
  const tensors: Record<string, { data: Float32Array; shape: number[]; dtype: 'F32' | 'F16' | 'BF16' }> = {};
  for (const [modulePath, m] of modules) {
    if (m.aShape[0] !== m.bShape[1])
      fail(
        ErrorCodes.SHAPE,
        `${modulePath}: lora_A shape [${m.aShape}] has rank ${m.aShape[0]} ` +
          `but lora_B shape [${m.bShape}] has rank ${m.bShape[1]}`,
      );
    tensors[peftKey(modulePath, 'A')] = { data: m.A, shape: m.aShape, dtype };
    tensors[peftKey(modulePath, 'B')] = { data: m.B, shape: m.bShape, dtype };
  }
  return encodeSafetensors(tensors, { format: 'pt' });
}

/** Reads adapter_model.safetensors back into modules by path; every tensor must be a LoRA A or B. */
export function decodePeftAdapter(bytes: Uint8Array): Map<string, PeftModule> {
  const halves = new Map<
    string,
    { A?: Float32Array; B?: Float32Array; aShape?: [number, number]; bShape?: [number, number] }
  >();
  for (const [key, tensor] of decodeSafetensors(bytes).tensors) {
    const parsed = parsePeftKey(key);
    if (!parsed)
      fail(
        ErrorCodes.SAFETENSORS,
        `tensor ${key} is not a LoRA weight; expected ${KEY_PREFIX}<module>.lora_A.weight or .lora_B.weight`,
      );
    if (!(tensor.data instanceof Float32Array))
      fail(ErrorCodes.SAFETENSORS, `tensor ${key} has dtype ${tensor.dtype}; expected F32, F16 or BF16`);
    if (tensor.shape.length !== 2)
      fail(ErrorCodes.SHAPE, `tensor ${key} has shape [${tensor.shape}]; expected 2 dimensions`);
    const shape = tensor.shape as [number, number];
    const half = halves.get(parsed.modulePath) ?? {};
    if (parsed.which === 'A') Object.assign(half, { A: tensor.data, aShape: shape });
    else Object.assign(half, { B: tensor.data, bShape: shape });
    halves.set(parsed.modulePath, half);
  }
  const modules = new Map<string, PeftModule>();
  for (const [modulePath, { A, B, aShape, bShape }] of halves) {
    if (!A || !B || !aShape || !bShape)
      fail(ErrorCodes.SHAPE, `${modulePath} has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}`);
    if (aShape[0] !== bShape[1])
      fail(
        ErrorCodes.SHAPE,
        `${modulePath}: lora_A shape [${aShape}] has rank ${aShape[0]} ` +
          `but lora_B shape [${bShape}] has rank ${bShape[1]}`,
      );
    modules.set(modulePath, { A, B, aShape, bShape });
  }
  return modules;
}
