/**
 * Training data for a run: the built-in demo task, or a data file of records. A record is one
 * line of a JSONL file (a JSON object), or one row of a Parquet or CSV file (its fields are the
 * columns; other columns are ignored, as other keys are in JSONL):
 *
 *   text                   loss on every token after BOS, EOS appended
 *   prompt, completion     loss on the completion and the appended EOS only
 *   messages               [{role, content}, ...] rendered with the chat template; loss on the
 *                          assistant turns only (see chatExample). Parquet: a list of structs
 *                          or a JSON string; CSV: a JSON string.
 *
 * A record's kind is the first of messages, prompt/completion, text whose field it has; all
 * records of a file share one kind. The same records give the same examples in every format:
 * each format only reads records, and one function per kind makes the tokens. Errors name
 * `path:line` (JSONL), `path: row N` (Parquet) or `path: row N (line L)` (CSV) and the field.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { FINETUNE_TAG, taskSplits, toExample, type TaskSample } from '../../shared/data/demo-tasks.ts';
import type { ChatMessage, TextTokenizer } from '../../shared/data/tokenizer.ts';
import { describe, ErrorCodes, fail, LoraMeshError } from '../../shared/errors.ts';
import { Rng } from '../../shared/rng.ts';
import type { Example } from '../../shared/train/micro-batch.ts';
import { contextLength, type ModelConfig } from '../../shared/config.ts';
import type { DataTable } from './data-tables.ts';

export interface DemoData {
  train: TaskSample[];
  eval: TaskSample[];
}

/** The demo fine-tuning task (reverse + uppercase): disjoint train and held-out eval strings. */
export function demoTaskData(trainSize: number, evalSize: number, seed: number): DemoData {
  return taskSplits(FINETUNE_TAG, trainSize, evalSize, seed);
}

export const demoExamples = (tok: TextTokenizer, data: DemoData) => data.train.map((s) => toExample(tok, s));

export type DatasetFormat = 'text' | 'prompt-completion' | 'messages';

export interface DatasetOptions {
  /** sequence length in tokens (BOS and EOS included), at least 2 */
  maxTokens: number;
  /** truncate: one example per record, cut to maxTokens; pack: records concatenated and cut into maxTokens pieces */
  mode: 'truncate' | 'pack';
  /** share of records held out for eval, in [0, 1); 0 gives an empty eval set */
  evalFraction: number;
  /** seeds the train/eval split */
  seed: number;
}

export interface Dataset {
  train: Example[];
  eval: Example[];
  format: DatasetFormat;
  /**
   * truncate: records dropped because none of their targets counts toward the loss once cut
   * (e.g. a prompt longer than maxTokens). pack keeps every record's tokens and reports 0.
   */
  skippedLines: number;
}

/** The name this type had when JSONL was the only format. */
export type JsonlDataset = Dataset;

/** The data file formats `--data` takes, by extension. */
export const DATA_FILE_FORMATS = {
  '.jsonl': 'jsonl',
  '.ndjson': 'jsonl',
  '.parquet': 'parquet',
  '.csv': 'csv',
} as const;
export type DataFileFormat = (typeof DATA_FILE_FORMATS)[keyof typeof DATA_FILE_FORMATS];

/** A data file's format from its extension (any case), or an error naming the ones there are. */
export function dataFileFormat(path: string): DataFileFormat {
  const ext = extname(path).toLowerCase();
  const format = DATA_FILE_FORMATS[ext as keyof typeof DATA_FILE_FORMATS];
  if (format) return format;
  const known = Object.keys(DATA_FILE_FORMATS);
  return fail(
    ErrorCodes.DATA,
    `${path}: ${ext ? `"${ext}" files are` : 'a file without an extension is'} not supported; ` +
      `expected ${known.slice(0, -1).join(', ')} or ${known.at(-1)}`,
  );
}

/**
 * Reads, tokenizes, splits and shapes a data file, by its extension: .jsonl, .parquet or .csv
 * (Parquet and CSV are streamed, tokenized as they are read).
 */
