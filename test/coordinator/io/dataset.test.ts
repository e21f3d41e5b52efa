// JSONL datasets: each record format's tokens and loss weights, truncation, packing, the seeded
// train/eval split, and bad records refused with LM_ERR_DATA naming path:line.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadJsonlDataset, type DatasetOptions } from '../../../coordinator/io/dataset.ts';
import { CharTokenizer } from '../../../shared/data/char-tokenizer.ts';
import { loadHfTokenizer } from '../../../shared/data/tokenizer.ts';
import { ErrorCodes, LoraMeshError } from '../../../shared/errors.ts';
import { Rng } from '../../../shared/rng.ts';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'loramesh-dataset-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
/** Writes lines (objects are JSON-encoded, strings written as they are) to a fresh .jsonl file. */
function jsonl(lines: unknown[]): string {
  const path = join(dir, `data-${fileCount++}.jsonl`);
  writeFileSync(path, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
  return path;
}

// <pad> 0, <bos> 1, <eos> 2, then a 3, b 4, c 5, d 6, e 7, f 8, g 9, ...
const char = CharTokenizer.fromAlphabet('abcdefghij');
const opts = (o: Partial<DatasetOptions> = {}): DatasetOptions => ({
  maxTokens: 64,
  mode: 'truncate',
  evalFraction: 0,
  seed: 1,
  ...o,
});

const fixtureJson = (file: string) =>
  JSON.parse(readFileSync(new URL(`../../fixtures/tokenizers/byte-bpe/${file}`, import.meta.url), 'utf8'));
// ids as worked out in test/shared/data/tokenizer.test.ts:
// 265 <|im_start|>, 266 <|im_end|> (= EOS), 264 <|endoftext|> (= BOS), 259 "hello"
const chatml = loadHfTokenizer(fixtureJson('tokenizer.json'), fixtureJson('tokenizer_config.json'));

function throwsData(fn: () => unknown, messagePart: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof LoraMeshError, `expected a LoraMeshError, got ${err}`);
    assert.equal(err.code, ErrorCodes.DATA, err.message);
    assert.match(err.message, messagePart);
    return true;
  });
}

test('text records: BOS, the text, EOS; loss on every token after BOS', () => {
  const data = loadJsonlDataset(jsonl([{ text: 'ab' }, { text: '' }]), char, opts());
  assert.equal(data.format, 'text');
  assert.deepEqual(data.train, [
    { tokens: [1, 3, 4, 2], lossWeights: [0, 1, 1, 1] },
    { tokens: [1, 2], lossWeights: [0, 1] },
  ]);
  assert.deepEqual(data.eval, []);
  assert.equal(data.skippedLines, 0);
});

test('prompt/completion records: loss on the completion and EOS only', () => {
  const data = loadJsonlDataset(jsonl([{ prompt: 'ab', completion: 'c' }]), char, opts());
  assert.equal(data.format, 'prompt-completion');
  assert.deepEqual(data.train, [{ tokens: [1, 3, 4, 5, 2], lossWeights: [0, 0, 0, 1, 1] }]);

  // Prompt and completion are encoded as one string; the loss starts at the first token where
  // encode(prompt) parts from encode(prompt + completion). SentencePiece: "hi" → [▁hi 274],
  // "hi there" → [▁hi 274, ▁there 272], so <s> ▁hi | ▁there </s>.
  const sp = (file: string) =>
    JSON.parse(readFileSync(new URL(`../../fixtures/tokenizers/sentencepiece-bpe/${file}`, import.meta.url), 'utf8'));
  const llama2 = loadHfTokenizer(sp('tokenizer.json'), sp('tokenizer_config.json'));
  const seam = loadJsonlDataset(jsonl([{ prompt: 'hi', completion: ' there' }]), llama2, opts());
  assert.deepEqual(seam.train, [{ tokens: [1, 274, 272, 2], lossWeights: [0, 0, 1, 1] }]);
  // A merge across the seam: "hel" + "lo" is the single token "hello" (259), which counts.
  const straddle = loadJsonlDataset(jsonl([{ prompt: 'hel', completion: 'lo' }]), chatml, opts());
  assert.deepEqual(straddle.train, [{ tokens: [259, 266], lossWeights: [1, 1] }]);
});

// user "hi" → 265 | u s e r 117 115 101 114 | \n 10 | h i 104 105 | 266 | \n 10          (10 tokens)
// assistant header → 265 | a s s i s t a n t 97 115 115 105 115 116 97 110 116 | \n 10  (11 tokens)
const userHi = [265, 117, 115, 101, 114, 10, 104, 105, 266, 10];
const assistantHeader = [265, 97, 115, 115, 105, 115, 116, 97, 110, 116, 10];
const zeros = (n: number) => new Array<number>(n).fill(0);
const ones = (n: number) => new Array<number>(n).fill(1);

