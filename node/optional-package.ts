/**
 * Packages the product can do without, loaded when first needed: an install without them (the
 * offline worker bundle leaves out native addons a worker never uses) still runs everything else.
 * The one module that resolves them, one folder below the root like node/package-root.ts.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const loaded = new Map<string, unknown>();

/** The CommonJS package `name`, or null when it is not installed here. */
export function optionalPackage<T>(name: string): T | null {
  if (!loaded.has(name)) {
    try {
      loaded.set(name, require(name));
    } catch {
      loaded.set(name, null);
    }
  }
  return loaded.get(name) as T | null;
}
