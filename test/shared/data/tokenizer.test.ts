// Hugging Face tokenizers through loadHfTokenizer, on two tiny fixtures whose expected ids are
// worked out by hand from their merge lists (below), not taken from the library under test.
//
// test/fixtures/tokenizers/byte-bpe (GPT-2 / Llama-3 style): ByteLevel pre-tokenizer and decoder.
// Ids 0..255 are the 256 byte symbols with id = byte value (GPT-2's table of symbols: printable
// bytes stand for themselves, the others are U+0100 + n, so ' ' is 'Ġ', '\n' is 'Ċ', 0x82 is 'Ĥ').
// Merges, lowest rank first, create ids 256..263:
//   256 h+e=he  257 l+l=ll  258 he+ll=hell  259 hell+o=hello  260 Ġ+w=Ġw  261 o+r=or  262 Ġw+or=Ġwor
//   263 Ã+©=Ã© ("é" = C3 A9)
// Added special tokens: 264 <|endoftext|>, 265 <|im_start|>, 266 <|im_end|>.
//
// test/fixtures/tokenizers/sentencepiece-bpe (Llama-2 style): normalizer Prepend "▁" then
// Replace " " → "▁", no pre-tokenizer, BPE with byte_fallback. 0 <unk>, 1 <s>, 2 </s>,
// 3 + b = <0xBB> for every byte b, 259.. the pieces ▁ h i t e r c a f, then merges create
//   268 ▁+t  269 h+e  270 ▁t+he  271 r+e  272 ▁the+re  273 ▁+h  274 ▁h+i  275 c+a
// Its TemplateProcessing post-processor puts <s> first, as Llama-2's does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CharTokenizer } from '../../../shared/data/char-tokenizer.ts';
import { loadHfTokenizer, type TextTokenizer } from '../../../shared/data/tokenizer.ts';
import { ErrorCodes } from '../../../shared/errors.ts';
import { throwsCode } from '../../helpers/assert.ts';

const FIXTURES = new URL('../../fixtures/tokenizers/', import.meta.url);
const readJson = (dir: string, file: string): Record<string, unknown> =>
  JSON.parse(readFileSync(new URL(`${dir}/${file}`, FIXTURES), 'utf8'));
const byteJson = readJson('byte-bpe', 'tokenizer.json');
const byteConfig = readJson('byte-bpe', 'tokenizer_config.json');
const spJson = readJson('sentencepiece-bpe', 'tokenizer.json');
const spConfig = readJson('sentencepiece-bpe', 'tokenizer_config.json');
const byteBpe = loadHfTokenizer(byteJson, byteConfig);
const sentencePiece = loadHfTokenizer(spJson, spConfig);

test('byte-level BPE encodes known strings to hand-derived ids', () => {
  // "hello world": the regex pre-tokenizer splits "hello" | " world" → symbols "hello", "Ġworld".
  //   "hello": h e l l o → (h,e) rank 0 → he l l o → (l,l) rank 1 → he ll o → (he,ll) rank 2 →
  //   hell o → (hell,o) rank 3 → hello = 259.
  //   "Ġworld": Ġ w o r l d → (Ġ,w) rank 4 → Ġw o r l d → (o,r) rank 5 → Ġw or l d →
  //   (Ġw,or) rank 6 → Ġwor l d = 262, 'l' 108, 'd' 100.
  assert.deepEqual(byteBpe.encode('hello world'), [259, 262, 108, 100]);
  // "héllo" is one letter run: bytes 68 C3 A9 6C 6C 6F → h Ã © l l o. The lowest-ranked pair is
  // (l,l) rank 1 → h Ã © ll o; then (Ã,©) rank 7 → h Ã© ll o; (ll,o) and (h,Ã©) are no merges,
  // and "he" cannot form because h is followed by Ã. → 104, 263, 257, 111.
  assert.deepEqual(byteBpe.encode('h\u00e9llo'), [104, 263, 257, 111]);
  // "€" = E2 82 AC, no merges: ids are the bytes 226, 130, 172 (symbols â Ĥ ¬).
  assert.deepEqual(byteBpe.encode('\u20ac'), [226, 130, 172]);
  // "user\nhi": "user" | "\n" | "hi"; no merge applies to u-s, s-e, e-r or h-i → the bytes.
  assert.deepEqual(byteBpe.encode('user\nhi'), [117, 115, 101, 114, 10, 104, 105]);
  // Special-token text becomes the special token; encode adds none by itself.
  assert.deepEqual(byteBpe.encode('hello<|endoftext|>'), [259, 264]);
  assert.deepEqual(byteBpe.encode(''), []);
});

