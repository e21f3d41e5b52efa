/**
 * Writes the LoRA weights of a golden fixture (test/fixtures/hf/<name>/golden.safetensors, made by
 * scripts/reference/gen_hf_golden.py) as a PEFT adapter folder, with loramesh's own PEFT writer
 * (shared/formats/peft.ts): the adapter the interoperability self-test and the logits tests load, and
 * the committed test/fixtures/interop/<name>/adapter/ the GPU machine's check loads (scripts/gpu-machine.sh;
 * test/scripts/interop-fixtures.test.ts keeps them equal to this script's output).
 *
 *   npx tsx scripts/interop/golden-adapter.ts test/fixtures/hf/qwen2 /tmp/qwen2-adapter [--perturb 1e-2]
 *   for m in llama-tied-gqa qwen2 gpt2 mistral; do
 *     npx tsx scripts/interop/golden-adapter.ts test/fixtures/hf/$m test/fixtures/interop/$m/adapter; done
 *
 * --perturb x adds x to every lora_B value: an adapter that must FAIL the check (the self-test's negative run).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { checkLoraConfig, checkModelConfig, type LinearModule } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { encodePeftAdapter, type PeftModule, peftAdapterConfig } from '../../shared/formats/peft.ts';
import { decodeSafetensors } from '../../shared/formats/safetensors.ts';
import { adapterSpec, fanInFanOut } from '../../shared/lora/adapter.ts';

/** The fixture's golden LoRA as adapter_config.json + adapter_model.safetensors in outDir; returns outDir. */
export function writeGoldenAdapter(fixtureDir: string, outDir: string, perturbB = 0): string {
  const meta = JSON.parse(readFileSync(join(fixtureDir, 'golden.json'), 'utf8'));
  const golden = decodeSafetensors(new Uint8Array(readFileSync(join(fixtureDir, 'golden.safetensors')))).tensors;
  const config = checkModelConfig(meta.model_config);
  const lora = checkLoraConfig({
    r: meta.lora.r,
    alpha: meta.lora.alpha,
    targetModules: meta.lora.target_modules as LinearModule[],
  });
  const modules = new Map<string, PeftModule>();
  for (const t of adapterSpec(config, lora)) {
    const key = `lora.${t.modulePath}.${t.which}`;
    const values = Float32Array.from(
      (golden.get(key)?.data as Float32Array) ?? fail(ErrorCodes.MODEL, `${fixtureDir}: golden lacks ${key}`),
    );
    if (t.which === 'B') for (let i = 0; i < values.length; i++) values[i] += perturbB;
    const m = modules.get(t.modulePath) ?? ({} as PeftModule);
    if (t.which === 'A') Object.assign(m, { A: values, aShape: t.shape });
    else Object.assign(m, { B: values, bShape: t.shape });
    modules.set(t.modulePath, m);
  }
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'adapter_model.safetensors'), encodePeftAdapter(modules));
  // the base named relative to the repository, so the committed adapters (test/fixtures/interop/) hold no machine's path
  const base = relative(join(import.meta.dirname, '..', '..'), resolve(fixtureDir, 'f32'));
  const peftConfig = peftAdapterConfig(lora, base, fanInFanOut(config, lora));
  writeFileSync(join(outDir, 'adapter_config.json'), JSON.stringify(peftConfig, null, 2) + '\n');
  return outDir;
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename ?? '')) {
  const [fixtureDir, outDir, flag, value] = process.argv.slice(2);
  if (!fixtureDir || !outDir || (flag !== undefined && flag !== '--perturb'))
    fail(ErrorCodes.CONFIG, 'usage: golden-adapter.ts <fixture dir> <adapter out dir> [--perturb x]');
  const perturb = flag ? Number(value) : 0;
  if (!Number.isFinite(perturb)) fail(ErrorCodes.CONFIG, `--perturb ${value}: expected a number`);
  console.log(`wrote ${writeGoldenAdapter(fixtureDir, outDir, perturb)}`);
}
