// README.md shows the demo's report as `npm start` prints it: one block of lines that are the same on
// every run (held-out accuracy before and after, final loss, samples), then one block whose numbers,
// run folder and time are an example. The demo runs in-process here: the same adapter as the
// 2-worker mesh, bit for bit, so the same report except the traffic, and it is faster on 2 cores.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runDemo } from '../../../coordinator/commands/demo.ts';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

/** The plain (untagged) fenced blocks of README's "## Two commands" section: [exact lines, example lines]. */
function readmeDemoBlocks(): [string[], string[]] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Two commands\n'));
  assert.ok(section, 'README.md has no "## Two commands" section');
  const blocks: string[][] = [];
  let open: { lines: string[]; tagged: boolean } | null = null;
  for (const line of section.split('\n')) {
    if (!line.startsWith('```')) open?.lines.push(line);
    else if (open) {
      if (!open.tagged) blocks.push(open.lines);
      open = null;
    } else open = { lines: [], tagged: line.length > 3 };
  }
  assert.equal(blocks.length, 2, `"## Two commands" should have 2 plain blocks (exact, example), has ${blocks.length}`);
  return [blocks[0], blocks[1]];
}

/** A line's form: each folder before a file name and each number replaced (Infinity too: in-process, 0 bytes move). */
const form = (line: string) => line.replace(/\S+\/(?=\S+\.\w+)/g, '<dir>/').replace(/\d+(\.\d+)?|Infinity/g, '#');

test('README shows the demo report as npm start prints it', async () => {
  const [exact, example] = readmeDemoBlocks();
  process.chdir(ROOT); // npm start runs in the package root, and the report shows paths from there
  const out = mkdtempSync(join(tmpdir(), 'loramesh-demo-'));
  const printed: string[] = [];
  try {
    // wasm: the demo's default backend, what npm start runs
    await runDemo({ localWorkers: 2, out, backend: 'wasm', inProcess: true, print: (line) => printed.push(line) });
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
  const counts = `README's demo blocks: ${exact.length} + ${example.length} lines; the demo prints ${printed.length}`;
  assert.equal(exact.length + example.length, printed.length, `${counts}:\n${printed.join('\n')}`);
  assert.deepEqual(exact, printed.slice(0, exact.length));
  assert.deepEqual(example.map(form), printed.slice(exact.length).map(form));
});
