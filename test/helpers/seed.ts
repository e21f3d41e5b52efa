/**
 * The seed behind a test's random choices (which step to kill at, …): LORAMESH_TEST_SEED when set,
 * to replay a failure, else a fixed constant, so every run makes the same choices. Tests draw from
 * shared/rng.ts's Rng seeded with it and print it in their diagnostic output.
 */
import type { TestContext } from 'node:test';
import { mixSeed, Rng } from '../../shared/rng.ts';

export const DEFAULT_TEST_SEED = 14;

export function testSeed(): number {
  const raw = process.env.LORAMESH_TEST_SEED;
  if (raw === undefined || raw === '') return DEFAULT_TEST_SEED;
  const seed = Number(raw);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new Error(`LORAMESH_TEST_SEED should be an integer in [0, 2^32), got "${raw}"`);
  }
  return seed;
}

/**
 * An Rng for one test: the seed mixed with `stream` (so two tests of a file draw independently),
 * printed as a diagnostic with the command line that replays it.
 */
export function seededRng(t: TestContext, stream: number): Rng {
  const seed = testSeed();
  t.diagnostic(`test seed ${seed} (replay: LORAMESH_TEST_SEED=${seed})`);
  return new Rng(mixSeed(seed, stream));
}
