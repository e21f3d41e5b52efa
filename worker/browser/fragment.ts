/**
 * The join page's settings, read from the URL fragment (`/join#token=…&backend=wasm&name=…`). The
 * fragment never reaches the server or its logs, which is why the join token travels there and
 * never in a query string.
 */
import { ErrorCodes, fail } from '../../shared/errors.ts';

export const BROWSER_BACKENDS = ['webgpu', 'webgl', 'wasm'] as const;
export type BrowserBackend = (typeof BROWSER_BACKENDS)[number];

export interface JoinSettings {
  token?: string;
  /** a backend forced by `#backend=…`; undefined: try webgpu → webgl → wasm */
  backend?: BrowserBackend;
  name?: string;
}

export function parseFragment(hash: string): JoinSettings {
  const params = new URLSearchParams(hash.replace(/^#/, ''));
  const settings: JoinSettings = {};
  const token = params.get('token');
  if (token !== null) {
    if (token.length === 0 || token.length > 512)
      fail(ErrorCodes.CONFIG, `#token should be 1–512 characters, got ${token.length}`);
    settings.token = token;
  }
  const backend = params.get('backend');
  if (backend !== null) {
    if (!(BROWSER_BACKENDS as readonly string[]).includes(backend)) {
      fail(
        ErrorCodes.CONFIG,
        `#backend should be one of ${BROWSER_BACKENDS.join(', ')}, got ${JSON.stringify(backend.slice(0, 40))}`,
      );
    }
    settings.backend = backend as BrowserBackend;
  }
  const name = params.get('name');
  if (name !== null) {
    if (name.length === 0 || name.length > 128)
      fail(ErrorCodes.CONFIG, `#name should be 1–128 characters, got ${name.length}`);
    settings.name = name;
  }
  return settings;
}

/** ws(s)://host/ws of the coordinator that served this page. */
export function socketUrl(location: { protocol: string; host: string }): string {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}