test('messages records: loss on the tokens of each assistant turn, end-of-turn included', () => {
  const messages = [
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'hello' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'h\u00e9llo' },
  ];
  const data = loadJsonlDataset(jsonl([{ messages }]), chatml, opts());
  assert.equal(data.format, 'messages');
  // Each assistant span runs from the end of the prefix rendered with the generation prompt to
  // the end of the prefix that includes the turn: "hello<|im_end|>\n" and "héllo<|im_end|>\n".
  const firstReply = [259, 266, 10];
  const secondReply = [104, 263, 257, 111, 266, 10];
  assert.deepEqual(data.train, [
    {
      tokens: [...userHi, ...assistantHeader, ...firstReply, ...userHi, ...assistantHeader, ...secondReply],
      lossWeights: [...zeros(21), ...ones(3), ...zeros(21), ...ones(6)],
    },
  ]);

  // With add_bos_token the BOS goes first, weight 0; a conversation ending in a user turn has no loss there.
  const withBos = loadHfTokenizer(fixtureJson('tokenizer.json'), {
    ...fixtureJson('tokenizer_config.json'),
    add_bos_token: true,
  });
  const trailingUser = loadJsonlDataset(jsonl([{ messages: messages.slice(0, 3) }]), withBos, opts());
  assert.deepEqual(trailingUser.train, [
    {
      tokens: [264, ...userHi, ...assistantHeader, ...firstReply, ...userHi],
      lossWeights: [0, ...zeros(21), ...ones(3), ...zeros(10)],
    },
  ]);
});

test('a chat template that rewrites earlier turns is refused, naming the line', () => {
  const marksLast = loadHfTokenizer(fixtureJson('tokenizer.json'), {
    ...fixtureJson('tokenizer_config.json'),
    chat_template:
      "{% for m in messages %}{{ m['role'] }}{% if loop.last %}!{% endif %}: {{ m['content'] }}\n{% endfor %}",
  });
  const path = jsonl([
    {
      messages: [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'hello' },
      ],
    },
  ]);
  throwsData(
    () => loadJsonlDataset(path, marksLast, opts()),
    new RegExp(`${path}:1: the chat template renders messages\\[0\\.\\.1\\) differently`),
  );
});

test('truncate cuts each example to maxTokens and skips records left with no loss', () => {
  const path = jsonl([
    { prompt: 'a', completion: 'bcdef' },
    { prompt: 'abcdef', completion: 'g' },
  ]);
  const data = loadJsonlDataset(path, char, opts({ maxTokens: 4 }));
  assert.deepEqual(data.train, [{ tokens: [1, 3, 4, 5], lossWeights: [0, 0, 1, 1] }]);
  assert.equal(data.skippedLines, 1);
});

test('pack concatenates examples into maxTokens sequences, keeping each weight', () => {
  // stream: [1 3 4 2][1 5 2][1 3 4 5 2], weights [0 1 1 1][0 1 1][0 1 1 1 1]
  const data = loadJsonlDataset(
    jsonl([{ text: 'ab' }, { text: 'c' }, { text: 'abc' }]),
    char,
    opts({ maxTokens: 5, mode: 'pack' }),
  );
  assert.deepEqual(data.train, [
    { tokens: [1, 3, 4, 2, 1], lossWeights: [0, 1, 1, 1, 0] },
    { tokens: [5, 2, 1, 3, 4], lossWeights: [1, 1, 0, 1, 1] },
    { tokens: [5, 2], lossWeights: [1, 1] },
  ]);
  assert.equal(data.skippedLines, 0);

  // [1 3 4 2 1 5 2] in threes leaves a lone [2], which has no target and is dropped.
  const lone = loadJsonlDataset(jsonl([{ text: 'ab' }, { text: 'c' }]), char, opts({ maxTokens: 3, mode: 'pack' }));
  assert.deepEqual(
    lone.train.map((e) => e.tokens),
    [
      [1, 3, 4],
      [2, 1, 5],
    ],
  );

  // A chat record ends in "\n", not EOS: packing appends EOS (266) with weight 0.
  const chat = loadJsonlDataset(
    jsonl([
      {
        messages: [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'hello' },
        ],
      },
    ]),
    chatml,
    opts({ maxTokens: 100, mode: 'pack' }),
  );
  assert.deepEqual(chat.train, [
    { tokens: [...userHi, ...assistantHeader, 259, 266, 10, 266], lossWeights: [...zeros(21), 1, 1, 1, 0] },
  ]);
});

