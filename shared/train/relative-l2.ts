/**
 * The relative L2 distance ‖theirs − trusted‖₂ / ‖trusted‖₂ by which one gradient is judged against
 * another: a spot check against the coordinator's recomputation, one backend against another.
 */

/** A tensor and the one it is compared with; `theirs` undefined when the peer did not send it. */
export type TensorPair = readonly [trusted: ArrayLike<number>, theirs: ArrayLike<number> | undefined];

/**
 * ‖theirs − trusted‖₂ / ‖trusted‖₂ over all pairs as one concatenated vector, summed in float64 in
 * order; Infinity when a pair is missing or its lengths differ. ‖trusted‖ is floored at 1e-12 so an
 * all-zero trusted vector gives a finite distance (0 when theirs is zero too).
 */
export function relativeL2Distance(pairs: Iterable<TensorPair>): number {
  let diff = 0;
  let norm = 0;
  for (const [g, h] of pairs) {
    if (!h || h.length !== g.length) return Infinity;
    for (let i = 0; i < g.length; i++) {
      diff += (g[i] - h[i]) ** 2;
      norm += g[i] ** 2;
    }
  }
  return Math.sqrt(diff) / Math.max(1e-12, Math.sqrt(norm));
}
