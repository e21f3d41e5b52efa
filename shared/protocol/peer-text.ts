/**
 * Text that a peer chose (worker names, backend strings, error messages) on its way to a log line,
 * a terminal or the dashboard: one line, bounded, with no control characters (C0, DEL, C1: no
 * escape sequences, no forged newlines), no bidirectional overrides that would reorder what a
 * reader sees, and no invisible characters (zero-width, BOM, line/paragraph separators) that would
 * make one name look like another. Cleaned once, where it enters; everything downstream trusts it.
 */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]+/g;

export function cleanPeerText(text: unknown, max = 120): string {
  const s = typeof text === 'string' ? text : String(text ?? '');
  const clean = s.replace(UNSAFE, ' ');
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}
