/**
 * Robust aggregation over micro-batch gradients, for runs with untrusted volunteers. Each
 * micro-batch i contributes its mean-token gradient m_i = g_i / n_i. 'sum' is the exact default
 * (Σ g_i / Σ n_i, what a single process computes); the others trade that exactness for bounded
 * influence of a few bad micro-batches:
 *   median         coordinate-wise median of the m_i
 *   trimmed-mean   coordinate-wise mean after dropping the `trim` fraction at each end
 *   norm-clip      m_i clipped to `clip` × the median of the ‖m_i‖, then token-weighted mean
 *   centered-clip  v ← v + mean_i clip(m_i − v, τ) from v = median, τ = median ‖m_i − v‖ (3 rounds)
 */
import { cloneAdapter, type AdapterState } from '../lora/adapter.ts';
import type { GradientResult } from './gradients.ts';

export const AGGREGATIONS = ['sum', 'median', 'trimmed-mean', 'norm-clip', 'centered-clip'] as const;
export type Aggregation = (typeof AGGREGATIONS)[number];

export interface RobustOptions {
  trim: number;
  clip: number;
}

export const DEFAULT_ROBUST: RobustOptions = { trim: 0.2, clip: 2 };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** The step's gradient (of the mean token loss) from micro-batch results, by the chosen rule. */
export function robustAggregate(
  results: GradientResult[],
  how: Exclude<Aggregation, 'sum'>,
  opts: RobustOptions = DEFAULT_ROBUST,
): AdapterState {
  const means = results.map(
    (r) => new Map([...r.grads].map(([k, g]) => [k, g.map((x) => x / Math.max(1, r.tokenCount))])),
  );
  const names = [...results[0].grads.keys()];
  const out: AdapterState = new Map();
  if (how === 'median' || how === 'trimmed-mean') {
    const k = how === 'trimmed-mean' ? Math.floor(opts.trim * means.length) : 0;
    for (const name of names) {
      const n = means[0].get(name)!.length;
      const agg = new Float32Array(n);
      const column = new Array<number>(means.length);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < means.length; j++) column[j] = means[j].get(name)![i];
        if (how === 'median') agg[i] = median(column);
        else {
          const kept = column.sort((a, b) => a - b).slice(k, column.length - k);
          agg[i] = kept.reduce((s, x) => s + x, 0) / kept.length;
        }
      }
      out.set(name, agg);
    }
    return out;
  }
  const norm = (m: AdapterState) =>
    Math.sqrt([...m.values()].reduce((s, g) => s + g.reduce((t, x) => t + x * x, 0), 0));
  if (how === 'norm-clip') {
    const bound = opts.clip * median(means.map(norm));
    const tokens = results.reduce((s, r) => s + r.tokenCount, 0);
    for (const name of names) out.set(name, new Float32Array(means[0].get(name)!.length));
    means.forEach((m, j) => {
      const scale = Math.min(1, bound / Math.max(1e-12, norm(m))) * (results[j].tokenCount / Math.max(1, tokens));
      for (const name of names) out.get(name)!.forEach((_, i, a) => (a[i] += scale * m.get(name)![i]));
    });
    return out;
  }
  // centered clipping
  let center = robustAggregate(results, 'median', opts);
  for (let round = 0; round < 3; round++) {
    const deltas = means.map(
      (m) => new Map(names.map((name) => [name, m.get(name)!.map((x, i) => x - center.get(name)![i])])),
    );
    const tau = median(deltas.map(norm));
    const next = cloneAdapter(center); // center holds exactly `names`, in that order
    for (const d of deltas) {
      const scale = Math.min(1, tau / Math.max(1e-12, norm(d))) / deltas.length;
      for (const name of names) next.get(name)!.forEach((_, i, a) => (a[i] += scale * d.get(name)![i]));
    }
    center = next;
  }
  return center;
}
