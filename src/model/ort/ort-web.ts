/**
 * onnxruntime-web, loaded from this package's own files: the WASM (SIMD, threads) build for `wasm`, and the
 * WebGPU build for `webgpu` on runtimes with navigator.gpu. Both fetch their .mjs/.wasm from a local path:
 * left alone, onnxruntime-web guesses the path from its own URL, which breaks once bundled, and transformers.js
 * rewrites it to a CDN.
 */
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import type { OrtModule } from "./ort-types.ts";
import { embeddedFile } from "../../runtime/embedded.ts";

/** The .wasm a single-file build carries (with the build of onnxruntime-web that has its JavaScript inside). */
export const EMBEDDED_WASM = "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm";

let wasmBuild: Promise<OrtModule> | undefined;
let webGpuBuild: Promise<OrtModule> | undefined;

/** onnxruntime-web's dist/ folder as a file URL ending in "/", found the same way on Node, Deno and Bun. */
export function ortWebDistUrl(): string {
  // The package's main entry lives in dist/ in every build condition; its exports hide package.json.
  const entry = createRequire(import.meta.url).resolve("onnxruntime-web");
  return pathToFileURL(path.dirname(entry)).href + "/";
}

/** WASM worker threads: onnxruntime-web's own default is 1 on Deno and half the cores elsewhere. */
export function wasmThreads(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

/** The WASM build (CPU kernels in WebAssembly SIMD, multi-threaded), loaded once per process. */
export function loadOrtWasm(threads = wasmThreads()): Promise<OrtModule> {
  wasmBuild ??= (async () => {
    const ort = await import("onnxruntime-web") as unknown as OrtModule;
    const env = ort.env as { wasm: Record<string, unknown> };
    const embedded = embeddedFile(EMBEDDED_WASM);
    if (embedded === undefined) {
      env.wasm.wasmPaths = ortWebDistUrl();
      env.wasm.numThreads = threads;
    } else {
      // A single-file build: the .wasm as bytes, and one thread, because onnxruntime-web starts its worker threads
      // from blob: URLs, which the executable's worker threads cannot load.
      env.wasm.wasmBinary = await readFile(embedded);
      env.wasm.numThreads = 1;
    }
    env.wasm.proxy = false;
    return ort;
  })();
  return wasmBuild;
}

/** The WebGPU build (its WebGPU execution provider on navigator.gpu, using `adapter`), loaded once per process. */
export function loadOrtWebGpu(adapter: unknown): Promise<OrtModule> {
  webGpuBuild ??= (async () => {
    const ort = await import("onnxruntime-web/webgpu") as unknown as OrtModule;
    const env = ort.env as { wasm: Record<string, unknown>; webgpu: Record<string, unknown> };
    const dist = ortWebDistUrl();
    // Both files named: given only a folder, this build fetches the .mjs into a blob: URL, which Deno cannot import.
    env.wasm.wasmPaths = {
      mjs: `${dist}ort-wasm-simd-threaded.asyncify.mjs`,
      wasm: `${dist}ort-wasm-simd-threaded.asyncify.wasm`,
    };
    // Its worker threads start from blob: URLs too; the kernels run on the GPU, so one thread is enough.
    env.wasm.numThreads = 1;
    env.wasm.proxy = false;
    env.webgpu.adapter = adapter;
    env.webgpu.powerPreference = "high-performance";
    return ort;
  })();
  return webGpuBuild;
}
