// node/vulkan.ts on a made-up machine (temp folders named through the environment): the ICD manifests
// the loader would read, in its search order or from VK_DRIVER_FILES; NVIDIA's manifest written only
// when its driver library is present and nothing announces it; and the missing pieces named.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { icdManifests, icdSearchFolders, missingVulkan, probeVulkan, useNvidiaIcd } from '../../node/vulkan.ts';

function machine(t: { after(fn: () => void): void }) {
  const root = mkdtempSync(join(tmpdir(), 'loramesh-vulkan-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = {
    HOME: join(root, 'home'),
    XDG_CONFIG_DIRS: join(root, 'etc-xdg'),
    XDG_DATA_DIRS: join(root, 'share'),
    LD_LIBRARY_PATH: join(root, 'lib'),
  };
  mkdirSync(join(root, 'lib'));
  const manifest = (dir: string, name: string, library: string) => {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, name), JSON.stringify({ file_format_version: '1.0.0', ICD: { library_path: library } }));
    return join(dir, name);
  };
  return { root, env, manifest };
}

test('the manifests are found in the loader’s folders, and VK_DRIVER_FILES replaces the search', (t) => {
  const { root, env, manifest } = machine(t);
  assert.deepEqual(icdSearchFolders(env).slice(0, 2), [
    join(root, 'home', '.config', 'vulkan', 'icd.d'),
    join(root, 'etc-xdg', 'vulkan', 'icd.d'),
  ]);
  const lvp = manifest(join(root, 'share', 'vulkan', 'icd.d'), 'lvp_icd.json', 'libvulkan_lvp.so');
  writeFileSync(join(root, 'share', 'vulkan', 'icd.d', 'broken.json'), '{ not json');
  const found = icdManifests(env).filter((m) => m.file.startsWith(root));
  assert.deepEqual(
    found.map((m) => [m.file, m.library.startsWith('(unreadable') ? 'unreadable' : m.library]),
    [
      [join(root, 'share', 'vulkan', 'icd.d', 'broken.json'), 'unreadable'],
      [lvp, 'libvulkan_lvp.so'],
    ],
  );
  const other = manifest(join(root, 'elsewhere'), 'gpu.json', '/opt/gpu/libdriver.so');
  assert.deepEqual(icdManifests({ ...env, VK_DRIVER_FILES: `${other}:${join(root, 'missing.json')}` }), [
    { file: other, library: '/opt/gpu/libdriver.so' },
    { file: join(root, 'missing.json'), library: '(file missing)' },
  ]);
});

test('NVIDIA’s manifest is written when libGLX_nvidia.so.0 is present and no manifest names NVIDIA', (t) => {
  const { root, env, manifest } = machine(t);
  let probe = probeVulkan(env);
  assert.equal(useNvidiaIcd(probe, env), null, 'no driver library: nothing written');
  writeFileSync(join(root, 'lib', 'libGLX_nvidia.so.0'), '');
  probe = probeVulkan(env);
  assert.equal(probe.nvidiaLibrary, join(root, 'lib', 'libGLX_nvidia.so.0'));
  const written = useNvidiaIcd(probe, env);
  assert.ok(written && existsSync(written));
  assert.equal(env.VK_DRIVER_FILES, written);
  assert.equal(env.VK_ICD_FILENAMES, written);
  assert.equal(JSON.parse(readFileSync(written, 'utf8')).ICD.library_path, 'libGLX_nvidia.so.0');

  // already announced, or the user chose drivers: left alone
  const { env: env2, root: root2, manifest: manifest2 } = machine(t);
  writeFileSync(join(root2, 'lib', 'libGLX_nvidia.so.0'), '');
  manifest2(join(root2, 'share', 'vulkan', 'icd.d'), 'nvidia_icd.json', 'libGLX_nvidia.so.0');
  assert.equal(useNvidiaIcd(probeVulkan(env2), env2), null);
  const chosen = { ...env2, VK_DRIVER_FILES: manifest(join(root, 'x'), 'a.json', 'liba.so') };
  assert.equal(useNvidiaIcd(probeVulkan(chosen), chosen), null);
});

test('what is missing is named: the loader, the manifests, and the container capability NVIDIA needs', () => {
  const none = missingVulkan({
    loader: null,
    bundledLoader: false,
    driverFilesEnv: null,
    icds: [],
    nvidiaLibrary: null,
  });
  assert.equal(none.length, 2);
  assert.match(none[0], /libvulkan\.so\.1 .*apt-get install libvulkan1/);
  assert.match(none[1], /ICD json.*libGLX_nvidia\.so\.0 is also absent.*NVIDIA_DRIVER_CAPABILITIES/);
  const fine = missingVulkan({
    loader: '/lib/libvulkan.so.1',
    bundledLoader: false,
    driverFilesEnv: null,
    icds: [{ file: '/usr/share/vulkan/icd.d/nvidia_icd.json', library: 'libGLX_nvidia.so.0' }],
    nvidiaLibrary: '/lib/libGLX_nvidia.so.0',
  });
  assert.deepEqual(fine, []);
});