export async function loadDataset(path: string, tok: TextTokenizer, opts: DatasetOptions): Promise<Dataset> {
  const format = dataFileFormat(path);
  if (format === 'jsonl') return loadJsonlDataset(path, tok, opts);
  checkOptions(opts);
  // the Parquet and CSV libraries load only when a run reads such a file
  const { openCsv, openParquet } = await import('./data-tables.ts');
  return loadTable(path, format === 'parquet' ? await openParquet(path) : await openCsv(path), tok, opts);
}

/**
 * Reads, tokenizes, splits and shapes a JSONL dataset (any extension). The split depends only on
 * the records, evalFraction and seed.
 */
export function loadJsonlDataset(path: string, tok: TextTokenizer, opts: DatasetOptions): Dataset {
  checkOptions(opts);
  let source: string;
  try {
    source = readFileSync(path, 'utf8');
  } catch (err) {
    fail(ErrorCodes.DATA, `${path}: cannot be read (${(err as Error).message})`);
  }
  const records = new Records(tok, KEYS);
  for (const [i, line] of source.split('\n').entries()) {
    if (line.trim() === '') continue;
    located(`${path}:${i + 1}`, () => records.add(parseRecord(line), `line ${i + 1}`));
  }
  return shapeDataset(
    path,
    records.examples,
    records.format ??
      fail(
        ErrorCodes.DATA,
        `${path}: no records (the file is empty or has only blank lines); expected one JSON object per line`,
      ),
    tok,
    opts,
  );
}

/** A Parquet or CSV file's records: the columns of the kind the header names, one row at a time. */
async function loadTable(path: string, table: DataTable, tok: TextTokenizer, opts: DatasetOptions): Promise<Dataset> {
  const records = new Records(tok, COLUMNS);
  try {
    const fields = tableFields(path, table.columns);
    for await (const { cells, row, where } of table.rows(fields)) {
      located(where, () => records.add(tableRecord(cells), `row ${row}`));
    }
  } finally {
    table.close();
  }
  const format =
    records.format ??
    fail(ErrorCodes.DATA, `${path}: no rows (columns ${JSON.stringify(table.columns)}); expected one record per row`);
  return shapeDataset(path, records.examples, format, tok, opts);
}

/**
 * Splits records into train and eval and shapes them. The split depends only on the records,
 * evalFraction and seed: the first ceil(evalFraction·n) of a seeded shuffle of record indices go to eval.
 */
function shapeDataset(
  path: string,
  examples: Example[],
  format: DatasetFormat,
  tok: TextTokenizer,
  opts: DatasetOptions,
): Dataset {
  // Both splits keep file order.
  const order = new Rng(opts.seed).shuffle(examples.map((_, k) => k));
  const evalCount = Math.ceil(opts.evalFraction * examples.length);
  const evalSet = new Set(order.slice(0, evalCount));
  const trainRecords = examples.filter((_, k) => !evalSet.has(k));
  const evalRecords = examples.filter((_, k) => evalSet.has(k));
  if (trainRecords.length === 0)
    fail(
      ErrorCodes.DATA,
      `${path}: ${examples.length} records leave none for training after evalFraction ${opts.evalFraction}`,
    );

  const shape = (records: Example[]) =>
    opts.mode === 'pack' ? pack(records, opts.maxTokens, tok.eosId) : records.map((e) => truncate(e, opts.maxTokens));
  const counts = (e: Example) => e.lossWeights.some((w, t) => t > 0 && w > 0);
  const train = shape(trainRecords);
  const evalExamples = shape(evalRecords);
  const skippedLines =
    opts.mode === 'truncate'
      ? train.length + evalExamples.length - train.filter(counts).length - evalExamples.filter(counts).length
      : 0;
  return { train: train.filter(counts), eval: evalExamples.filter(counts), format, skippedLines };
}

function checkOptions(opts: DatasetOptions): void {
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 2)
    fail(ErrorCodes.CONFIG, `dataset maxTokens is ${describe(opts.maxTokens)}; expected an integer ≥ 2`);
  if (opts.mode !== 'truncate' && opts.mode !== 'pack')
    fail(ErrorCodes.CONFIG, `dataset mode is ${describe(opts.mode)}; expected "truncate" or "pack"`);
  if (!(opts.evalFraction >= 0 && opts.evalFraction < 1))
    fail(ErrorCodes.CONFIG, `dataset evalFraction is ${describe(opts.evalFraction)}; expected a number in [0, 1)`);
  if (!Number.isInteger(opts.seed))
    fail(ErrorCodes.CONFIG, `dataset seed is ${describe(opts.seed)}; expected an integer`);
}

