/**
 * CPU time of the calling thread alone, in nanoseconds (Linux: /proc/thread-self/schedstat's first field, the
 * scheduler's on-CPU time); NaN where the kernel does not expose it. process.cpuUsage() counts every thread of
 * the process, so the main thread's share needs this.
 */
import { readFileSync } from 'node:fs';

export function threadCpuNs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
  } catch {
    return NaN;
  }
}