test('byte-level BPE decodes ids, skipping special tokens, and round trips text', () => {
  assert.equal(byteBpe.decode([259, 262, 108, 100]), 'hello world');
  assert.equal(byteBpe.decode([104, 263, 257, 111]), 'h\u00e9llo');
  assert.equal(byteBpe.decode([265, 259, 266, 264]), 'hello');
  assert.equal(byteBpe.decode([]), '');
  for (const text of [
    'hello world',
    'h\u00e9llo \u20ac!',
    ' two  spaces\tand\nnewlines ',
    'caf\u00e9 na\u00efve 日本 🙂',
    'end .',
  ]) {
    assert.equal(byteBpe.decode(byteBpe.encode(text)), text, JSON.stringify(text));
  }
});

test('byte-level BPE special ids, vocabulary size and BOS policy come from tokenizer_config.json', () => {
  assert.equal(byteBpe.vocabSize, 267); // 256 bytes + 8 merges + 3 added tokens
  assert.equal(byteBpe.bosId, 264); // bos_token "<|endoftext|>"
  assert.equal(byteBpe.eosId, 266); // eos_token "<|im_end|>"
  assert.equal(byteBpe.padId, 264); // pad_token "<|endoftext|>"
  assert.equal(byteBpe.addBos, false); // add_bos_token: false
  const withBos = loadHfTokenizer(byteJson, { ...byteConfig, add_bos_token: true });
  assert.equal(withBos.addBos, true);
  // No add_bos_token and a post-processor that adds nothing: the default is to add BOS when there is one.
  const { add_bos_token: _, ...noFlag } = byteConfig;
  assert.equal(loadHfTokenizer(byteJson, noFlag).addBos, true);
});

test('the chat template renders messages to the exact expected string', () => {
  const messages = [
    { role: 'system', content: 'be brief' },
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'hello' },
  ];
  assert.equal(
    byteBpe.renderChat(messages, false),
    '<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n',
  );
  assert.equal(
    byteBpe.renderChat(messages.slice(0, 2), true),
    '<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
  );
  // bos_token and eos_token are template variables, as in transformers.
  const llama2Style = loadHfTokenizer(spJson, {
    ...spConfig,
    chat_template:
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]" +
      "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}",
  });
  assert.equal(
    llama2Style.renderChat(
      [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'there' },
      ],
      false,
    ),
    '<s>[INST] hi [/INST] there</s>',
  );
  // raise_exception in a template surfaces as LM_ERR_DATA.
  const strict = loadHfTokenizer(byteJson, {
    ...byteConfig,
    chat_template:
      "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok",
  });
  throwsCode(
    () => strict.renderChat([{ role: 'assistant', content: 'x' }], false),
    ErrorCodes.DATA,
    /first message must be from the user/,
  );
});

test('SentencePiece-style BPE encodes known strings to hand-derived ids, with byte fallback', () => {
  // "hi there" → normalized "▁hi▁there": ▁ h i ▁ t h e r e. By rank: (▁,t) 0 → ▁t; (h,e) 1 → he;
  // (▁t,he) 2 → ▁the; (r,e) 3 → re; (▁the,re) 4 → ▁there; (▁,h) 5 → ▁h; (▁h,i) 6 → ▁hi.
  assert.deepEqual(sentencePiece.encode('hi there'), [274, 272]);
  // Two spaces: "▁hi▁▁there": the same merges leave a lone ▁ (259) between, as (▁,▁) is no merge.
  assert.deepEqual(sentencePiece.encode('hi  there'), [274, 259, 272]);
  // "café" → "▁café": (c,a) rank 7 → ▁ ca f é; "é" is no piece, so byte fallback gives
  // <0xC3> = 3 + 195 = 198 and <0xA9> = 3 + 169 = 172.
  assert.deepEqual(sentencePiece.encode('caf\u00e9'), [259, 275, 267, 198, 172]);
  // "€" → "▁€": ▁ then bytes E2 82 AC → 3 + 226, 3 + 130, 3 + 172.
  assert.deepEqual(sentencePiece.encode('\u20ac'), [259, 229, 133, 175]);
  // encode adds no <s> although the post-processor would.
  assert.deepEqual(sentencePiece.encode('<s>hi'), [1, 274]);
});