type JsonRecord = Record<string, unknown>;

/** How errors name a record's fields: JSONL keys or Parquet/CSV columns. */
interface FieldNames {
  field(name: string): string;
  turn(k: number): string;
}
const KEYS: FieldNames = { field: (f) => `"${f}"`, turn: (k) => `messages[${k}]` };
const COLUMNS: FieldNames = { field: (f) => `column "${f}"`, turn: (k) => `column "messages": messages[${k}]` };

/** The fields of each record kind, in the order a record's kind is decided: the first whose field it has. */
const KINDS: readonly [DatasetFormat, readonly string[]][] = [
  ['messages', ['messages']],
  ['prompt-completion', ['prompt', 'completion']],
  ['text', ['text']],
];
const kindOf = (has: (field: string) => boolean) => KINDS.find(([, fields]) => fields.some(has));

/** Re-raises a LoraMeshError from `fn` with `where` in front of its message. */
function located<T>(where: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof LoraMeshError) fail(err.code, `${where}: ${err.message.slice(err.code.length + 2)}`);
    throw err;
  }
}

/** A file's records as examples, all of one kind; `at` names the record that set the kind ("line 3", "row 3"). */
class Records {
  format: DatasetFormat | null = null;
  private formatAt = '';
  readonly examples: Example[] = [];
  constructor(
    private readonly tok: TextTokenizer,
    private readonly names: FieldNames,
  ) {}

  add(record: JsonRecord, at: string): void {
    const recordFormat = formatOf(record, this.names);
    if (this.format === null) [this.format, this.formatAt] = [recordFormat, at];
    else if (recordFormat !== this.format)
      fail(
        ErrorCodes.DATA,
        `a ${recordFormat} record, but ${this.formatAt} made this a ${this.format} file; expected one format per file`,
      );
    this.examples.push(toTokens(record, recordFormat, this.tok));
  }
}

function parseRecord(line: string): JsonRecord {
  let record: unknown;
  try {
    record = JSON.parse(line);
  } catch (err) {
    fail(ErrorCodes.DATA, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record))
    fail(ErrorCodes.DATA, `the line is ${describe(record)}; expected a JSON object`);
  return record as JsonRecord;
}

/** The columns a table's records are read from: those of the kind its columns name, each required. */
function tableFields(path: string, columns: string[]): readonly string[] {
  const kind = kindOf((f) => columns.includes(f));
  if (!kind)
    fail(
      ErrorCodes.DATA,
      `${path}: columns ${JSON.stringify(columns)}; ` +
        'expected a "text" column, "prompt" and "completion" columns, or a "messages" column',
    );
  const missing = kind[1].find((f) => !columns.includes(f));
  if (missing !== undefined)
    fail(
      ErrorCodes.DATA,
      `${path}: no "${missing}" column (columns ${JSON.stringify(columns)}); ` +
        `${kind[0]} records need ${kind[1].map((f) => `"${f}"`).join(' and ')}`,
    );
  return kind[1];
}

/** A row as a record; a messages cell that is a string is the conversation as JSON. */
function tableRecord(cells: JsonRecord): JsonRecord {
  if (typeof cells.messages !== 'string') return cells;
  try {
    return { ...cells, messages: JSON.parse(cells.messages) };
  } catch (err) {
    return fail(ErrorCodes.DATA, `column "messages" is not valid JSON (${(err as Error).message})`);
  }
}

