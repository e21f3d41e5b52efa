// `npm run bundle -- [--platform linux-x64]`: one offline archive for a machine with no network, no
// Node and no npm (a GPU cluster node, say): everything a worker and the GPU compute bench need.
//
//   loramesh-<version>-<platform>/
//     loramesh-worker           join a run:  ./loramesh-worker ws://HOST:PORT/ws --token …
//     loramesh-bench-gpu        the GPU bench rows: ./loramesh-bench-gpu OUTDIR (bench/gpu-bench.ts)
//     loramesh                  the whole CLI (merge, logits, generate, train, …)
//     node/bin/node             the Node binary for the platform
//     app/cli.mjs, app/bench-gpu.mjs   the project and its JavaScript dependencies, built by esbuild
//                               with the npm package's options (scripts/build-dist.mjs) but with the
//                               packages inside; tfjs-backend-wasm's .wasm files beside them
//     node_modules/webgpu/      Dawn for this platform only; node_modules/@tensorflow/tfjs-backend-wasm/
//                               the threaded wasm build's files (node/wasm-threads.ts loads them by path)
//     build/tfjs-gradients.cjs, models/demo-base/, bench/torch_compute.py, scripts/reference/
//     lib/vulkan/libvulkan.so.1 a Vulkan loader, put on LD_LIBRARY_PATH only when the system has none
//     lib/launch.sh             what the launchers share: glibc check, Vulkan loader choice
//     BUNDLE.json, README.txt, THIRD_PARTY_LICENSES.txt
// compressed with xz to build/bundle/loramesh-<version>-<platform>.tar.xz (refused above 52 MiB: it travels
// beside a checkout under a 64 MiB limit), with a .sha256 beside it.
//
// Options:
//   --platform linux-x64|linux-arm64   (default: this machine's)
//   --node PATH            the Node binary to ship (default: the one running this script; required when
//                          --platform is not this machine's: take it from nodejs.org's tarball)
//   --vulkan-loader PATH|none   libvulkan.so.1 to ship (default: this machine's, found by ldconfig)
//   --out DIR              (default build/bundle)
//   --dir-only             write the folder only, no archive (the tests use this)
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  openSync,
  readSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { checkRootRelativePaths, cliBuildOptions, ROOT } from './build-dist.mjs';

export const MAX_ARCHIVE_BYTES = 52 * 2 ** 20;
const PLATFORMS = {
  'linux-x64': { elfMachine: 62, triple: 'x86_64-linux-gnu' },
  'linux-arm64': { elfMachine: 183, triple: 'aarch64-linux-gnu' },
};
const hostPlatform = `${process.platform}-${process.arch}`;

/** Native and optional packages stay out of the JavaScript: shipped as files (webgpu) or left out. */
const EXTERNAL = [
  'webgpu', // a native addon: node_modules/webgpu with this platform's Dawn
  '@resvg/resvg-js', // PNG figures of `analyze`: a native addon, not needed by workers (SVG still written)
  'node-sqlite3-wasm', // the pool's registry (loads its .wasm beside itself): the bundle is no pool host
  '@tensorflow/tfjs-node', // optional, never in the bundle (needs libtensorflow)
  '@tensorflow/tfjs-node-gpu',
  'bufferutil', // optional speedups of ws
  'utf-8-validate',
];

/** CommonJS code inside an ESM bundle still finds require, __filename and __dirname (tfjs-backend-wasm's .wasm lookup uses __dirname). */
const BANNER = [
  "import { createRequire as __loramesh_createRequire } from 'node:module';",
  "import { fileURLToPath as __loramesh_fileURLToPath } from 'node:url';",
  "import { dirname as __loramesh_dirname } from 'node:path';",
  'const require = __loramesh_createRequire(import.meta.url);',
  'const __filename = __loramesh_fileURLToPath(import.meta.url);',
  'const __dirname = __loramesh_dirname(__filename);',
].join('\n');

const fail = (message) => {
  console.error(`bundle: ${message}`);
  process.exit(2);
};

