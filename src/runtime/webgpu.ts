/**
 * The runtime's WebGPU: navigator.gpu where the runtime has one (Deno; Node and Bun have none) and its adapter.
 * Code that wants a GPU adapter asks here, never the globals.
 */
import process from "node:process";

/** What asking for an adapter found: no navigator.gpu, no adapter, or one (fallback: a software adapter). */
export type GpuAdapterProbe = "no-navigator-gpu" | "no-adapter" | { adapter: GPUAdapter; fallback: boolean };

/**
 * Has Deno's WebGPU use Vulkan alone on Linux: it may open OpenGL beside Vulkan, and the two corrupt the heap at
 * exit now and then. Deno reads the variable when navigator.gpu is first touched; other runtimes ignore it.
 */
export function preferVulkanWebGpu(): void {
  if (process.platform === "linux") process.env.DENO_WEBGPU_BACKEND ??= "vulkan";
}

/** A new high-performance adapter from navigator.gpu (a device takes its own: Deno opens one device per adapter). */
export async function requestGpuAdapter(): Promise<GpuAdapterProbe> {
  const gpu = navigatorGpu();
  if (!gpu) return "no-navigator-gpu";
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" }).catch(() => null);
  if (!adapter) return "no-adapter";
  const flags = adapter as { info?: { isFallbackAdapter?: boolean }; isFallbackAdapter?: boolean };
  return { adapter, fallback: flags.info?.isFallbackAdapter ?? flags.isFallbackAdapter ?? false };
}

function navigatorGpu(): GPU | undefined {
  return (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
}

const probes = new WeakMap<GPU, Promise<GpuAdapterProbe>>();

/** The runtime's adapter, asked for once per navigator.gpu (after preferVulkanWebGpu). */
export function gpuAdapter(): Promise<GpuAdapterProbe> {
  preferVulkanWebGpu();
  const gpu = navigatorGpu();
  if (!gpu) return Promise.resolve("no-navigator-gpu");
  let probe = probes.get(gpu);
  if (!probe) probes.set(gpu, probe = requestGpuAdapter());
  return probe;
}
