/**
 * What Dawn (WebGPU in Node) needs from a Linux machine, found the way the Vulkan loader finds it, so
 * a missing piece is named instead of showing up as "no adapter":
 *  - the loader, libvulkan.so.1: LD_LIBRARY_PATH, then ld.so's cache, then the usual library folders
 *    (the offline bundle's launchers put their own copy on LD_LIBRARY_PATH when the system has none,
 *    and say so in LORAMESH_BUNDLED_VULKAN);
 *  - the drivers' ICD manifests: VK_DRIVER_FILES or VK_ICD_FILENAMES when set (a colon-separated list
 *    of files or folders), else the loader's search folders (XDG config and data dirs, /etc/vulkan,
 *    /usr/local/share/vulkan, /usr/share/vulkan).
 * One repair is made: NVIDIA's Vulkan driver lives in libGLX_nvidia.so.0 and is announced by an
 * nvidia_icd.json that container images and driver-only installs often lack. When no manifest names
 * NVIDIA but that library is present, `useNvidiaIcd` writes one and points VK_DRIVER_FILES at it
 * (read by the loader when Dawn creates its instance, so setting it in-process works).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export interface IcdManifest {
  file: string;
  /** the driver library the manifest names, or why it could not be read */
  library: string;
}

export interface VulkanProbe {
  /** where libvulkan.so.1 was found, or null */
  loader: string | null;
  /** the loader is the bundle's own copy (the system has none) */
  bundledLoader: boolean;
  /** VK_DRIVER_FILES / VK_ICD_FILENAMES when set */
  driverFilesEnv: string | null;
  icds: IcdManifest[];
  /** libGLX_nvidia.so.0 (NVIDIA's Vulkan driver library), when present */
  nvidiaLibrary: string | null;
}

const LIBRARY_DIRS = [
  '/lib/x86_64-linux-gnu',
  '/usr/lib/x86_64-linux-gnu',
  '/lib/aarch64-linux-gnu',
  '/usr/lib/aarch64-linux-gnu',
  '/usr/lib64',
  '/lib64',
  '/usr/lib',
  '/usr/local/lib',
  '/usr/lib/wsl/lib',
];

let ldCache: string | undefined;
/** `ldconfig -p`, once (empty where there is none, e.g. some minimal containers). */
function ldconfigListing(): string {
  if (ldCache === undefined) {
    const paths = ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig'];
    ldCache = '';
    for (const cmd of paths) {
      const out = spawnSync(cmd, ['-p'], { encoding: 'utf8' });
      if (out.status === 0) {
        ldCache = out.stdout;
        break;
      }
    }
  }
  return ldCache;
}

/** The path a shared library would be loaded from, searched as ld.so does (roughly), or null. */
export function findSharedLibrary(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const dir of (env.LD_LIBRARY_PATH ?? '').split(delimiter).filter((d) => d)) {
    if (existsSync(join(dir, name))) return join(dir, name);
  }
  const cached = ldconfigListing()
    .split('\n')
    .find((l) => l.trim().startsWith(`${name} `));
  if (cached) return cached.split('=>').pop()!.trim();
  for (const dir of LIBRARY_DIRS) if (existsSync(join(dir, name))) return join(dir, name);
  return null;
}

/** The loader's manifest search folders when no VK_DRIVER_FILES / VK_ICD_FILENAMES is set. */
export function icdSearchFolders(env: NodeJS.ProcessEnv = process.env): string[] {
  const home = env.HOME ?? homedir();
  const configDirs = [env.XDG_CONFIG_HOME ?? join(home, '.config'), ...(env.XDG_CONFIG_DIRS ?? '/etc/xdg').split(':')];
  const dataDirs = [
    env.XDG_DATA_HOME ?? join(home, '.local', 'share'),
    ...(env.XDG_DATA_DIRS ?? '/usr/local/share:/usr/share').split(':'),
  ];
  return [
    ...configDirs.map((d) => join(d, 'vulkan', 'icd.d')),
    '/etc/vulkan/icd.d',
    ...dataDirs.map((d) => join(d, 'vulkan', 'icd.d')),
  ].filter((d, i, all) => d && all.indexOf(d) === i);
}

function readManifest(file: string): IcdManifest {
  try {
    const json = JSON.parse(readFileSync(file, 'utf8')) as { ICD?: { library_path?: string } };
    return { file, library: json.ICD?.library_path ?? '(no ICD.library_path)' };
  } catch (err) {
    return { file, library: `(unreadable: ${(err as Error).message.split('\n')[0]})` };
  }
}

