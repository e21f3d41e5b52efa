/** A rate limit per connection: refills at `rate` tokens per second and holds `burstSeconds` worth. */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(
    private readonly rate: number,
    private readonly burstSeconds = 2,
    now = Date.now(),
  ) {
    this.tokens = rate * burstSeconds;
    this.at = now;
  }

  /** Takes one token; false when none is left (the caller refuses the message). An infinite rate never refuses. */
  take(now = Date.now()): boolean {
    if (!Number.isFinite(this.rate)) return true;
    this.tokens = Math.min(this.rate * this.burstSeconds, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
