// The NF4 table and its nearest-level rule: the published decimals and the float32 bits agree, the
// midpoints are exact, and ties go to the lower code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NF4_LEVEL_BITS, NF4_LEVELS, NF4_MIDPOINTS, NF4_ZERO_CODE, nf4Code } from '../../../shared/quant/nf4.ts';
import { Rng } from '../../../shared/rng.ts';

// As printed in QLoRA appendix E and bitsandbytes' get_4bit_type('nf4'): a second, independent copy.
const PUBLISHED = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
];

const bitsOf = (x: number) => new Uint32Array(Float32Array.of(x).buffer)[0];
const fromBits = (b: number) => new Float32Array(Uint32Array.of(b).buffer)[0];

test('every published NF4 decimal is exactly a float32, and its bits are the table', () => {
  assert.equal(NF4_LEVELS.length, 16);
  for (let i = 0; i < 16; i++) {
    assert.equal(Math.fround(PUBLISHED[i]), PUBLISHED[i], `level ${i} is not a float32`);
    assert.equal(bitsOf(PUBLISHED[i]), NF4_LEVEL_BITS[i], `level ${i} bits`);
    assert.equal(NF4_LEVELS[i], PUBLISHED[i]);
  }
  assert.equal(NF4_LEVELS[NF4_ZERO_CODE], 0);
  assert.ok(!Object.is(NF4_LEVELS[NF4_ZERO_CODE], -0));
  for (let i = 1; i < 16; i++) assert.ok(NF4_LEVELS[i] > NF4_LEVELS[i - 1], 'levels ascend');
});

test('the midpoints are exact in float64 (the sum of neighbours loses nothing)', () => {
  for (let i = 0; i < 15; i++) {
    const [a, b] = [NF4_LEVELS[i], NF4_LEVELS[i + 1]];
    const sum = a + b;
    assert.equal(sum - a, b);
    assert.equal(sum - b, a);
    assert.equal(NF4_MIDPOINTS[i], sum / 2);
  }
});

test('a value exactly on a midpoint takes the lower code; its float32 neighbours go either way', () => {
  let exact = 0;
  for (let i = 0; i < 15; i++) {
    const mid = NF4_MIDPOINTS[i];
    if (Math.fround(mid) !== mid) continue;
    exact++;
    assert.equal(nf4Code(mid), i, `midpoint ${i}`);
    const up = fromBits(bitsOf(mid) + (mid > 0 ? 1 : -1));
    const down = fromBits(bitsOf(mid) + (mid > 0 ? -1 : 1));
    assert.equal(nf4Code(up), i + 1);
    assert.equal(nf4Code(down), i);
  }
  assert.equal(exact, 6, 'six midpoints are float32 numbers');
});

test('the levels map to their own codes; the ends and beyond take 0 and 15', () => {
  for (let i = 0; i < 16; i++) assert.equal(nf4Code(NF4_LEVELS[i]), i);
  assert.equal(nf4Code(-0), NF4_ZERO_CODE);
  assert.equal(nf4Code(1.5), 15);
  assert.equal(nf4Code(Infinity), 15);
  assert.equal(nf4Code(-1.5), 0);
  assert.equal(nf4Code(-Infinity), 0);
});

test('nf4Code is the nearest level (brute force over random float32 values)', () => {
  const rng = new Rng(7);
  for (let k = 0; k < 20000; k++) {
    const n = Math.fround(rng.uniform(-1.05, 1.05));
    let best = 0;
    for (let i = 1; i < 16; i++) if (Math.abs(n - NF4_LEVELS[i]) < Math.abs(n - NF4_LEVELS[best])) best = i;
    assert.equal(nf4Code(n), best, `value ${n}`);
  }
});
