// PEFT layout: key naming, adapter_config.json fields both ways, adapter round trip, and the
// errors for incomplete or inconsistent adapters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkLoraConfig } from '../../../shared/config.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import {
  decodePeftAdapter,
  encodePeftAdapter,
  loraConfigFromPeft,
  parsePeftKey,
  peftAdapterConfig,
  peftKey,
  type PeftModule,
} from '../../../shared/formats/peft.ts';
import { decodeSafetensors, encodeSafetensors } from '../../../shared/formats/safetensors.ts';
import { Rng } from '../../../shared/rng.ts';
import { throwsCode } from '../../helpers/assert.ts';

/** A (r, dIn) and B (dOut, r) with random values. */
function loraModule(rng: Rng, r: number, dIn: number, dOut: number): PeftModule {
  const values = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  return { A: values(r * dIn), B: values(dOut * r), aShape: [r, dIn], bShape: [dOut, r] };
}

function tinyAdapter(): Map<string, PeftModule> {
  const rng = new Rng(3);
  return new Map([
    ['model.layers.0.self_attn.q_proj', loraModule(rng, 4, 16, 16)],
    ['model.layers.0.self_attn.v_proj', loraModule(rng, 4, 16, 8)],
    ['model.layers.1.mlp.down_proj', loraModule(rng, 4, 32, 16)],
  ]);
}

test('keys follow PEFT naming and parse back; other keys parse to null', () => {
  assert.equal(
    peftKey('model.layers.0.self_attn.q_proj', 'A'),
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
  );
  assert.equal(
    peftKey('model.layers.0.self_attn.q_proj', 'B'),
    'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
  );
  for (const which of ['A', 'B'] as const) {
    assert.deepEqual(parsePeftKey(peftKey('model.layers.11.mlp.up_proj', which)), {
      modulePath: 'model.layers.11.mlp.up_proj',
      which,
    });
  }
  for (const key of [
    'model.layers.0.self_attn.q_proj.lora_A.weight', // no base_model.model. prefix
    'base_model.model.model.layers.0.self_attn.q_proj.weight', // a base weight
    'base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight',
    'base_model.model.model.embed_tokens.lora_embedding_A', // embedding LoRA: not supported
    'base_model.model.lora_A.weight', // empty module path
    'base_model.model.lm_head.modules_to_save.weight',
  ]) {
    assert.equal(parsePeftKey(key), null, key);
  }
});

test('adapter_config.json has the fields PEFT reads, with PEFT spellings and values', () => {
  const lora = checkLoraConfig({
    r: 16,
    alpha: 32,
    dropout: 0.05,
    targetModules: ['q_proj', 'k_proj', 'down_proj'],
    init: 'kaiming',
    useRslora: false,
  });
  assert.deepEqual(peftAdapterConfig(lora, 'models/demo-base'), {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    base_model_name_or_path: 'models/demo-base',
    revision: null,
    r: 16,
    lora_alpha: 32,
    lora_dropout: 0.05,
    target_modules: ['q_proj', 'k_proj', 'down_proj'],
    bias: 'none',
    fan_in_fan_out: false,
    use_rslora: false,
    init_lora_weights: true,
    modules_to_save: null,
    inference_mode: true,
  });
  const gaussian = peftAdapterConfig(checkLoraConfig({ init: 'gaussian', useRslora: true }), 'x');
  assert.equal(gaussian.init_lora_weights, 'gaussian');
  assert.equal(gaussian.use_rslora, true);
  // It is plain JSON: it survives a stringify/parse unchanged.
  assert.deepEqual(JSON.parse(JSON.stringify(gaussian)), gaussian);
});

test('loraConfigFromPeft reads our config back, and a config as PEFT writes it', () => {
  for (const lora of [
    checkLoraConfig({
      r: 16,
      alpha: 32,
      dropout: 0.05,
      targetModules: ['q_proj', 'v_proj'],
      init: 'kaiming',
      useRslora: false,
    }),
    checkLoraConfig({ r: 2, alpha: 1, dropout: 0, targetModules: ['gate_proj'], init: 'gaussian', useRslora: true }),
  ]) {
    assert.deepEqual(loraConfigFromPeft(JSON.parse(JSON.stringify(peftAdapterConfig(lora, 'base')))), lora);
  }
  // Shaped like PEFT 0.13's save_pretrained output: extra fields, empty patterns, nulls.
  const written = {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: 'TinyLlama/TinyLlama-1.1B-Chat-v1.0',
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 16,
    lora_dropout: 0.1,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: 8,
    rank_pattern: {},
    revision: null,
    target_modules: ['v_proj', 'q_proj'],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  };
  assert.deepEqual(loraConfigFromPeft(written), {
    r: 8,
    alpha: 16,
    dropout: 0.1,
    targetModules: ['v_proj', 'q_proj'],
    init: 'kaiming',
    useRslora: false,
  });
  // Missing optional fields take PEFT's defaults (lora_alpha 8, not loramesh's 16).
  assert.deepEqual(loraConfigFromPeft({ peft_type: 'LORA', target_modules: ['q_proj'] }), {
    r: 8,
    alpha: 8,
    dropout: 0,
    targetModules: ['q_proj'],
    init: 'kaiming',
    useRslora: false,
  });
});

