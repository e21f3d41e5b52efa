/**
 * Browser tests' plumbing: a headless Debian Chromium driven by playwright-core (DESIGN.md §6:
 * /usr/bin/chromium, no sandbox, no background traffic, WebGPU on SwiftShader, a fresh profile per
 * launch), and a coordinator run started in this process whose URL comes from its onListening hook.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { runTraining, type RunOptions, type RunResult } from '../../coordinator/run/train.ts';

export const CHROMIUM = process.env.LORAMESH_CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--enable-unsafe-webgpu',
];
/** test/artifacts/ (gitignored): screenshots for people to look at */
export const ARTIFACTS = fileURLToPath(new URL('../artifacts/', import.meta.url));

/**
 * Why browser tests cannot run here, or null. In CI (CI=true) a missing Chromium is a failure,
 * not a skip: .ci/run installs it, so its absence means the setup broke.
 */
export function browserSkipReason(): string | null {
  if (existsSync(CHROMIUM)) return null;
  const why = `${CHROMIUM} is missing (apt-get install chromium, or set LORAMESH_CHROMIUM)`;
  if (process.env.CI) throw new Error(why);
  return why;
}

export interface Browser {
  context: BrowserContext;
  /** console lines and page errors of every page, prefixed with the page's fragment */
  console: string[];
  close(): Promise<void>;
}

export async function launchBrowser(): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'loramesh-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const lines: string[] = [];
  context.on('page', (page) => watchPage(page, lines));
  for (const page of context.pages()) watchPage(page, lines);
  return {
    context,
    console: lines,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

function watchPage(page: Page, lines: string[]): void {
  const tag = () => new URL(page.url() || 'about:blank').hash || page.url();
  page.on('console', (m) => lines.push(`${tag()} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`${tag()} pageerror: ${e.message}`));
}

/** The last `n` console lines, for assertion messages. */
export const tail = (lines: string[], n = 30) => `\n--- browser console (last ${n}) ---\n${lines.slice(-n).join('\n')}`;

export interface BackgroundRun {
  /** http://host:port of the coordinator (pages: /join, /api/status) */
  httpUrl: Promise<string>;
  result: Promise<RunResult>;
  log: string[];
}

/** Starts runTraining without awaiting it; httpUrl resolves once the coordinator listens. */
export function startRun(opts: RunOptions): BackgroundRun {
  const log: string[] = [];
  let resolveUrl!: (url: string) => void;
  let rejectUrl!: (err: Error) => void;
  const httpUrl = new Promise<string>((resolve, reject) => {
    resolveUrl = resolve;
    rejectUrl = reject;
  });
  const result = runTraining({
    ...opts,
    log: (line) => log.push(line),
    onListening: async (urls) => {
      resolveUrl(urls.url);
      await opts.onListening?.(urls);
    },
  });
  // A run that fails (or ends) before it listens fails the URL at once; once resolved, the URL stays.
  result.then(() => rejectUrl(new Error('the run ended before its coordinator listened')), rejectUrl);
  httpUrl.catch(() => {});
  result.catch(() => {}); // awaited by the test; this only keeps a failure from being unhandled first
  return { httpUrl, result, log };
}

export { within } from './wait.ts';

/** Waits until the join page reports `state` on window.loramesh. */
export async function waitForState(page: Page, state: string, timeoutMs = 60_000): Promise<void> {
  await page.waitForFunction((s) => window.loramesh?.status.state === s, state, { timeout: timeoutMs, polling: 100 });
}

export function screenshotPath(name: string): string {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/**
 * A run whose workers never come waits forever and keeps its server open; once this file's tests
 * are over, exit anyway so a failure is reported instead of the test process hanging. A clean
 * file exits on its own before the timer fires (it does not hold the process open).
 */
export function exitIfStuckAfterTests(): void {
  after(() => {
    setTimeout(() => process.exit(process.exitCode ?? 1), 3000).unref();
  });
}
