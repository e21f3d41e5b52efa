/** Exact-match accuracy by greedy generation, batched by prompt length. */
import { generate } from '../generate.ts';
import type { CausalLM, ParamSource } from '../model/causal-lm.ts';
import { withBos, type TextTokenizer } from './tokenizer.ts';
import { promptText, type TaskSample } from './demo-tasks.ts';

export interface Prediction {
  sample: TaskSample;
  predicted: string;
  correct: boolean;
}

export function predict(
  model: CausalLM,
  params: ParamSource,
  tok: TextTokenizer,
  samples: TaskSample[],
  batchSize = 64,
): Prediction[] {
  const byLength = new Map<number, TaskSample[]>();
  for (const s of samples) byLength.set(s.input.length, [...(byLength.get(s.input.length) ?? []), s]);
  const predictions = new Map<TaskSample, Prediction>();
  for (const [length, group] of byLength) {
    for (let i = 0; i < group.length; i += batchSize) {
      const chunk = group.slice(i, i + batchSize);
      const prompts = chunk.map((s) => withBos(tok, tok.encode(promptText(s.tag, s.input))));
      const outputs = generate(model, params, prompts, { maxNewTokens: length + 1, eosId: tok.eosId ?? undefined });
      chunk.forEach((s, j) => {
        const predicted = tok.decode(outputs[j]);
        predictions.set(s, {
          sample: s,
          predicted,
          correct: predicted === s.output && tok.eosId !== null && outputs[j].includes(tok.eosId),
        });
      });
    }
  }
  return samples.map((s) => predictions.get(s)!);
}

export const accuracy = (ps: Prediction[]) => ps.filter((p) => p.correct).length / Math.max(1, ps.length);
