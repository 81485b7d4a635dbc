/**
 * The runtime's WebGPU: navigator.gpu where the runtime has one (Deno; Node and Bun have none) and its adapter.
 * Code that wants a GPU adapter asks here, never the globals.
 */
import { readdirSync } from "node:fs";
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

/**
 * Whether this Linux machine has a GPU device node (a DRM render node, an NVIDIA device, WSL's /dev/dxg); null
 * elsewhere, where only asking for an adapter tells. Without one, a WebGPU adapter can only be a software one, and
 * asking for it has the Vulkan loader print warnings to stderr (breaking --log-format json) for nothing.
 */
export function gpuDevicePresent(dev = "/dev", platform: string = process.platform): boolean | null {
  if (platform !== "linux") return null;
  const list = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  return list(`${dev}/dri`).some((name) => name.startsWith("renderD")) ||
    list(dev).some((name) => /^nvidia\d+$/.test(name) || name === "dxg");
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
