/**
 * Deterministic data order: epoch e visits the dataset in the permutation drawn from
 * (seed, e). The cursor (epoch, position) is all the state there is, so a checkpoint resumes the
 * exact order and every process that knows the cursor agrees on the next global batch.
 */
import { mixSeed, Rng } from '../rng.ts';

export interface SamplerCursor {
  epoch: number;
  position: number;
}

export class EpochSampler {
  private order: number[] = [];
  private orderEpoch = -1;

  constructor(
    readonly size: number,
    readonly seed: number,
    public cursor: SamplerCursor = { epoch: 0, position: 0 },
  ) {
    if (!Number.isInteger(size) || size < 1) throw new Error(`sampler needs a non-empty dataset, got size ${size}`);
  }

  private permutation(epoch: number): number[] {
    if (this.orderEpoch !== epoch) {
      this.order = new Rng(mixSeed(this.seed, epoch)).shuffle(Array.from({ length: this.size }, (_, i) => i));
      this.orderEpoch = epoch;
    }
    return this.order;
  }

  /** The next n example indices, crossing into the next epoch when one runs out. */
  next(n: number): number[] {
    const out: number[] = [];
    while (out.length < n) {
      const order = this.permutation(this.cursor.epoch);
      out.push(order[this.cursor.position]);
      this.cursor =
        this.cursor.position + 1 < this.size
          ? { epoch: this.cursor.epoch, position: this.cursor.position + 1 }
          : { epoch: this.cursor.epoch + 1, position: 0 };
    }
    return out;
  }
}