test('SentencePiece-style BPE decodes bytes back to characters and round trips text', () => {
  assert.equal(sentencePiece.decode([274, 272]), 'hi there');
  assert.equal(sentencePiece.decode([1, 259, 275, 267, 198, 172, 2]), 'caf\u00e9');
  for (const text of ['hi there', 'hi  there', 'caf\u00e9 \u20ac', 'zebra 日本']) {
    assert.equal(sentencePiece.decode(sentencePiece.encode(text)), text, JSON.stringify(text));
  }
});

test(
  'SentencePiece-style BPE special ids: {"content"} token objects, pad from eos, ' + 'BOS from the post-processor',
  () => {
    assert.equal(sentencePiece.vocabSize, 276);
    assert.equal(sentencePiece.bosId, 1);
    assert.equal(sentencePiece.eosId, 2);
    assert.equal(sentencePiece.padId, 2); // pad_token null → eos
    assert.equal(sentencePiece.addBos, true); // TemplateProcessing single = [<s>, A]
    throwsCode(
      () => sentencePiece.renderChat([{ role: 'user', content: 'hi' }], true),
      ErrorCodes.DATA,
      /no chat template/,
    );

    // Without names in tokenizer_config.json the ids come from the model's config.json; a list of EOS ids gives its
    // first.
    const bare = loadHfTokenizer(spJson, {}, { bos_token_id: 1, eos_token_id: [2, 0], pad_token_id: 0 });
    assert.deepEqual([bare.bosId, bare.eosId, bare.padId], [1, 2, 0]);
    const none = loadHfTokenizer(spJson);
    assert.deepEqual([none.bosId, none.eosId, none.padId, none.addBos], [null, null, 0, false]);
    // A post-processor that does not start with BOS means no BOS.
    const noBosTemplate = {
      ...spJson,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ Sequence: { id: 'A', type_id: 0 } }],
        pair: [],
        special_tokens: {},
      },
    };
    assert.equal(loadHfTokenizer(noBosTemplate, spConfig).addBos, false);
  },
);

test('bad tokenizer files are refused with LM_ERR_MODEL naming the field', () => {
  throwsCode(() => loadHfTokenizer([1, 2]), ErrorCodes.MODEL, /tokenizer\.json/);
  throwsCode(() => loadHfTokenizer({ version: '1.0' }), ErrorCodes.MODEL, /"model"/);
  throwsCode(() => loadHfTokenizer(spJson, 'config'), ErrorCodes.MODEL, /tokenizer_config\.json/);
  throwsCode(
    () => loadHfTokenizer(spJson, { bos_token: '<bos>' }),
    ErrorCodes.MODEL,
    /bos_token "<bos>" is not in the tokenizer's vocabulary/,
  );
  throwsCode(() => loadHfTokenizer(spJson, { eos_token: 7 }), ErrorCodes.MODEL, /eos_token is 7/);
  throwsCode(() => loadHfTokenizer(spJson, { chat_template: '{% for %}' }), ErrorCodes.MODEL, /chat_template/);
});

test('CharTokenizer is a TextTokenizer and keeps its own API', () => {
  const char = CharTokenizer.fromAlphabet('ab');
  const tok: TextTokenizer = char;
  assert.equal(tok.vocabSize, 5);
  assert.equal(char.size, 5);
  assert.deepEqual([tok.bosId, tok.eosId, tok.padId, tok.addBos], [1, 2, 0, true]);
  assert.deepEqual(tok.encode('ba'), [4, 3]);
  assert.equal(tok.decode([1, 4, 3, 2, 3]), 'ba');
  throwsCode(
    () => tok.renderChat([{ role: 'user', content: 'a' }], true),
    ErrorCodes.DATA,
    /this tokenizer has no chat template/,
  );
});
