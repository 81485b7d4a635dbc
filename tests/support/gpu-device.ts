/** What the WebGPU kernel tests share: the device (or why there is none), and moving words to and from it. */
import { COPY_DST, COPY_SRC, MAP_READ, openGpuDevice, STORAGE } from "../../kernels/webgpu.ts";
import { preferVulkanWebGpu } from "../../src/runtime/webgpu.ts";

export { COPY_DST, COPY_SRC, MAP_READ, STORAGE };

/** A test file's WebGPU device; `noGpu` is the skip reason where there is none (Node and Bun: no navigator.gpu). */
export async function testDevice(): Promise<{ device: GPUDevice | null; noGpu: string | false; release(): Promise<void> }> {
  // Deno's WebGPU opens OpenGL (EGL) next to Vulkan; on Linux with Mesa, that stack's teardown sometimes corrupts
  // the heap as the process exits (about 1 run in 20 here, after every test passed). Vulkan alone does not.
  preferVulkanWebGpu();
  const gpu = await openGpuDevice();
  const device = "device" in gpu ? gpu.device : null;
  return {
    device,
    noGpu: device === null && `no WebGPU adapter: ${"reason" in gpu ? gpu.reason : ""}`,
    async release() {
      device?.destroy();
      await device?.lost;
    },
  };
}

/** A STORAGE buffer holding `data` (at least 16 bytes). */
export function upload(device: GPUDevice, data: Float32Array | Uint32Array): GPUBuffer {
  const buffer = device.createBuffer({ size: Math.max(16, data.byteLength), usage: STORAGE | COPY_SRC | COPY_DST });
  device.queue.writeBuffer(buffer, 0, data);
  return buffer;
}

/** The first `bytes` of `buffer` (all of it by default), read back. */
export async function readBack(device: GPUDevice, buffer: GPUBuffer, bytes = buffer.size): Promise<ArrayBuffer> {
  const staging = device.createBuffer({ size: bytes, usage: MAP_READ | COPY_DST });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, bytes);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(1);
  const data = staging.getMappedRange().slice(0);
  staging.unmap();
  staging.destroy();
  return data;
}