/** The record's kind, once its fields are checked. */
function formatOf(record: JsonRecord, names: FieldNames): DatasetFormat {
  const stringField = (field: string) => {
    if (typeof record[field] !== 'string')
      fail(ErrorCodes.DATA, `${names.field(field)} is ${describe(record[field])}; expected a string`);
  };
  const kind = kindOf((f) => f in record)?.[0];
  if (kind === 'messages') {
    const messages = record.messages;
    if (!Array.isArray(messages) || messages.length === 0)
      fail(
        ErrorCodes.DATA,
        `${names.field('messages')} is ${describe(messages)}; expected a non-empty array of {"role", "content"}`,
      );
    messages.forEach((m: unknown, k) => {
      const ok =
        typeof m === 'object' &&
        m !== null &&
        typeof (m as JsonRecord).role === 'string' &&
        typeof (m as JsonRecord).content === 'string';
      if (!ok)
        fail(ErrorCodes.DATA, `${names.turn(k)} is ${describe(m)}; expected {"role": string, "content": string}`);
    });
    if (!messages.some((m: ChatMessage) => m.role === 'assistant'))
      fail(
        ErrorCodes.DATA,
        `${names.field('messages')} has no "assistant" turn, so nothing would count toward the loss`,
      );
  } else if (kind === 'prompt-completion') {
    stringField('prompt');
    stringField('completion');
  } else if (kind === 'text') {
    stringField('text');
  } else {
    fail(
      ErrorCodes.DATA,
      `fields ${JSON.stringify(Object.keys(record))}; expected {"text"}, {"prompt", "completion"} or {"messages"}`,
    );
  }
  return kind;
}

function eosOf(tok: TextTokenizer): number {
  return (
    tok.eosId ??
    fail(ErrorCodes.MODEL, 'the tokenizer has no EOS token, which text and prompt/completion records end with')
  );
}

/** One record as tokens and loss weights, BOS first when the tokenizer wants it. */
function toTokens(record: JsonRecord, format: DatasetFormat, tok: TextTokenizer): Example {
  const { tokens, lossWeights } =
    format === 'text'
      ? textExample(record.text as string, tok)
      : format === 'prompt-completion'
        ? promptCompletionExample(record.prompt as string, record.completion as string, tok)
        : chatExample(record.messages as ChatMessage[], tok);
  // Chat templates often write the BOS text themselves; it is not doubled.
  if (tok.addBos && tok.bosId !== null && tokens[0] !== tok.bosId) {
    tokens.unshift(tok.bosId);
    lossWeights.unshift(0);
  }
  return { tokens, lossWeights };
}

/** A text record: the text and EOS, every token counts. */
function textExample(text: string, tok: TextTokenizer): Example {
  const tokens = [...tok.encode(text), eosOf(tok)];
  return { tokens, lossWeights: tokens.map(() => 1) };
}

/** A prompt/completion record: loss on the completion's tokens and the appended EOS. */
function promptCompletionExample(prompt: string, completion: string, tok: TextTokenizer): Example {
  // Encoded as one string so BPE merges across the seam are the ones inference will see.
  const tokens = [...tok.encode(prompt + completion), eosOf(tok)];
  const start = tokenBoundary(tokens, tok.encode(prompt));
  return { tokens, lossWeights: tokens.map((_, t) => (t >= start ? 1 : 0)) };
}

/**
 * Assistant spans. The template renders the whole conversation once; for the assistant turn
 * at index i it also renders messages[0..i) with the generation prompt (the text just before
 * the assistant starts) and messages[0..i] without it (the text just after the turn, end-of-turn
 * marker included). Both must be character prefixes of the whole rendering, else the template
 * rewrites earlier turns and the record is refused. Each prefix is then encoded on its own, and
 * its token boundary in the whole encoding is the length of the common prefix of the two token
 * lists. Where a BPE merge straddles a boundary the common prefix stops before that token, so a
 * straddling token counts at a turn's start and does not at its end. The loss covers tokens
 * [start, end): the assistant's content and whatever end-of-turn text the template adds.
 * No EOS is appended: the template ends the turn.
 */
