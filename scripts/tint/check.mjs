// Compiles kiln's WGSL with Dawn's Tint, Chrome's WGSL compiler, through the `webgpu` package
// (Dawn for Node.js): a shader module for every file and a compute pipeline for every kernel of
// the manifest that `tests/tint.rs` writes (every entry point, with the override constants kiln's
// launchers pass).
//
//   node scripts/tint/check.mjs MANIFEST.json
//
// Prints one JSON line per finding and a last JSON line with the counts; exits 1 on any Tint or
// validation error. A pipeline the device refuses for one of its limits (workgroup memory,
// invocations, storage buffers) or a missing feature is a limit refusal, reported apart: kiln's
// own limit checks refuse those before a pipeline is built. Such a refusal is an error only where
// kiln's measure of the kernel (its footprint, from naga) says it fits.
//
// Dawn takes the system's first adapter (lavapipe on a machine without a GPU); where there is
// none it falls back to Dawn's null backend, which still runs Tint's front end and validation.
import { readFileSync } from 'node:fs';
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);

const manifest = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// The GPU objects are kept for the whole run: Dawn's instance must outlive its devices.
const instances = [];
async function adapter() {
  for (const options of [[], ['backend=null']]) {
    const gpu = create(options);
    instances.push(gpu);
    const a = await gpu.requestAdapter();
    if (a) return a;
  }
  throw new Error('Dawn found no adapter, not even its null backend');
}

const a = await adapter();
const requiredFeatures = ['shader-f16', 'subgroups'].filter((f) => a.features.has(f));
const requiredLimits = {};
for (const name of [
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxStorageBuffersPerShaderStage',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxUniformBufferBindingSize',
  'maxComputeWorkgroupsPerDimension',
]) {
  requiredLimits[name] = a.limits[name];
}
const device = await a.requestDevice({ requiredFeatures, requiredLimits });
const limits = device.limits;
const features = new Set(device.features);
const adapterName = `${a.info.vendor} ${a.info.architecture} ${a.info.description}`.trim();

// Why kiln's own checks would refuse this kernel on this device, or null where it fits.
function overLimit(f) {
  const [x, y, z] = f.workgroup_size;
  if (f.f16 && !features.has('shader-f16')) return 'feature shader-f16';
  if (f.subgroups && !features.has('subgroups')) return 'feature subgroups';
  if (f.workgroup_bytes > limits.maxComputeWorkgroupStorageSize)
    return `maxComputeWorkgroupStorageSize: ${f.workgroup_bytes} > ${limits.maxComputeWorkgroupStorageSize}`;
  if (x * y * z > limits.maxComputeInvocationsPerWorkgroup)
    return `maxComputeInvocationsPerWorkgroup: ${x * y * z} > ${limits.maxComputeInvocationsPerWorkgroup}`;
  if (x > limits.maxComputeWorkgroupSizeX) return `maxComputeWorkgroupSizeX: ${x}`;
  if (y > limits.maxComputeWorkgroupSizeY) return `maxComputeWorkgroupSizeY: ${y}`;
  if (z > limits.maxComputeWorkgroupSizeZ) return `maxComputeWorkgroupSizeZ: ${z}`;
  if (f.storage_buffers > limits.maxStorageBuffersPerShaderStage)
    return `maxStorageBuffersPerShaderStage: ${f.storage_buffers} > ${limits.maxStorageBuffersPerShaderStage}`;
  return null;
}

async function scoped(make) {
  device.pushErrorScope('validation');
  device.pushErrorScope('internal');
  const value = make();
  const internal = await device.popErrorScope();
  const validation = await device.popErrorScope();
  return { value, error: validation ?? internal };
}

const out = (o) => console.log(JSON.stringify(o));
let errors = 0;
const modules = new Map();
const counts = { files: 0, files_accepted: 0, wgpu_only: [], pipelines: 0, pipelines_accepted: 0, limit_refusals: 0 };

for (const s of manifest.shaders) {
  if (s.wgpu_only) {
    counts.wgpu_only.push(s.name);
    continue;
  }
  counts.files += 1;
  if (process.env.KILN_TINT_TRACE) console.error(`module ${s.name}`);
  const { value: module, error } = await scoped(() =>
    device.createShaderModule({ label: s.name, code: s.wgsl }),
  );
  const info = await module.getCompilationInfo();
  const messages = info.messages.filter((m) => m.type === 'error');
  if (messages.length || error) {
    errors += 1;
    out({
      kind: 'module_error',
      shader: s.name,
      messages: messages.map((m) => `${s.name}.wgsl:${m.lineNum}:${m.linePos} ${m.message}`),
      error: error?.message,
    });
    continue;
  }
  for (const m of info.messages) out({ kind: 'module_warning', shader: s.name, message: `${m.lineNum}:${m.linePos} ${m.message}` });
  counts.files_accepted += 1;
  modules.set(s.name, module);
}

for (const p of manifest.pipelines) {
  const module = modules.get(p.shader);
  if (!module) continue; // wgpu-only, or its module already failed
  counts.pipelines += 1;
  const expected = overLimit(p.footprint);
  const constants = Object.fromEntries(p.constants);
  const label = `${p.shader}::${p.entry}${p.constants.length ? JSON.stringify(constants) : ''}`;
  if (process.env.KILN_TINT_TRACE) console.error(`pipeline ${label}`);
  const { error } = await scoped(() =>
    device.createComputePipeline({
      label,
      layout: 'auto',
      compute: { module, entryPoint: p.entry, constants },
    }),
  );
  if (!error) {
    counts.pipelines_accepted += 1;
    continue;
  }
  if (expected) {
    counts.limit_refusals += 1;
    out({ kind: 'limit_refusal', pipeline: label, limit: expected, message: error.message.split('\n')[0] });
    continue;
  }
  errors += 1;
  out({ kind: 'pipeline_error', pipeline: label, message: error.message });
}

out({ kind: 'summary', adapter: adapterName, features: requiredFeatures, ...counts, errors });
device.destroy();
process.exit(errors ? 1 : 0);