const jsonFilesIn = (dir: string) =>
  existsSync(dir) && statSync(dir).isDirectory()
    ? readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .sort()
        .map((f) => join(dir, f))
    : [];

/** The driver manifests the loader would read. */
export function icdManifests(env: NodeJS.ProcessEnv = process.env): IcdManifest[] {
  const listed = env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES;
  const files = listed
    ? listed
        .split(':')
        .filter((p) => p)
        .flatMap((p) => (existsSync(p) && statSync(p).isDirectory() ? jsonFilesIn(p) : [p]))
    : icdSearchFolders(env).flatMap(jsonFilesIn);
  return files.map((f) => (existsSync(f) ? readManifest(f) : { file: f, library: '(file missing)' }));
}

export function probeVulkan(env: NodeJS.ProcessEnv = process.env): VulkanProbe {
  return {
    loader: findSharedLibrary('libvulkan.so.1', env),
    bundledLoader: Boolean(env.LORAMESH_BUNDLED_VULKAN),
    driverFilesEnv: env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES || null,
    icds: icdManifests(env),
    nvidiaLibrary: findSharedLibrary('libGLX_nvidia.so.0', env),
  };
}

const namesNvidia = (m: IcdManifest) => /nvidia/i.test(m.file) || /nvidia/i.test(m.library);

/**
 * When NVIDIA's driver library is here but no manifest announces it (and the user set no
 * VK_DRIVER_FILES / VK_ICD_FILENAMES), writes nvidia_icd.json and sets VK_DRIVER_FILES (and the
 * older VK_ICD_FILENAMES) to it. Returns the manifest written, or null when nothing was done.
 */
export function useNvidiaIcd(probe: VulkanProbe, env: NodeJS.ProcessEnv = process.env): string | null {
  if (probe.driverFilesEnv || !probe.nvidiaLibrary || probe.icds.some(namesNvidia)) return null;
  // one folder per user: another user's copy of it would not be writable
  const dir = join(tmpdir(), `loramesh-vulkan-icd-${process.getuid?.() ?? 'user'}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'nvidia_icd.json');
  // The manifest NVIDIA's installer writes: the loader dlopens library_path (a bare name: ld.so finds it).
  writeFileSync(
    file,
    `${JSON.stringify({ file_format_version: '1.0.1', ICD: { library_path: 'libGLX_nvidia.so.0', api_version: '1.3' } }, null, 2)}\n`,
  );
  env.VK_DRIVER_FILES = file;
  env.VK_ICD_FILENAMES = file;
  return file;
}

/** A few lines saying what was found, for logs and bench headers. */
export function describeVulkan(probe: VulkanProbe): string[] {
  return [
    `Vulkan loader: ${probe.loader ? `${probe.loader}${probe.bundledLoader ? ' (the bundle’s copy: the system has none)' : ''}` : 'libvulkan.so.1 not found'}`,
    `Vulkan drivers (${probe.driverFilesEnv ? `VK_DRIVER_FILES/VK_ICD_FILENAMES=${probe.driverFilesEnv}` : 'ICD search folders'}): ` +
      (probe.icds.length ? probe.icds.map((m) => `${m.file} → ${m.library}`).join('; ') : 'none'),
    `NVIDIA Vulkan driver library: ${probe.nvidiaLibrary ?? 'libGLX_nvidia.so.0 not found'}`,
  ];
}

/** Why no GPU adapter is likely, in words an administrator can act on; empty when nothing is missing. */
export function missingVulkan(probe: VulkanProbe): string[] {
  const missing: string[] = [];
  if (!probe.loader)
    missing.push('the Vulkan loader libvulkan.so.1 (Debian/Ubuntu: apt-get install libvulkan1; RHEL: vulkan-loader)');
  if (!probe.icds.length)
    missing.push(
      'a Vulkan driver manifest (ICD json) in ' +
        (probe.driverFilesEnv
          ? `VK_DRIVER_FILES/VK_ICD_FILENAMES=${probe.driverFilesEnv}`
          : icdSearchFolders().join(', ')) +
        (probe.nvidiaLibrary
          ? ''
          : '; for an NVIDIA GPU the driver library libGLX_nvidia.so.0 is also absent (in a container, start it ' +
            'with NVIDIA_DRIVER_CAPABILITIES including graphics, or all)'),
    );
  const broken = probe.icds.filter((m) => m.library.startsWith('('));
  if (broken.length) missing.push(`usable manifests: ${broken.map((m) => `${m.file} ${m.library}`).join('; ')}`);
  return missing;
}