/** The highest GLIBC_2.N / GLIBCXX_3.4.N a binary asks for: the oldest system it loads on. */
export function requiredVersions(path) {
  const text = readFileSync(path).toString('latin1');
  const highest = (re) => {
    let best = null;
    for (const m of text.matchAll(re)) {
      const v = m[1].split('.').map(Number);
      const k = v.findIndex((x, i) => x !== (best?.[i] ?? -1));
      if (!best || (k >= 0 && v[k] > (best[k] ?? -1))) best = v;
    }
    return best && best.join('.');
  };
  return { glibc: highest(/GLIBC_(2\.\d+)/g), glibcxx: highest(/GLIBCXX_(3\.4\.\d+)/g) };
}

/** The ELF header's e_machine (62 x86-64, 183 AArch64), or null for a file that is not ELF. */
function elfMachine(path) {
  const head = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  return head.readUInt32BE(0) === 0x7f454c46 ? head.readUInt16LE(18) : null;
}

function checkBinary(path, platform, what) {
  if (!existsSync(path)) fail(`${what} ${path} does not exist`);
  const machine = elfMachine(path);
  if (machine !== PLATFORMS[platform].elfMachine)
    fail(
      `${what} ${path} is not a ${platform} ELF binary (e_machine ${machine ?? 'not ELF'}, expected ${PLATFORMS[platform].elfMachine})`,
    );
}

function findHostVulkanLoader() {
  const listing = spawnSync('ldconfig', ['-p'], { encoding: 'utf8' }).stdout ?? '';
  const line = listing.split('\n').find((l) => l.trim().startsWith('libvulkan.so.1 '));
  return line ? realpathSync(line.split('=>').pop().trim()) : null;
}

const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  );
}

function copyInto(stage, from, to = relative(ROOT, from)) {
  const dest = join(stage, to);
  mkdirSync(dirname(dest), { recursive: true });
  cpSync(from, dest, { recursive: true, dereference: true });
  return dest;
}