test('the train/eval split takes the first ceil(evalFraction·n) of a seeded shuffle and is deterministic', () => {
  const letters = [...'abcdefghij'];
  const path = jsonl(letters.map((text) => ({ text })));
  const textOf = (tokens: number[]) => char.decode(tokens);
  const split = (seed: number, evalFraction: number) => {
    const d = loadJsonlDataset(path, char, opts({ seed, evalFraction }));
    return { train: d.train.map((e) => textOf(e.tokens)), eval: d.eval.map((e) => textOf(e.tokens)) };
  };
  const a = split(7, 0.25);
  assert.equal(a.eval.length, 3); // ceil(2.5)
  assert.equal(a.train.length, 7);
  assert.deepEqual([...a.train, ...a.eval].sort(), letters);
  const expectedEval = new Rng(7)
    .shuffle(letters.map((_, k) => k))
    .slice(0, 3)
    .sort((x, y) => x - y)
    .map((k) => letters[k]);
  assert.deepEqual(a.eval, expectedEval); // in file order
  assert.deepEqual(
    a.train,
    letters.filter((l) => !expectedEval.includes(l)),
  );
  assert.deepEqual(split(7, 0.25), a);
  assert.notDeepEqual(split(8, 0.25).eval, a.eval);
  assert.deepEqual(split(7, 0), { train: letters, eval: [] });
});

test('bad records are refused with LM_ERR_DATA naming path:line and what is wrong', () => {
  const cases: [unknown[], RegExp][] = [
    [[{ text: 'a' }, '', '{"text": "b"'], /:3: not valid JSON/],
    [
      [{ text: 'a' }, { txt: 'b' }],
      /:2: fields \["txt"\]; expected \{"text"\}, \{"prompt", "completion"\} or \{"messages"\}/,
    ],
    [[{ prompt: 1, completion: 'a' }], /:1: "prompt" is 1; expected a string/],
    [[{ prompt: 'a' }], /:1: "completion" is undefined; expected a string/],
    [[{ text: ['a'] }], /:1: "text" is array\(1\); expected a string/],
    [['[1, 2]'], /:1: the line is array\(2\); expected a JSON object/],
    [[{ messages: [] }], /:1: "messages" is array\(0\); expected a non-empty array/],
    [
      [{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant' }] }],
      /:1: messages\[1\] is object; expected \{"role": string, "content": string\}/,
    ],
    [
      [{ text: 'a' }, { text: 'b' }, { messages: [{ role: 'user', content: 'hi' }] }],
      /:3: "messages" has no "assistant" turn/,
    ],
    [
      [{ text: 'a' }, { prompt: 'a', completion: 'b' }],
      /:2: a prompt-completion record, but line 1 made this a text file/,
    ],
    [[{ text: 'a' }, { text: 'xyz' }], /:2: character "x" is not in the vocabulary/],
    [
      [
        {
          messages: [
            { role: 'user', content: 'a' },
            { role: 'assistant', content: 'b' },
          ],
        },
      ],
      /:1: this tokenizer has no chat template/,
    ],
  ];
  for (const [lines, messagePart] of cases) {
    const path = jsonl(lines);
    throwsData(
      () => loadJsonlDataset(path, char, opts()),
      new RegExp(path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + messagePart.source),
    );
  }
  const empty = jsonl(['', '  ']);
  throwsData(() => loadJsonlDataset(empty, char, opts()), /no records \(the file is empty or has only blank lines\)/);
  throwsData(() => loadJsonlDataset(join(dir, 'missing.jsonl'), char, opts()), /missing\.jsonl: cannot be read/);
  throwsData(
    () => loadJsonlDataset(jsonl([{ text: 'a' }]), char, opts({ evalFraction: 0.5 })),
    /1 records leave none for training/,
  );
});

test('bad options are refused with LM_ERR_CONFIG naming the option', () => {
  const path = jsonl([{ text: 'a' }]);
  for (const [bad, field] of [
    [{ maxTokens: 1 }, 'maxTokens'],
    [{ evalFraction: 1 }, 'evalFraction'],
    [{ evalFraction: NaN }, 'evalFraction'],
    [{ mode: 'stack' }, 'mode'],
    [{ seed: 0.5 }, 'seed'],
  ] as const) {
    assert.throws(
      () => loadJsonlDataset(path, char, opts(bad as Partial<DatasetOptions>)),
      (err: unknown) => err instanceof LoraMeshError && err.code === ErrorCodes.CONFIG && err.message.includes(field),
    );
  }
});
