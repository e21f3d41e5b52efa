// Parquet and CSV data files: the fixtures (test/fixtures/data/, written by an independent Parquet
// writer, scripts/fixtures/gen-data-fixtures.ts) give the same examples as their JSONL twins, for
// every record kind; bad rows are refused naming the file, the row (and in CSV the line) and the
// column; CSV quoting edge cases; a run trained from Parquet ends with the JSONL run's adapter bits.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../../helpers/backend.ts';
import { openCsv, openParquet } from '../../../coordinator/io/data-tables.ts';
import {
  examplesFor,
  loadDataset,
  loadJsonlDataset,
  type DataSpec,
  type DatasetOptions,
} from '../../../coordinator/io/dataset.ts';
import { openModelDir } from '../../../coordinator/io/model-dir.ts';
import { runTraining } from '../../../coordinator/run/train.ts';
import { checkLoraConfig, checkTrainConfig } from '../../../shared/config.ts';
import { CharTokenizer } from '../../../shared/data/char-tokenizer.ts';
import { loadHfTokenizer } from '../../../shared/data/tokenizer.ts';
import { ErrorCodes, LoraMeshError } from '../../../shared/errors.ts';
import { encodeSafetensors } from '../../../shared/formats/safetensors.ts';
import { randomArrays, tinyConfig } from '../../helpers/tiny-model.ts';

const DATA = fileURLToPath(new URL('../../fixtures/data/', import.meta.url));
const BYTE_BPE = fileURLToPath(new URL('../../fixtures/tokenizers/byte-bpe/', import.meta.url));
const fixture = (name: string) => join(DATA, name);
const tokenizerJson = (file: string) => JSON.parse(readFileSync(join(BYTE_BPE, file), 'utf8'));
// byte-level BPE with a ChatML template: encodes any text, renders messages
const chatml = loadHfTokenizer(tokenizerJson('tokenizer.json'), tokenizerJson('tokenizer_config.json'));
// <pad> 0, <bos> 1, <eos> 2, then a 3, b 4, c 5, ...
const char = CharTokenizer.fromAlphabet('abcdefghij');

const opts = (o: Partial<DatasetOptions> = {}): DatasetOptions => ({
  maxTokens: 256,
  mode: 'truncate',
  evalFraction: 0,
  seed: 1,
  ...o,
});

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'loramesh-data-files-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
function file(ext: string, content: string): string {
  const path = join(dir, `data-${fileCount++}.${ext}`);
  writeFileSync(path, content);
  return path;
}
const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

async function rejectsData(promise: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    assert.equal(err.code, ErrorCodes.DATA, err.message);
    assert.match(err.message, message);
    return true;
  });
}

test('each Parquet and CSV fixture gives the examples of its JSONL twin, in every mode', async () => {
  const twins: [string, string[], string][] = [
    ['text.jsonl', ['text.parquet', 'text.csv'], 'text'],
    ['prompt-completion.jsonl', ['prompt-completion.parquet', 'prompt-completion.csv'], 'prompt-completion'],
    ['messages.jsonl', ['messages.parquet', 'messages-json.parquet', 'messages.csv'], 'messages'],
  ];
  for (const [jsonl, others, format] of twins) {
    for (const o of [opts(), opts({ evalFraction: 0.3, seed: 4 }), opts({ mode: 'pack', maxTokens: 24 })]) {
      const expected = loadJsonlDataset(fixture(jsonl), chatml, o);
      assert.equal(expected.format, format);
      assert.ok(expected.train.length >= 3, `${jsonl}: ${expected.train.length} train examples`);
      assert.deepEqual(await loadDataset(fixture(jsonl), chatml, o), expected);
      for (const other of others) assert.deepEqual(await loadDataset(fixture(other), chatml, o), expected, other);
    }
  }
});

test('Parquet fixtures: snappy, several row groups, the same rows when read a few at a time', async () => {
  for (const name of ['text.parquet', 'prompt-completion.parquet', 'messages.parquet']) {
    const whole = await openParquet(fixture(name));
    const rows = [];
    for await (const r of whole.rows(whole.columns)) rows.push(r);
    // the writer put an offset index in, so a row group is read two rows at a time here
    const paged = await openParquet(fixture(name), 2);
    const pagedRows = [];
    for await (const r of paged.rows(whole.columns)) pagedRows.push(r);
    assert.deepEqual(pagedRows, rows);
    assert.deepEqual(
      rows.map((r) => r.row),
      rows.map((_, k) => k + 1),
    );
    const { parquetMetadataAsync, asyncBufferFromFile } = await import('hyparquet');
    const meta = await parquetMetadataAsync(await asyncBufferFromFile(fixture(name)));
    assert.ok(meta.row_groups.length >= 2, `${name}: ${meta.row_groups.length} row groups`);
    assert.ok(meta.row_groups.every((g) => g.columns.every((c) => c.offset_index_offset !== undefined)));
    const codecs = new Set(meta.row_groups.flatMap((g) => g.columns.map((c) => c.meta_data?.codec)));
    assert.deepEqual([...codecs], ['SNAPPY']);
  }
  // list<struct<content, role>> arrives as objects, other columns are not read
  const messages = await openParquet(fixture('messages.parquet'));
  const first = await messages.rows(['messages']).next();
  assert.deepEqual(first.value?.cells, {
    messages: [
      { content: 'hi', role: 'user' },
      { content: 'hello', role: 'assistant' },
    ],
  });
});