function gitCommit() {
  const out = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  if (out.status !== 0) return 'unknown';
  const dirty = spawnSync('git', ['status', '--porcelain'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
  return `${out.stdout.trim()}${dirty ? '+changes' : ''}`;
}

/** The launchers' shared part: the glibc check and the Vulkan loader choice. */
function launchScript(minGlibc) {
  return `# Sourced by the bundle's launchers (they set $here to the bundle's folder). POSIX sh.
# 1. Node here needs glibc ${minGlibc} or newer: say so plainly instead of a loader error.
# 2. Dawn (WebGPU) dlopens libvulkan.so.1: the system's when it has one (it matches the system's
#    drivers), else the bundle's copy in lib/vulkan (LORAMESH_BUNDLED_VULKAN tells the worker).
need_glibc=${minGlibc}
have_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p')
if [ -n "$have_glibc" ]; then
  older=$(printf '%s\\n%s\\n' "$have_glibc" "$need_glibc" | sort -t. -k1,1n -k2,2n | head -n1)
  if [ "$older" != "$need_glibc" ]; then
    echo "loramesh bundle: this system has glibc $have_glibc; the bundled Node needs $need_glibc or newer" >&2
    exit 1
  fi
fi
has_vulkan_loader() {
  if { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libvulkan\\.so\\.1 '; then return 0; fi
  for d in $(printf '%s' "\${LD_LIBRARY_PATH:-}" | tr ':' ' ') /lib/${'$'}{triple} /usr/lib/${'$'}{triple} /usr/lib64 /lib64 /usr/lib; do
    [ -e "$d/libvulkan.so.1" ] && return 0
  done
  return 1
}
if [ -e "$here/lib/vulkan/libvulkan.so.1" ] && ! has_vulkan_loader; then
  LD_LIBRARY_PATH="$here/lib/vulkan\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  LORAMESH_BUNDLED_VULKAN=1
  export LD_LIBRARY_PATH LORAMESH_BUNDLED_VULKAN
fi
`;
}

function launcher(what, args) {
  return `#!/bin/sh
# ${what} (this bundle's README.txt)
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
triple=$(cat "$here/lib/triple")
. "$here/lib/launch.sh"
exec "$here/node/bin/node" ${args} "$@"
`;
}

const README = (info) => `loramesh ${info.version} — offline bundle for ${info.platform}
(built ${info.built} from ${info.commit}; Node ${info.node})

Needs: Linux ${info.platform}, glibc ${info.requires.node.glibc}+ (Node); WebGPU also needs glibc
${info.requires.dawn.glibc}+ and libstdc++ with GLIBCXX_${info.requires.dawn.glibcxx} (Dawn), and the GPU's Vulkan driver
(found through /etc/vulkan/icd.d, /usr/share/vulkan/icd.d, … or VK_DRIVER_FILES=/path/nvidia_icd.json;
for NVIDIA, when libGLX_nvidia.so.0 is present but no manifest is, one is written). No network, Node,
npm or Python is needed to run a worker.

  ./loramesh-worker ws://HOST:PORT/ws --token TOKEN [--backend wasm|webgpu|cpu] [--name NAME]
        joins a run (the coordinator prints the URL and token). Base weights are downloaded once
        from the coordinator, checked against their sha256 and cached (--cache-dir, default
        ~/.cache/loramesh).
  ./loramesh-bench-gpu OUTDIR [--models demo,gpt2-small,qwen2.5-0.5b] [--formats f32,nf4]
        the LoRA step on WebGPU next to this machine's PyTorch (CUDA when present; --python PATH
        picks the python), written to OUTDIR/compute.device.{json,md}. A software device
        (SwiftShader, lavapipe) is reported as such on every row.
  ./loramesh --help
        the whole CLI (merge, logits, generate, train, …).

The Vulkan loader: the system's libvulkan.so.1 when there is one, else lib/vulkan/ (bundled).
Contents and checksums: BUNDLE.json. Licenses: THIRD_PARTY_LICENSES.txt.
`;

/** License texts of the packages inside the JavaScript and of the shipped binaries. */
function licenses(inputs, extra) {
  const packages = new Set();
  for (const input of inputs) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (m) packages.add(m[1]);
  }
  const parts = [];
  for (const pkg of [...packages, 'webgpu', '@tensorflow/tfjs-backend-wasm'].sort()) {
    const dir = join(ROOT, 'node_modules', pkg);
    const file = existsSync(dir) && readdirSync(dir).find((f) => /^(license|licence|copying)(\.md|\.txt)?$/i.test(f));
    const version = existsSync(join(dir, 'package.json'))
      ? JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version
      : '?';
    const license = existsSync(join(dir, 'package.json'))
      ? JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).license
      : '?';
    parts.push(
      `== ${pkg} ${version} (${license}) ==\n${file ? readFileSync(join(dir, file), 'utf8').trim() : '(no license file in the package)'}`,
    );
  }
  for (const [name, path] of extra)
    parts.push(
      `== ${name} ==\n${existsSync(path) ? readFileSync(path, 'utf8').trim() : '(license file not found on the build machine)'}`,
    );
  return `${parts.join('\n\n')}\n`;
}

