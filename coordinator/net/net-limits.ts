/**
 * Connection limits of the coordinator's network edge, global and per client address, and how a
 * client address is found: the socket's peer, or (behind a named reverse proxy) the right-most
 * X-Forwarded-For hop that is not a trusted proxy. IPv6 clients are counted per /64, the block a
 * single host is usually given, so one machine cannot dodge a limit by cycling its addresses.
 * Pure logic, no sockets: server.ts wires it up.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { describe, ErrorCodes, fail } from '../../shared/errors.ts';

export interface NetLimits {
  /** concurrent WebSocket worker connections, all addresses together */
  maxConnections: number;
  /** concurrent TCP connections per client address (a trusted proxy's own connections are exempt) */
  maxConnectionsPerAddress: number;
  /** concurrent WebSocket worker connections per client address */
  maxWorkersPerAddress: number;
  /** concurrent /api/events streams, all addresses together */
  maxEventStreams: number;
  /** concurrent /api/events streams per client address */
  maxEventStreamsPerAddress: number;
  /** unsent bytes an event stream may hold; a client that does not read past this is dropped */
  maxEventStreamBufferBytes: number;
  /** addresses of reverse proxies whose X-Forwarded-For is believed (none: the header is ignored) */
  trustedProxies: string[];
}

export const DEFAULT_NET_LIMITS: Readonly<NetLimits> = Object.freeze({
  maxConnections: 1024,
  maxConnectionsPerAddress: 64,
  maxWorkersPerAddress: 32,
  maxEventStreams: 64,
  maxEventStreamsPerAddress: 4,
  maxEventStreamBufferBytes: 1024 * 1024,
  trustedProxies: [],
});

const COUNTS = [
  'maxConnections',
  'maxConnectionsPerAddress',
  'maxWorkersPerAddress',
  'maxEventStreams',
  'maxEventStreamsPerAddress',
  'maxEventStreamBufferBytes',
] as const;

/**
 * The defaults merged with the caller's partial limits (undefined fields keep their default), each
 * checked: counts are integers ≥ 1, trusted proxies are IP addresses (stored canonical).
 */
export function resolveNetLimits(options: Partial<NetLimits> = {}): NetLimits {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const limits: NetLimits = { ...DEFAULT_NET_LIMITS, ...given };
  for (const field of COUNTS) {
    const value = limits[field];
    if (!Number.isInteger(value) || value < 1) {
      fail(ErrorCodes.CONFIG, `limits.net.${field} should be an integer ≥ 1, got ${describe(value)}`);
    }
  }
  if (!Array.isArray(limits.trustedProxies)) {
    fail(ErrorCodes.CONFIG, `limits.net.trustedProxies should be a list, got ${describe(limits.trustedProxies)}`);
  }
  limits.trustedProxies = limits.trustedProxies.map(
    (proxy) =>
      canonicalAddress(String(proxy)) ??
      fail(ErrorCodes.CONFIG, `limits.net.trustedProxies: ${describe(proxy)} is not an IP address`),
  );
  return limits;
}

/** The 8 hextets of a valid IPv6 address (compressed, with an embedded IPv4 tail or not). */
function ipv6Hextets(address: string): number[] {
  let text = address.toLowerCase();
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const zeros = Array<string>(8 - left.length - right.length).fill('0');
  const groups = tail === undefined ? left : [...left, ...zeros, ...right];
  return groups.map((g) => parseInt(g, 16));
}

/**
 * One spelling per address: IPv4 dotted; IPv4-mapped IPv6 (::ffff:1.2.3.4) as its IPv4 address;
 * other IPv6 as 8 lower-case hextets without leading zeros (a zone id is dropped). null: not an IP.
 */
export function canonicalAddress(address: string): string | null {
  const bare = address.split('%')[0];
  if (isIPv4(bare)) return bare;
  if (!isIPv6(bare)) return null;
  const h = ipv6Hextets(bare);
  const mapped = h.slice(0, 5).every((x) => x === 0) && h[5] === 0xffff;
  if (mapped) return `${h[6] >> 8}.${h[6] & 255}.${h[7] >> 8}.${h[7] & 255}`;
  return h.map((x) => x.toString(16)).join(':');
}

/** What per-address limits count: an IPv4 address, an IPv6 /64 prefix ("2001:db8:0:0::/64"), or "unknown". */
export function clientKey(address: string): string {
  const canonical = canonicalAddress(address);
  if (canonical === null) return 'unknown';
  if (isIPv4(canonical)) return canonical;
  return `${canonical.split(':').slice(0, 4).join(':')}::/64`;
}

/** A forwarded hop as proxies write it: "1.2.3.4", "1.2.3.4:5678", "[2001:db8::1]:443" or a bare IPv6. */
function hopAddress(hop: string): string | null {
  const text = hop.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(text);
  if (bracketed) return canonicalAddress(bracketed[1]);
  const v4WithPort = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(text);
  return canonicalAddress(v4WithPort ? v4WithPort[1] : text);
}

/**
 * The client's canonical address. The socket's peer, unless that peer is a trusted proxy: then
 * the right-most X-Forwarded-For hop that is not itself a trusted proxy (a hop that is not an
 * address ends the walk, and the hop before it is the client). Without trusted proxies the header
 * is never read, so a client cannot choose the address it is counted under.
 */
export function clientAddress(
  peer: string | undefined,
  forwardedFor: string | string[] | undefined,
  trustedProxies: ReadonlySet<string>,
): string {
  let client = canonicalAddress(peer ?? '') ?? 'unknown';
  if (!trustedProxies.has(client) || forwardedFor === undefined) return client;
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',');
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hopAddress(hops[i]);
    if (hop === null) return client;
    client = hop;
    if (!trustedProxies.has(hop)) return hop;
  }
  return client;
}

/** Open connections per client key, with a cap per key; `total` is over all keys. */
export class AddressCounter {
  private readonly counts = new Map<string, number>();
  total = 0;

  constructor(readonly maxPerAddress: number) {}

  count(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  atLimit(key: string): boolean {
    return this.count(key) >= this.maxPerAddress;
  }

  add(key: string): void {
    this.counts.set(key, this.count(key) + 1);
    this.total++;
  }

  remove(key: string): void {
    const n = this.count(key);
    if (n === 0) return;
    if (n === 1) this.counts.delete(key);
    else this.counts.set(key, n - 1);
    this.total--;
  }
}
