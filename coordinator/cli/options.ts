/** CLI flag parsing with errors that name the flag, the value and what was expected. */
import { isIP } from 'node:net';
import { InvalidArgumentError } from 'commander';
import { LINEAR_MODULES, type LinearModule } from '../../shared/config.ts';
import { canonicalAddress } from '../net/net-limits.ts';

export function int(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`expected an integer ≥ ${min}, got ${JSON.stringify(value)}`);
    return n;
  };
}

export function num(min: number, max = Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max)
      throw new InvalidArgumentError(`expected a number in [${min}, ${max}], got ${JSON.stringify(value)}`);
    return n;
  };
}

/** A comma list of token ids (non-negative integers), e.g. `1,5,9`; the vocabulary is checked by the command. */
export function tokenIds(value: string): number[] {
  const parts = value.split(',').map((s) => s.trim());
  if (parts.some((s) => !/^\d+$/.test(s)))
    throw new InvalidArgumentError(`expected a comma list of token ids (integers ≥ 0), got ${JSON.stringify(value)}`);
  return parts.map(Number);
}

export function modules(value: string): LinearModule[] {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const m of list) {
    if (!(LINEAR_MODULES as readonly string[]).includes(m))
      throw new InvalidArgumentError(
        `unknown module ${JSON.stringify(m)}; expected a comma list of ${LINEAR_MODULES.join(', ')}`,
      );
  }
  return list as LinearModule[];
}

export function oneOf<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value))
      throw new InvalidArgumentError(`expected one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    return value as T;
  };
}

/** A comma list of IP addresses (IPv4 or IPv6). */
export function addresses(value: string): string[] {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const a of list) {
    if (canonicalAddress(a) === null) {
      throw new InvalidArgumentError(`${JSON.stringify(a)} is not an IP address; expected a comma list of addresses`);
    }
  }
  return list;
}

/** A TCP port: 0 (pick a free one) to 65535. */
export function port(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n > 65535)
    throw new InvalidArgumentError(`expected a port from 0 to 65535 (0: a free one), got ${JSON.stringify(value)}`);
  return n;
}

/** An address to listen on: an IPv4 or IPv6 address, or a host name (all-numeric names must be valid IPv4). */
export function host(value: string): string {
  const v = value.trim();
  if (isIP(v)) return v;
  const hostname = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;
  if (/^[\d.]+$/.test(v) || !hostname.test(v))
    throw new InvalidArgumentError(`expected an IP address or a host name, got ${JSON.stringify(value)}`);
  return v;
}

/** The outlier screen's factor: 0 (off) or at least 1 (below 1 every honest result would be recomputed). */
export function outlierFactor(value: string): number {
  const n = num(0)(value);
  if (n > 0 && n < 1) throw new InvalidArgumentError(`expected 0 (off) or a number ≥ 1, got ${JSON.stringify(value)}`);
  return n;
}