test('bad Parquet rows and files are refused naming the file, the row and the column', async () => {
  const cases: [string, RegExp][] = [
    ['bad-null.parquet', /bad-null\.parquet: row 5: column "completion" is null; expected a string$/],
    ['bad-messages-json.parquet', /bad-messages-json\.parquet: row 2: column "messages" is not valid JSON \(/],
    [
      'bad-no-completion.parquet',
      new RegExp(
        'bad-no-completion\\.parquet: no "completion" column \\(columns \\["id","prompt"\\]\\); ' +
          'prompt-completion records need "prompt" and "completion"',
      ),
    ],
    [
      'bad-no-kind.parquet',
      new RegExp(
        'bad-no-kind\\.parquet: columns \\["body"\\]; ' +
          'expected a "text" column, "prompt" and "completion" columns, or a "messages" column',
      ),
    ],
  ];
  for (const [name, message] of cases) await rejectsData(loadDataset(fixture(name), chatml, opts()), message);
  // a cell the tokenizer cannot encode names the row; a row whose conversation has no assistant turn too
  await rejectsData(
    loadDataset(fixture('text.parquet'), char, opts()),
    /text\.parquet: row 1: character "l" is not in the vocabulary/,
  );
  await rejectsData(
    loadDataset(fixture('messages.parquet'), char, opts()),
    /messages\.parquet: row 1: .*chat template/,
  );
  await rejectsData(loadDataset(file('parquet', 'not parquet'), chatml, opts()), /: not a readable Parquet file \(/);
  await rejectsData(loadDataset(join(dir, 'missing.parquet'), chatml, opts()), /missing\.parquet: cannot be read/);
});

test('the format comes from the extension; others are refused naming the supported ones', async () => {
  const csv = file('CSV', 'text\nabc\n');
  assert.deepEqual((await loadDataset(csv, char, opts())).train, [
    { tokens: [1, 3, 4, 5, 2], lossWeights: [0, 1, 1, 1, 1] },
  ]);
  for (const name of ['data.txt', 'data.json', 'data']) {
    await rejectsData(
      loadDataset(join(dir, name), char, opts()),
      new RegExp(`${escapeRegExp(name)}: .* not supported; expected \\.jsonl, \\.ndjson, \\.parquet or \\.csv$`),
    );
  }
});

test('CSV: RFC 4180 quoting, a BOM, CRLF or LF, blank lines skipped, extra columns ignored', async () => {
  const rows = async (content: string) => {
    const table = await openCsv(file('csv', content));
    const out = [];
    for await (const r of table.rows(table.columns)) out.push(r);
    return { columns: table.columns, rows: out };
  };
  const quoted = await rows(
    '\ufeffprompt,completion,note\r\n' +
      '"a, b","say ""hi""",x\r\n' +
      '\r\n' +
      '"two\r\nlines","and\nlf",\r\n' +
      ',"",""\r\n' +
      '" spaced ",c,"last, no newline"',
  );
  assert.deepEqual(quoted.columns, ['prompt', 'completion', 'note']);
  assert.deepEqual(
    quoted.rows.map(({ cells, row, line }) => [cells, row, line]),
    [
      [{ prompt: 'a, b', completion: 'say "hi"', note: 'x' }, 1, 2],
      [{ prompt: 'two\r\nlines', completion: 'and\nlf', note: '' }, 2, 4],
      // row 2 spans lines 4 to 6: a line break in each of two fields
      [{ prompt: '', completion: '', note: '' }, 3, 7],
      [{ prompt: ' spaced ', completion: 'c', note: 'last, no newline' }, 4, 8],
    ],
  );
  // A lone "" is one empty field, not a blank line; the CSV gives the JSONL twin's examples.
  const text = file('csv', 'id,text\n1,abc\n\n2,""\n3,"j,j"\n');
  const twin = file('jsonl', ['{"id":1,"text":"abc"}', '{"id":2,"text":""}', '{"id":3,"text":"j,j"}'].join('\n'));
  const ab = CharTokenizer.fromAlphabet('abcdefghij,');
  assert.deepEqual(await loadDataset(text, ab, opts()), loadJsonlDataset(twin, ab, opts()));
  const single = await rows('text\n""\nabc\n');
  assert.deepEqual(
    single.rows.map((r) => r.cells.text),
    ['', 'abc'],
  );
});

test('CSV: a file of many chunks streams record by record, lines counted across chunk boundaries', async () => {
  // ~150 kB: csv-parse gets it in 64 kB chunks, records straddle the cuts
  const texts = Array.from({ length: 3000 }, (_, i) => 'abcdefghij'.repeat(1 + (i % 5)) + (i % 3 ? '' : '\r\nj,"'));
  const csv = 'id,text\r\n' + texts.map((t, i) => `${i},"${t.replaceAll('"', '""')}"\r\n`).join('');
  const ab = CharTokenizer.fromAlphabet('abcdefghij,"\r\n');
  const twin = file('jsonl', texts.map((text, id) => JSON.stringify({ id, text })).join('\n'));
  assert.deepEqual(await loadDataset(file('csv', csv), ab, opts()), loadJsonlDataset(twin, ab, opts()));
  // the row after 3000 rows on lines 2 to 4001 (every third row spans two lines)
  const bad = file('csv', csv + '3000,"x"\r\n');
  await rejectsData(loadDataset(bad, ab, opts()), /: row 3001 \(line 4002\): character "x" is not in the vocabulary/);
});

test('bad CSV rows are refused naming the file, the row, the line and the column', async () => {
  const cases: [string, RegExp][] = [
    [
      'prompt,completion\na,b\nc\n',
      /: row 2 \(line 3\): column "completion" is missing \(the row has 1 fields, the header 2\)/,
    ],
    ['prompt,completion\n"a\nb",c,d\n', /: row 1 \(line 2\): the row has 3 fields, the header 2/],
    ['prompt,completion\na,b\n"a"b,c\n', /: row 2 \(line 3\): not valid CSV \(Invalid Closing Quote/],
    ['prompt,completion\na,b\n"a,b\n', /: row 2 \(line 3\): not valid CSV \(Quote Not Closed/],
    // errors come in file order: a short row before a syntax error later in the same chunk
    ['prompt,completion\nc\n"a"b,c\n', /: row 1 \(line 2\): column "completion" is missing/],
    [
      'note,prompt,completion\n"a\r\nb",c,d\n\n\n"a"b,c,d\n',
      /: row 2 \(line 6\): not valid CSV \(Invalid Closing Quote/,
    ],
    ['id,messages\n1,"[{""role"": ""user""}"\n', /: row 1 \(line 2\): column "messages" is not valid JSON \(/],
    [
      'messages\n"[{""role"":""user"",""content"":""hi""}]"\n',
      /: row 1 \(line 2\): column "messages" has no "assistant" turn/,
    ],
    ['messages\n"[{""role"":""user""}]"\n', /: row 1 \(line 2\): column "messages": messages\[0\] is object; expected/],
    ['messages\n[]\n', /: row 1 \(line 2\): column "messages" is array\(0\); expected a non-empty array/],
    ['text\nabc\n"abx\ny"\n', /: row 2 \(line 3\): character "x" is not in the vocabulary/],
    ['prompt,text\na,b\n', /: no "completion" column \(columns \["prompt","text"\]\)/],
    ['text,text\na,b\n', /: line 1: the header names column "text" twice/],
    ['', /: empty; expected a header row/],
    ['text\n\n', /: no rows \(columns \["text"\]\); expected one record per row/],
  ];
  for (const [content, message] of cases) {
    const path = file('csv', content);
    await rejectsData(loadDataset(path, char, opts()), new RegExp(escapeRegExp(path) + message.source));
  }
  await rejectsData(loadDataset(join(dir, 'missing.csv'), char, opts()), /missing\.csv: cannot be read/);
});

test('3 steps in-process from the Parquet file end with the same adapter bits as from its JSONL twin', async () => {
  // a tiny Llama with the byte-BPE tokenizer (and its ChatML template), trained on the messages fixture
  const modelDir = join(dir, 'model');
  mkdirSync(modelDir);
  const config = tinyConfig({ vocab_size: 267, hidden_size: 16, max_position_embeddings: 256 });
  writeFileSync(join(modelDir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], ...config }));
  writeFileSync(
    join(modelDir, 'model.safetensors'),
    encodeSafetensors(Object.fromEntries(randomArrays(config, 3, 0.2))),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(BYTE_BPE, f), join(modelDir, f));
  const model = await openModelDir(modelDir);
  const adapterOf = async (data: string) => {
    const spec: DataSpec = {
      kind: 'jsonl',
      path: fixture(data),
      maxTokens: 64,
      pack: false,
      evalFraction: 0.3,
      seed: 2,
    };
    const lines: string[] = [];
    const { train, eval: evalExamples } = await examplesFor(spec, model, (l) => lines.push(l));
    assert.match(lines[0], /messages records → 4 train \/ 3 eval sequences of ≤ 64 tokens/);
    const result = await runTraining({
      model,
      examples: train,
      evalExamples,
      config: {
        run: {
          lora: checkLoraConfig({ r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] }),
          train: checkTrainConfig({ steps: 3, globalBatch: 4, microBatch: 2, lr: 0.01, warmupSteps: 1, seed: 5 }),
        },
        deployment: { outDir: join(dir, 'runs'), runId: data, inProcess: true, localWorkers: 0, evalEvery: 3 },
      },
      progress: false,
      log: () => {},
    });
    assert.equal(result.step, 3);
    return readFileSync(join(result.runDir, 'adapter_model.safetensors'));
  };
  const fromJsonl = await adapterOf('messages.jsonl');
  const fromParquet = await adapterOf('messages.parquet');
  assert.ok(fromJsonl.equals(fromParquet), 'the adapters differ');
});
