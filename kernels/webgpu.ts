/**
 * What the WebGPU kernels share: WebGPU's flag values, the WGSL sources shipped beside this module, their compute
 * pipelines (compiled once per device) and the device they run on.
 */
import { requestGpuAdapter } from "../src/runtime/webgpu.ts";

// WebGPU's flag values, spelled out: the globals exist only where navigator.gpu does.
/** GPUBufferUsage flags. */
export const MAP_READ = 0x01;
export const COPY_SRC = 0x04;
export const COPY_DST = 0x08;
export const UNIFORM = 0x40;
export const STORAGE = 0x80;
/** GPUMapMode.READ. */
export const MAP_MODE_READ = 0x01;

/** The text of a WGSL kernel shipped next to this module (kernels/ in the package, also from a build in dist/). */
export async function readKernelSource(file: string): Promise<string> {
  const candidates = [new URL(`./${file}`, import.meta.url), new URL(`../../kernels/${file}`, import.meta.url)];
  for (const url of candidates) {
    try {
      if (url.protocol === "file:") {
        const fs = await import("node:fs/promises");
        return await fs.readFile(url, "utf8");
      }
      const response = await fetch(url);
      if (response.ok) return await response.text();
    } catch {
      // Try the next place.
    }
  }
  throw new Error(`WGSL kernel ${file} not found next to ${import.meta.url}`);
}

const pipelines = new WeakMap<GPUDevice, Map<string, Promise<GPUComputePipeline>>>();

/**
 * The compute pipeline of `main` in a WGSL file (or in several, one after another: shared declarations first) on
 * `device`, compiled once per device; compile errors throw.
 */
export function kernelPipeline(device: GPUDevice, files: string | readonly string[], label: string): Promise<GPUComputePipeline> {
  const parts = typeof files === "string" ? [files] : files;
  const key = parts.join(" + ");
  let byFile = pipelines.get(device);
  if (!byFile) pipelines.set(device, byFile = new Map());
  let pipeline = byFile.get(key);
  if (!pipeline) {
    pipeline = compile(device, parts, key, label);
    byFile.set(key, pipeline);
    pipeline.catch(() => byFile.delete(key));
  }
  return pipeline;
}

async function compile(device: GPUDevice, files: readonly string[], name: string, label: string): Promise<GPUComputePipeline> {
  const code = (await Promise.all(files.map(readKernelSource))).join("\n");
  const module = device.createShaderModule({ label, code });
  const info = await module.getCompilationInfo?.();
  const errors = (info?.messages ?? []).filter((m) => m.type === "error");
  if (errors.length > 0) {
    throw new Error(`${name}: ${errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ")}`);
  }
  return await device.createComputePipelineAsync({ label, layout: "auto", compute: { module, entryPoint: "main" } });
}

/** The runtime's WebGPU device (with its adapter's largest buffer limits), or why there is none. */
export async function openGpuDevice(): Promise<{ device: GPUDevice } | { reason: string }> {
  const gpu = await requestGpuAdapter();
  if (gpu === "no-navigator-gpu") return { reason: "this runtime has no navigator.gpu" };
  if (gpu === "no-adapter") return { reason: "navigator.gpu found no adapter" };
  const { maxStorageBufferBindingSize, maxBufferSize } = gpu.adapter.limits;
  return { device: await gpu.adapter.requestDevice({ requiredLimits: { maxStorageBufferBindingSize, maxBufferSize } }) };
}
