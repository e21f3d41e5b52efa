/** Training data for a run: the built-in demo task, or a JSONL file of prompt/completion or text records. */
import { readFileSync } from 'node:fs';
import type { CharTokenizer } from '../shared/data/char-tokenizer.ts';
import { FINETUNE_TAG, taskSplits, toExample, type TaskSample } from '../shared/data/demo-tasks.ts';
import { ErrorCodes, fail, LoraMeshError } from '../shared/errors.ts';
import type { Example } from '../shared/train/micro-batch.ts';

export interface DemoData {
  train: TaskSample[];
  eval: TaskSample[];
}

/** The demo fine-tuning task (reverse + uppercase): disjoint train and held-out eval strings. */
export function demoTaskData(trainSize: number, evalSize: number, seed: number): DemoData {
  return taskSplits(FINETUNE_TAG, trainSize, evalSize, seed);
}

export const demoExamples = (tok: CharTokenizer, data: DemoData) => data.train.map((s) => toExample(tok, s));

/**
 * JSONL, one record per line: {"prompt": "...", "completion": "..."} (loss on the completion and
 * <eos> only) or {"text": "..."} (loss on every token). Errors name the line.
 */
export function jsonlExamples(path: string, tok: CharTokenizer, maxTokens: number): Example[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  const examples: Example[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${path}:${i + 1}`;
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(line);
    } catch (err) {
      fail(ErrorCodes.DATA, `${where}: not valid JSON (${(err as Error).message})`);
    }
    try {
      if (typeof record.prompt === 'string' && typeof record.completion === 'string') {
        const prompt = [tok.bosId, ...tok.encode(record.prompt)];
        const answer = [...tok.encode(record.completion), tok.eosId];
        examples.push({ tokens: [...prompt, ...answer], lossWeights: [...prompt.map(() => 0), ...answer.map(() => 1)] });
      } else if (typeof record.text === 'string') {
        const tokens = [tok.bosId, ...tok.encode(record.text), tok.eosId];
        examples.push({ tokens, lossWeights: tokens.map((_, k) => (k === 0 ? 0 : 1)) });
      } else {
        fail(ErrorCodes.DATA, `${where}: expected {"prompt","completion"} or {"text"} string fields`);
      }
    } catch (err) {
      if (err instanceof LoraMeshError && !err.message.includes(where)) fail(err.code, `${where}: ${err.message}`);
      throw err;
    }
    const n = examples[examples.length - 1].tokens.length;
    if (n > maxTokens) fail(ErrorCodes.DATA, `${where}: ${n} tokens exceed the model's max_position_embeddings ${maxTokens}`);
  });
  if (examples.length === 0) fail(ErrorCodes.DATA, `${path}: no records`);
  return examples;
}
