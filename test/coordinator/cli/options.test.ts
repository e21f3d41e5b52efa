// CLI flag parsers: --port takes 0 (a free port) to 65535 and nothing else; --host takes an IPv4 or
// IPv6 address or a host name, and an all-numeric name only when it is a valid IPv4 address. A refused
// value is commander's InvalidArgumentError naming the value and what was expected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from 'commander';
import { host, outlierFactor, port } from '../../../coordinator/cli/options.ts';

function refuses(parse: (value: string) => unknown, value: string, expected: RegExp): void {
  assert.throws(
    () => parse(value),
    (err: unknown) => {
      assert.ok(err instanceof InvalidArgumentError, `${JSON.stringify(value)}: got ${err}`);
      assert.match(err.message, expected);
      assert.ok(err.message.endsWith(`got ${JSON.stringify(value)}`), `names the value: ${err.message}`);
      return true;
    },
  );
}

test('port: 0 to 65535 as numbers', () => {
  for (const [value, expected] of [
    ['0', 0],
    ['1', 1],
    ['8080', 8080],
    ['65535', 65535],
  ] as const) {
    assert.equal(port(value), expected, value);
  }
});

test('port: out of range, negative, fractional, empty or not a number is refused', () => {
  for (const value of ['65536', '-1', '1.5', '', ' ', 'http', '1e3', '0x10', '99999999999']) {
    refuses(port, value, /^expected a port from 0 to 65535 \(0: a free one\), got /);
  }
});

test('host: IPv4, IPv6, localhost and dotted host names', () => {
  const accepted = [
    '127.0.0.1',
    '0.0.0.0',
    '::1',
    '::',
    'fe80::1',
    'localhost',
    'my-host.example',
    'a.b-c.example.org',
    'host1',
  ];
  for (const value of accepted) {
    assert.equal(host(value), value);
  }
});

test('host: invalid IPv4, spaces, empty and malformed names are refused', () => {
  const refused = [
    '256.1.1.1',
    '1.2.3',
    '1.2.3.4.5',
    'a b',
    '',
    ' ',
    '-leading.example',
    'trailing-.example',
    'dots..example',
    'under_score',
    'http://x',
  ];
  for (const value of refused) {
    refuses(host, value, /^expected an IP address or a host name, got /);
  }
});

test('outlierFactor: 0 (off) or ≥ 1', () => {
  assert.equal(outlierFactor('0'), 0);
  assert.equal(outlierFactor('1'), 1);
  assert.equal(outlierFactor('10'), 10);
  for (const bad of ['0.5', '-1', 'x', '']) assert.throws(() => outlierFactor(bad), InvalidArgumentError, bad);
});