export async function buildBundle(opts) {
  const platform = opts.platform ?? hostPlatform;
  if (!PLATFORMS[platform])
    fail(
      `--platform ${JSON.stringify(platform)} is not supported; expected one of ${Object.keys(PLATFORMS).join(', ')}`,
    );
  const cross = platform !== hostPlatform;
  const nodeBinary =
    opts.node ??
    (cross
      ? fail(
          `--platform ${platform} is not this machine's (${hostPlatform}): give --node PATH, the Node binary for ${platform}`,
        )
      : process.execPath);
  checkBinary(nodeBinary, platform, '--node');
  const dawnDir = join(ROOT, 'node_modules', 'webgpu', 'dist', platform);
  if (!existsSync(join(dawnDir, 'dawn.node')))
    fail(`the webgpu package has no Dawn for ${platform} (${dawnDir}); run npm ci`);
  let vulkan =
    opts.vulkanLoader ??
    (cross
      ? fail(
          `--platform ${platform}: give --vulkan-loader PATH (libvulkan.so.1 for ${platform}) or --vulkan-loader none`,
        )
      : findHostVulkanLoader());
  if (vulkan === 'none') vulkan = null;
  else if (!vulkan)
    fail('no libvulkan.so.1 on this machine to ship (apt-get install libvulkan1), or pass --vulkan-loader none');
  else checkBinary(vulkan, platform, '--vulkan-loader');

  await import('./build-gradients.mjs');
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const name = `loramesh-${pkg.version}-${platform}`;
  const outDir = opts.out ?? join(ROOT, 'build', 'bundle');
  const stage = join(outDir, name);
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  const t0 = performance.now();

  // The project's JavaScript: the npm package's esbuild options, packages inside.
  const result = await build(
    cliBuildOptions({
      entryPoints: { cli: 'coordinator/cli.ts', 'bench-gpu': 'bench/gpu-bench.ts' },
      outdir: join(stage, 'app'),
      outExtension: { '.js': '.mjs' },
      packages: undefined,
      external: EXTERNAL,
      banner: { js: BANNER },
    }),
  );
  checkRootRelativePaths(result.metafile);
  const inputs = Object.keys(result.metafile.inputs);

  // tfjs-backend-wasm: its .wasm files where its code looks (__dirname: app/), and wasm-out/ where
  // node/wasm-threads.ts (the threaded build) and the coordinator's server (browser workers) find it
  // from the package's package.json; the .d.ts files stay out.
  const wasmPkg = join(ROOT, 'node_modules', '@tensorflow', 'tfjs-backend-wasm');
  for (const f of readdirSync(join(wasmPkg, 'dist')).filter((f) => f.endsWith('.wasm')))
    copyFileSync(join(wasmPkg, 'dist', f), join(stage, 'app', f));
  copyInto(stage, join(wasmPkg, 'package.json'));
  for (const f of readdirSync(join(wasmPkg, 'wasm-out')).filter((f) => !f.endsWith('.d.ts')))
    copyInto(stage, join(wasmPkg, 'wasm-out', f));
  // webgpu: its loader and only this platform's Dawn.
  for (const f of ['package.json', 'index.js', 'LICENSE.md']) copyInto(stage, join(ROOT, 'node_modules', 'webgpu', f));
  copyInto(stage, join(dawnDir, 'dawn.node'));
  copyInto(stage, join(ROOT, 'build', 'tfjs-gradients.cjs'));
  // the pages a coordinator run from the bundle serves (the join page, the dashboard); no source maps
  await import('./build-web.mjs');
  for (const f of readdirSync(join(ROOT, 'build', 'web')).filter((f) => !f.endsWith('.map')))
    copyInto(stage, join(ROOT, 'build', 'web', f));
  copyInto(stage, join(ROOT, 'models', 'demo-base'));
  copyInto(stage, join(ROOT, 'bench', 'torch_compute.py'));
  copyInto(stage, join(ROOT, 'scripts', 'reference', 'llama_torch.py'));
  copyInto(stage, join(ROOT, 'package.json'));
  copyInto(stage, nodeBinary, join('node', 'bin', 'node'));
  if (vulkan) copyInto(stage, vulkan, join('lib', 'vulkan', 'libvulkan.so.1'));

  const requires = {
    node: requiredVersions(nodeBinary),
    dawn: requiredVersions(join(dawnDir, 'dawn.node')),
    vulkanLoader: vulkan ? requiredVersions(vulkan) : null,
  };
  mkdirSync(join(stage, 'lib'), { recursive: true });
  writeFileSync(join(stage, 'lib', 'triple'), `${PLATFORMS[platform].triple}\n`);
  writeFileSync(join(stage, 'lib', 'launch.sh'), launchScript(requires.node.glibc));
  const launchers = {
    'loramesh-worker': launcher('loramesh-worker: join a run as a worker', '"$here/app/cli.mjs" worker'),
    'loramesh-bench-gpu': launcher(
      'loramesh-bench-gpu: the LoRA step on WebGPU next to PyTorch',
      '"$here/app/bench-gpu.mjs"',
    ),
    loramesh: launcher('loramesh: the whole CLI', '"$here/app/cli.mjs"'),
  };
  for (const [file, text] of Object.entries(launchers)) {
    writeFileSync(join(stage, file), text);
    chmodSync(join(stage, file), 0o755);
  }
  chmodSync(join(stage, 'node', 'bin', 'node'), 0o755);
  writeFileSync(
    join(stage, 'THIRD_PARTY_LICENSES.txt'),
    licenses(inputs, [
      [`Node.js ${process.version}`, '/usr/share/doc/nodejs/LICENSE'],
      ['Vulkan loader (libvulkan.so.1)', '/usr/share/doc/libvulkan1/copyright'],
    ]),
  );
  const info = {
    name,
    version: pkg.version,
    platform,
    commit: gitCommit(),
    built: new Date().toISOString(),
    node: cross ? `(from ${nodeBinary})` : process.version,
    requires,
    vulkanLoader: vulkan ? basename(vulkan) : null,
  };
  writeFileSync(join(stage, 'README.txt'), README(info));
  const files = walk(stage)
    .map((f) => relative(stage, f))
    .sort()
    .map((f) => ({ path: f, bytes: statSync(join(stage, f)).size, sha256: sha256(join(stage, f)) }));
  writeFileSync(join(stage, 'BUNDLE.json'), `${JSON.stringify({ ...info, files }, null, 2)}\n`);
  const unpacked = files.reduce((n, f) => n + f.bytes, 0);
  console.log(
    `${relative(process.cwd(), stage) || stage}: ${files.length} files, ${(unpacked / 2 ** 20).toFixed(1)} MiB unpacked (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
  );
  console.log(
    `  needs glibc ${requires.node.glibc}+ (Node); WebGPU: glibc ${requires.dawn.glibc}+, GLIBCXX_${requires.dawn.glibcxx} (Dawn)`,
  );
  if (opts.dirOnly) return { stage, files, info };

  const archive = join(outDir, `${name}.tar.xz`);
  const t1 = performance.now();
  // -9e: the Node binary is most of the bytes; --sort/--owner/--mtime keep the archive's listing stable.
  const tar = spawnSync(
    'sh',
    [
      '-c',
      `tar --sort=name --owner=0 --group=0 --numeric-owner -C "$1" -cf - "$2" | xz -T0 -9e > "$3"`,
      'sh',
      outDir,
      name,
      archive,
    ],
    { stdio: 'inherit' },
  );
  if (tar.status !== 0) fail(`tar | xz failed (exit ${tar.status}); are tar and xz installed?`);
  const bytes = statSync(archive).size;
  const digest = sha256(archive);
  writeFileSync(`${archive}.sha256`, `${digest}  ${basename(archive)}\n`);
  console.log(
    `${relative(process.cwd(), archive)}: ${(bytes / 2 ** 20).toFixed(2)} MiB (limit ${MAX_ARCHIVE_BYTES / 2 ** 20} MiB), sha256 ${digest} (${((performance.now() - t1) / 1000).toFixed(0)} s)`,
  );
  if (bytes > MAX_ARCHIVE_BYTES) fail(`${archive} is ${bytes} bytes, over the ${MAX_ARCHIVE_BYTES}-byte limit`);
  return { stage, files, info, archive, bytes };
}

if (process.argv[1] && import.meta.url === new URL(`file://${realpathSync(process.argv[1])}`).href) {
  const { values } = parseArgs({
    options: {
      platform: { type: 'string' },
      node: { type: 'string' },
      'vulkan-loader': { type: 'string' },
      out: { type: 'string' },
      'dir-only': { type: 'boolean', default: false },
    },
    strict: true,
  });
  await buildBundle({
    platform: values.platform,
    node: values.node,
    vulkanLoader: values['vulkan-loader'],
    out: values.out,
    dirOnly: values['dir-only'],
  });
}