function chatExample(messages: ChatMessage[], tok: TextTokenizer): Example {
  const text = tok.renderChat(messages, false);
  const tokens = tok.encode(text);
  const lossWeights = tokens.map(() => 0);
  const boundary = (prefix: ChatMessage[], addGenerationPrompt: boolean, turn: number) => {
    const prefixText = tok.renderChat(prefix, addGenerationPrompt);
    if (!text.startsWith(prefixText)) {
      fail(
        ErrorCodes.DATA,
        `the chat template renders messages[0..${prefix.length}) ` +
          'differently from the start of the whole conversation, ' +
          `so the assistant turn messages[${turn}] cannot be located`,
      );
    }
    return tokenBoundary(tokens, tok.encode(prefixText));
  };
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const start = boundary(messages.slice(0, i), true, i);
    const end = boundary(messages.slice(0, i + 1), false, i);
    for (let t = start; t < end; t++) lossWeights[t] = 1;
  });
  return { tokens, lossWeights };
}

/** Length of the common prefix of a whole encoding and the encoding of a text prefix. */
function tokenBoundary(whole: number[], prefix: number[]): number {
  let n = 0;
  while (n < prefix.length && n < whole.length && prefix[n] === whole[n]) n++;
  return n;
}

function truncate(e: Example, maxTokens: number): Example {
  return { tokens: e.tokens.slice(0, maxTokens), lossWeights: e.lossWeights.slice(0, maxTokens) };
}

/**
 * Concatenates examples, each ending in EOS (appended with weight 0 if its format does not end
 * in one), and cuts the stream into sequences of exactly maxTokens (the last may be shorter).
 * Each token keeps its weight. Packed examples attend across their boundaries: there is no
 * block-diagonal mask, so a sequence sees the tail of the example before it as context.
 * The caller drops a sequence none of whose targets counts (e.g. a lone trailing token).
 */
function pack(examples: Example[], maxTokens: number, eosId: number | null): Example[] {
  const tokens: number[] = [];
  const lossWeights: number[] = [];
  for (const e of examples) {
    tokens.push(...e.tokens);
    lossWeights.push(...e.lossWeights);
    if (e.tokens[e.tokens.length - 1] !== eosId) {
      tokens.push(
        eosId ?? fail(ErrorCodes.MODEL, 'packing needs an EOS token between examples, and the tokenizer has none'),
      );
      lossWeights.push(0);
    }
  }
  const sequences: Example[] = [];
  for (let s = 0; s < tokens.length; s += maxTokens) {
    sequences.push({ tokens: tokens.slice(s, s + maxTokens), lossWeights: lossWeights.slice(s, s + maxTokens) });
  }
  return sequences;
}

/**
 * How a run's examples are made: stored in run_config.json so `--resume` rebuilds them. Kind
 * "jsonl" is any data file (.jsonl, .parquet or .csv, by extension): the name dates from when JSONL
 * was the only format and stays, so run folders written before still resume.
 */
export type DataSpec =
  | { kind: 'jsonl'; path: string; maxTokens?: number; pack: boolean; evalFraction: number; seed: number }
  | { kind: 'demo'; trainSize: number; seed: number };

/** The demo task's held-out set size (eval loss and exact match). */
export const DEMO_EVAL_SIZE = 200;

/**
 * A run's train and eval examples from its data spec: the data file (sequences of at most
 * maxTokens, default the model's context up to 1024) or the demo task. Says what it read in one line.
 */
export async function examplesFor(
  spec: DataSpec,
  model: { config: ModelConfig; tokenizer: TextTokenizer },
  log: (line: string) => void,
): Promise<{ train: Example[]; eval: Example[] }> {
  if (spec.kind === 'demo') {
    const demo = demoTaskData(spec.trainSize, DEMO_EVAL_SIZE, spec.seed);
    return { train: demoExamples(model.tokenizer, demo), eval: demo.eval.map((s) => toExample(model.tokenizer, s)) };
  }
  const maxTokens = spec.maxTokens ?? Math.min(1024, contextLength(model.config));
  const data = await loadDataset(spec.path, model.tokenizer, {
    maxTokens,
    mode: spec.pack ? 'pack' : 'truncate',
    evalFraction: spec.evalFraction,
    seed: spec.seed,
  });
  const skipped = data.skippedLines ? `, ${data.skippedLines} skipped (nothing left to learn after truncation)` : '';
  log(
    `${spec.path}: ${data.format} records → ${data.train.length} train / ${data.eval.length} eval ` +
      `sequences of ≤ ${maxTokens} tokens${skipped}`,
  );
  return { train: data.train, eval: data.eval };
}
