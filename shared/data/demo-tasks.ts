/**
 * The demo's task family: string transformations written as `<bos>TAG:input=output<eos>`.
 * Pretraining teaches copy (C), reverse (R) and uppercase (U); the fine-tuning task V — reverse
 * AND uppercase — never appears in pretraining, so the base model cannot do it until the LoRA
 * learns it. Exact match on held-out strings measures it.
 */
import { mixSeed, Rng } from '../rng.ts';
import type { Example } from '../train/micro-batch.ts';
import { withBos, type TextTokenizer } from './tokenizer.ts';
import { ErrorCodes, fail } from '../errors.ts';

export const DEMO_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:=';

const reverse = (s: string) => [...s].reverse().join('');
export const TASKS: Record<string, (s: string) => string> = {
  C: (s) => s,
  R: reverse,
  U: (s) => s.toUpperCase(),
  V: (s) => reverse(s).toUpperCase(),
};
export const PRETRAIN_TAGS = ['C', 'R', 'U'];
export const FINETUNE_TAG = 'V';
const MIN_LEN = 3;
const MAX_LEN = 8;

export interface TaskSample {
  tag: string;
  input: string;
  output: string;
}

export function randomWord(rng: Rng): string {
  const n = MIN_LEN + rng.int(MAX_LEN - MIN_LEN + 1);
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + rng.int(26));
  return s;
}

export const promptText = (tag: string, input: string) => `${tag}:${input}=`;

/** Tokens with loss on the answer and <eos> only. */
export function toExample(tok: TextTokenizer, s: TaskSample): Example {
  const prompt = withBos(tok, tok.encode(promptText(s.tag, s.input)));
  const answer = [
    ...tok.encode(s.output),
    tok.eosId ?? fail(ErrorCodes.DATA, 'the demo task needs a tokenizer with an EOS token'),
  ];
  return { tokens: [...prompt, ...answer], lossWeights: [...prompt.map(() => 0), ...answer.map(() => 1)] };
}

/**
 * Train and eval sets for one tag, disjoint in their input strings; seeded so every run and
 * every process builds the same sets.
 */
export function taskSplits(
  tag: string,
  trainSize: number,
  evalSize: number,
  seed: number,
): { train: TaskSample[]; eval: TaskSample[] } {
  const rng = new Rng(mixSeed(seed, tag.charCodeAt(0)));
  const seen = new Set<string>();
  const draw = (n: number) => {
    const out: TaskSample[] = [];
    while (out.length < n) {
      const input = randomWord(rng);
      if (seen.has(input)) continue;
      seen.add(input);
      out.push({ tag, input, output: TASKS[tag](input) });
    }
    return out;
  };
  const evalSet = draw(evalSize);
  return { train: draw(trainSize), eval: evalSet };
}