test('loraConfigFromPeft refuses what loramesh cannot reproduce, naming the field', () => {
  const base = { peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['q_proj'] };
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ peft_type: 'IA3' }, /adapter_config.peft_type is "IA3"/],
    [{ bias: 'all' }, /adapter_config.bias is "all"; loramesh supports only "none"/],
    [{ fan_in_fan_out: 'yes' }, /fan_in_fan_out is "yes"/],
    [{ use_dora: true }, /use_dora is true/],
    [{ init_lora_weights: 'pissa' }, /init_lora_weights is "pissa"; loramesh supports only true or "gaussian"/],
    [{ init_lora_weights: false }, /init_lora_weights is false/],
    [{ rank_pattern: { q_proj: 4 } }, /rank_pattern/],
    [{ modules_to_save: ['lm_head'] }, /modules_to_save is \["lm_head"\]/],
    [{ layers_to_transform: [0] }, /layers_to_transform/],
    [{ target_modules: '.*proj' }, /target_modules should be a list of module names, got ".\*proj"/],
    [{ target_modules: ['q_proj', 'lm_head'] }, /lora.targetModules has "lm_head"/],
    [{ r: 0 }, /lora.r should be an integer ≥ 1, got 0/],
    [{ lora_dropout: 1 }, /lora.dropout/],
  ];
  for (const [over, message] of cases)
    throwsCode(() => loraConfigFromPeft({ ...base, ...over }), ErrorCodes.CONFIG, message);
  throwsCode(() => loraConfigFromPeft([]), ErrorCodes.CONFIG, /should be an object/);
});

test('adapter round trip: F32 exact, F16 and BF16 within their bounds, stored under PEFT keys', () => {
  const adapter = tinyAdapter();
  const bytes = encodePeftAdapter(adapter);
  const { metadata, tensors } = decodeSafetensors(bytes);
  assert.deepEqual(metadata, { format: 'pt' });
  assert.deepEqual(
    [...tensors.keys()].sort(),
    [...adapter.keys()].flatMap((p) => [peftKey(p, 'A'), peftKey(p, 'B')]).sort(),
  );
  assert.deepEqual(tensors.get(peftKey('model.layers.0.self_attn.v_proj', 'B'))!.shape, [8, 4]);
  assert.deepEqual(decodePeftAdapter(bytes), adapter);

  for (const [dtype, bound] of [
    ['F16', 2 ** -11],
    ['BF16', 2 ** -8],
  ] as const) {
    const back = decodePeftAdapter(encodePeftAdapter(adapter, dtype));
    assert.deepEqual([...back.keys()].sort(), [...adapter.keys()].sort());
    for (const [path, m] of adapter) {
      const got = back.get(path)!;
      assert.deepEqual([got.aShape, got.bShape], [m.aShape, m.bShape]);
      for (const [want, have] of [
        [m.A, got.A],
        [m.B, got.B],
      ]) {
        for (let i = 0; i < want.length; i++) {
          assert.ok(
            Math.abs(have[i] - want[i]) <= bound * Math.abs(want[i]),
            `${dtype} ${path}[${i}]: ${want[i]} → ${have[i]}`,
          );
        }
      }
    }
  }
});

test('an adapter with A but no B, a rank mismatch, or a non-LoRA tensor is refused', () => {
  const m = tinyAdapter().get('model.layers.0.self_attn.q_proj')!; // A (4, 16), B (16, 4)
  const path = 'model.layers.0.self_attn.q_proj';
  throwsCode(
    () => decodePeftAdapter(encodeSafetensors({ [peftKey(path, 'A')]: { data: m.A, shape: m.aShape } })),
    ErrorCodes.SHAPE,
    /q_proj has lora_A but no lora_B/,
  );
  throwsCode(
    () => decodePeftAdapter(encodeSafetensors({ [peftKey(path, 'B')]: { data: m.B, shape: m.bShape } })),
    ErrorCodes.SHAPE,
    /q_proj has lora_B but no lora_A/,
  );

  const rank8B = new Float32Array(16 * 8);
  const mismatched = encodeSafetensors({
    [peftKey(path, 'A')]: { data: m.A, shape: [4, 16] },
    [peftKey(path, 'B')]: { data: rank8B, shape: [16, 8] },
  });
  throwsCode(
    () => decodePeftAdapter(mismatched),
    ErrorCodes.SHAPE,
    /lora_A shape \[4,16\] has rank 4 but lora_B shape \[16,8\] has rank 8/,
  );
  throwsCode(
    () => encodePeftAdapter(new Map([[path, { ...m, B: rank8B, bShape: [16, 8] }]])),
    ErrorCodes.SHAPE,
    /rank 4 but lora_B shape \[16,8\] has rank 8/,
  );

  const withHead = encodeSafetensors({
    [peftKey(path, 'A')]: { data: m.A, shape: m.aShape },
    [peftKey(path, 'B')]: { data: m.B, shape: m.bShape },
    'base_model.model.lm_head.weight': { data: new Float32Array(4), shape: [2, 2] },
  });
  throwsCode(
    () => decodePeftAdapter(withHead),
    ErrorCodes.SAFETENSORS,
    /tensor base_model.model.lm_head.weight is not a LoRA weight/,
  );
  throwsCode(
    () => decodePeftAdapter(encodeSafetensors({ [peftKey(path, 'A')]: { data: m.A, shape: [64] } })),
    ErrorCodes.SHAPE,
    /shape \[64\]; expected 2 dimensions/,
  );
  throwsCode(
    () => decodePeftAdapter(encodeSafetensors({ [peftKey(path, 'A')]: { data: new Int32Array(64), shape: [4, 16] } })),
    ErrorCodes.SAFETENSORS,
    /dtype I32/,
  );
});
