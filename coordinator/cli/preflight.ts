/**
 * Checks of a `train` command's deployment settings that can fail, made before the model loads
 * (which takes minutes at real sizes): the token and TLS files can be read (the address is probed by
 * net/listen.ts). Each failure is one LM_ERR_CONFIG line naming the flag and the value.
 */
import { readFileSync } from 'node:fs';
import { ErrorCodes, fail } from '../../shared/errors.ts';

/** Reads a file a flag names, or fails naming the flag. */
export function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    fail(
      ErrorCodes.CONFIG,
      `${flag} ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
}
