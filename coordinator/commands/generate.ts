/** `loramesh generate`: base model + optional adapter (merged into W for inference), KV-cached sampling. */
import { generate } from '../../shared/generate.ts';
import { withBos } from '../../shared/data/tokenizer.ts';
import { mergeAdapter } from '../../shared/lora/adapter.ts';
import { FrozenBase } from '../../shared/lora/params.ts';
import { createModel } from '../../shared/model/causal-lm.ts';
import { contextLength } from '../../shared/config.ts';
import { ErrorCodes, fail } from '../../shared/errors.ts';
import { initBackend, type BackendName } from '../../node/backend.ts';
import { readAdapterDir } from '../io/adapter-io.ts';
import { loadWeights, openModelDir } from '../io/model-dir.ts';

export interface GenerateOptions {
  model: string;
  adapter?: string;
  prompt: string[];
  maxNewTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  backend: BackendName;
}

export async function generateCommand(o: GenerateOptions): Promise<void> {
  await initBackend(o.backend, (l) => console.error(l));
  const dir = await openModelDir(o.model);
  let weights = loadWeights(dir).weights;
  if (o.adapter) {
    const adapter = readAdapterDir(o.adapter, dir.config);
    weights = mergeAdapter(dir.config, weights, adapter.spec, adapter.state, adapter.lora);
  }
  const model = createModel(dir.config);
  const base = new FrozenBase(dir.config, weights);
  const tok = dir.tokenizer;
  for (const prompt of o.prompt) {
    const ids = withBos(tok, tok.encode(prompt));
    const room = contextLength(dir.config) - ids.length;
    if (room <= 0)
      fail(
        ErrorCodes.CONFIG,
        `--prompt ${JSON.stringify(prompt.slice(0, 40))} is ${ids.length} tokens; ` +
          `the model's context is ${contextLength(dir.config)}, so nothing is left to generate`,
      );
    if (room < o.maxNewTokens)
      console.error(
        `note: generating ${room} tokens, not ${o.maxNewTokens}: ` +
          `the model's context (${contextLength(dir.config)}) ends there`,
      );
    const maxNewTokens = Math.min(o.maxNewTokens, room);
    const [out] = generate(model, base, [ids], {
      maxNewTokens,
      temperature: o.temperature,
      topP: o.topP,
      eosId: tok.eosId ?? undefined,
      seed: o.seed,
    });
    console.log(`${prompt}${tok.decode(out)}`);
  }
}
