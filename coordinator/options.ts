/** CLI flag parsing with errors that name the flag, the value and what was expected. */
import { InvalidArgumentError } from 'commander';
import { LINEAR_MODULES, type LinearModule } from '../shared/config.ts';

export function int(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer ≥ ${min}, got ${JSON.stringify(value)}`);
    return n;
  };
}

export function num(min: number, max = Infinity) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`expected a number in [${min}, ${max}], got ${JSON.stringify(value)}`);
    return n;
  };
}

export function modules(value: string): LinearModule[] {
  const list = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const m of list) {
    if (!(LINEAR_MODULES as readonly string[]).includes(m)) throw new InvalidArgumentError(`unknown module ${JSON.stringify(m)}; expected a comma list of ${LINEAR_MODULES.join(', ')}`);
  }
  return list as LinearModule[];
}

export function oneOf<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected one of ${choices.join(', ')}, got ${JSON.stringify(value)}`);
    return value as T;
  };
}
