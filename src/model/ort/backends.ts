/**
 * Device backends: which ONNX Runtime build runs the model, and on what.
 *   cpu     onnxruntime-node, through transformers.js (what it uses by default on Node, Deno and Bun)
 *   wasm    onnxruntime-web's WASM build (SIMD, threads); no native addon
 *   webgpu  onnxruntime-web's WebGPU build where the runtime has navigator.gpu (Deno),
 *           else onnxruntime-node's WebGPU provider (Node, Bun)
 * transformers.js picks its ONNX Runtime once, when it is first imported, and with an injected one it refuses
 * every device name; so web sessions are opened here from the model's bytes, not through from_pretrained.
 */
import { readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import * as path from "node:path";
import type { Logger } from "../../log.ts";
import { DeviceUnavailableError, ModelLoadError } from "../errors.ts";
import type { ModelDtype, OnnxFiles } from "../sources/model-files.ts";
import { loadOrtWasm, loadOrtWebGpu } from "./ort-web.ts";
import type { OrtModule, OrtSession, OrtSessionOptions } from "./ort-types.ts";
import { shareTiedWeights } from "./packed-weights.ts";
import { hubDownloadProgress } from "../sources/download-progress.ts";
import { RunQueue } from "./run-queue.ts";
import { gpuAdapter, gpuDevicePresent } from "../../runtime/webgpu.ts";

/** CPU threads one model run uses (cpu and wasm devices): every core unless setCpuThreads says otherwise. */
let cpuThreads = availableParallelism();

/**
 * Sets the threads of sessions opened from now on. onnxruntime-node's own default ran one thread on a 2-core
 * machine here, which halved the decode rate; so sessions always ask for a count.
 */
export function setCpuThreads(threads?: number): void {
  cpuThreads = threads ?? availableParallelism();
}

/** The CPU threads sessions opened now ask for. */
export function cpuThreadCount(): number {
  return cpuThreads;
}

/** A place the model can run. */
export type Device = "cpu" | "wasm" | "webgpu";
/** A device, or "auto": webgpu with a hardware adapter, else cpu, else wasm. */
export type DeviceChoice = Device | "auto";

/** The model a backend opens: what transformers.js loads (directory or hub id) and its ONNX files on disk. */
export interface ModelSource {
  /** An absolute directory, or a hub id. */
  id: string;
  local: boolean;
  dtype: ModelDtype;
  /** transformers.js's download cache, for hub ids. */
  cacheDir: string;
  /** The hub revision of a hub id (default main). */
  revision?: string;
  /** Where the progress of hub downloads goes (none: quiet). */
  log?: (message: string) => void;
  /** The ONNX files on local disk (downloading a hub model first). */
  files(): Promise<OnnxFiles>;
}

/** A device and the ONNX Runtime build that drives it. */
export interface Backend {
  device: Device;
  runtime: "onnxruntime-node" | "onnxruntime-web";
  /** The runtime and execution provider, for logs: "onnxruntime-node (cpu)". */
  label: string;
  /** This backend's ONNX Runtime module. */
  ort: OrtModule;
  /** The Tensor class of this backend's ONNX Runtime. */
  Tensor: OrtModule["Tensor"];
  /** Opens an inference session over the model's decoder graph (through transformers.js where it can). */
  open(source: ModelSource): Promise<OrtSession>;
  /** Opens a session over any ONNX graph on this device (another graph of the same model, new weights). */
  openFile(files: OnnxFiles, options?: OrtSessionOptions): Promise<OrtSession>;
  /** The queue a session's runs go through so that they never overlap. */
  runQueue(): RunQueue;
  /**
   * Whether the engine's runners open on the model thread (model-thread.ts) rather than on the calling thread:
   * onnxruntime-node opens and runs sessions synchronously, holding whatever thread calls it.
   */
  offThread: boolean;
}

/** A backend with the session it opened. */
export interface OpenedSession {
  backend: Backend;
  session: OrtSession;
}

/** Opens `source` on the device asked for; "auto" tries each candidate in order and logs the one it took. */
export async function openSession(choice: DeviceChoice, source: ModelSource, log: Logger): Promise<OpenedSession> {
  const { backend, opened } = await openOnDevice(choice, (b) => b.open(source), log);
  return { backend, session: opened };
}

/**
 * Opens something of the model (`open`: its standard session, or the engine's runner) on the device asked for;
 * "auto" tries each candidate in order, skipping those that turn out unavailable, and logs the one it took.
 */
export async function openOnDevice<T>(
  choice: DeviceChoice,
  open: (backend: Backend) => Promise<T>,
  log: Logger,
): Promise<{ backend: Backend; opened: T }> {
  if (choice !== "auto") {
    const backend = await backendFor(choice);
    return { backend, opened: await open(backend) };
  }
  const skipped: string[] = [];
  for (const candidate of await autoCandidates(skipped)) {
    try {
      const backend = await candidate();
      const opened = await open(backend);
      log.info(
        `device auto: using ${backend.device} via ${backend.label}${skipped.length ? ` (${skipped.join("; ")})` : ""}`,
      );
      return { backend, opened };
    } catch (err) {
      if (!(err instanceof DeviceUnavailableError)) throw err;
      skipped.push(`${err.device} skipped: ${err.reason}`);
    }
  }
  throw new DeviceUnavailableError("auto", `no device worked (${skipped.join("; ")})`, []);
}

/** The backend of one device, or DeviceUnavailableError when it cannot run here. */
export async function backendFor(device: Device): Promise<Backend> {
  switch (device) {
    case "cpu":
      return await nativeBackend("cpu", true);
    case "wasm":
      return webBackend("wasm", await loadRuntime("wasm", () => loadOrtWasm(cpuThreads)));
    case "webgpu": {
      const gpu = await gpuAdapter();
      if (gpu === "no-navigator-gpu") return await nativeBackend("webgpu", true);
      if (gpu === "no-adapter") {
        throw new DeviceUnavailableError(
          "webgpu",
          "navigator.gpu found no adapter (without a GPU on Linux, install mesa-vulkan-drivers for lavapipe " +
            "and set XDG_RUNTIME_DIR)",
          await availableDevices(),
        );
      }
      return webBackend("webgpu", await loadRuntime("webgpu", () => loadOrtWebGpu(gpu.adapter)));
    }
  }
}

/** The devices that can run here, without opening a model (native WebGPU counts only once a session opened). */
export async function availableDevices(): Promise<Device[]> {
  const found: Device[] = [];
  if (await loads(() => import("onnxruntime-node"))) found.push("cpu");
  if (await loads(() => loadOrtWasm(cpuThreads))) found.push("wasm");
  const gpu = await gpuAdapter();
  if (typeof gpu === "object") found.push("webgpu");
  return found;
}

type Candidate = () => Promise<Backend>;

async function autoCandidates(skipped: string[]): Promise<Candidate[]> {
  const candidates: Candidate[] = [];
  if (gpuDevicePresent() === false) {
    skipped.push("webgpu skipped: this machine has no GPU device (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg)");
    candidates.push(() => backendFor("cpu"), () => backendFor("wasm"));
    return candidates;
  }
  const gpu = await gpuAdapter();
  if (gpu === "no-navigator-gpu") {
    // Only opening a session tells whether onnxruntime-node's WebGPU finds an adapter.
    candidates.push(() => nativeBackend("webgpu", true));
  } else if (gpu === "no-adapter") {
    skipped.push("webgpu skipped: navigator.gpu found no adapter");
  } else if (gpu.fallback) {
    // A software adapter (lavapipe, SwiftShader) is much slower than the CPU kernels.
    skipped.push("webgpu skipped: navigator.gpu offers only a software adapter");
  } else {
    candidates.push(() => backendFor("webgpu"));
  }
  candidates.push(() => backendFor("cpu"), () => backendFor("wasm"));
  return candidates;
}

/** onnxruntime-node on `device`, its sessions opened on the calling thread (the model thread opens its own this way). */
export function localNativeBackend(device: "cpu" | "webgpu"): Promise<Backend> {
  return nativeBackend(device, false);
}

async function nativeBackend(device: "cpu" | "webgpu", offThread: boolean): Promise<Backend> {
  const ort = await loadRuntime(device, () => import("onnxruntime-node") as unknown as Promise<OrtModule>);
  // Dawn's words when it finds no GPU; anything else is the model's fault.
  const failed = async (err: unknown, what: string): Promise<never> => {
    const message = err instanceof Error ? err.message : String(err);
    if (device === "webgpu" && /adapter/i.test(message)) {
      const available = (await availableDevices()).filter((d) => d !== "webgpu");
      throw new DeviceUnavailableError("webgpu", "onnxruntime-node's WebGPU found no adapter", available);
    }
    throw new ModelLoadError(what, `onnxruntime-node could not open ${what} on ${device}: ${message}`, { cause: err });
  };
  return {
    device,
    runtime: "onnxruntime-node",
    label: `onnxruntime-node (${device})`,
    ort,
    Tensor: ort.Tensor,
    runQueue: () => new RunQueue(),
    offThread,
    async open(source) {
      try {
        // Imported here: the model thread opens its sessions from files and has no use for transformers.js.
        const { AutoModelForCausalLM } = await import("@huggingface/transformers");
        const model = await AutoModelForCausalLM.from_pretrained(source.id, {
          device,
          dtype: source.dtype,
          local_files_only: source.local,
          cache_dir: source.cacheDir,
          revision: source.revision,
          progress_callback: source.log && !source.local ? hubDownloadProgress(source.log) : undefined,
          session_options: threadOptions(device),
        });
        const session = (model as unknown as { sessions: Record<string, OrtSession> }).sessions.model;
        if (!session) throw new Error("transformers.js opened no decoder session named 'model'");
        return session;
      } catch (err) {
        return await failed(err, source.id);
      }
    },
    async openFile(files, options) {
      try {
        const threads = threadOptions(device);
        const shared = device === "cpu" && files.externalData.length > 0 ? shareTiedWeights(await readBytes(files.model)) : null;
        // From a path, onnxruntime-node finds the external data beside the graph itself; from bytes, in the folder
        // named here.
        const extra = { ...threads.extra, ...options?.extra };
        const common = { executionProviders: [device], ...threads };
        if (!shared) return await ort.InferenceSession.create(files.model, { ...common, ...options, extra });
        extra["session.model_external_initializers_file_folder_path"] = path.dirname(files.model);
        // Errors only: ONNX Runtime warns of every initializer that is a graph input too, the point here.
        const quiet = { logSeverityLevel: 3 as const };
        return await ort.InferenceSession.create(shared, { ...common, ...quiet, ...options, extra });
      } catch (err) {
        return await failed(err, files.model);
      }
    },
  };
}

// One queue per onnxruntime-web build: runs on two WebGPU sessions at once corrupt its WASM memory, and
// overlapping runs on one WebGPU session hang.
const webQueues = new WeakMap<OrtModule, RunQueue>();

function webBackend(device: "wasm" | "webgpu", ort: OrtModule): Backend {
  if (!webQueues.has(ort)) webQueues.set(ort, new RunQueue());
  const backend: Backend = {
    device,
    runtime: "onnxruntime-web",
    label: `onnxruntime-web (${device})`,
    ort,
    Tensor: ort.Tensor,
    runQueue: () => webQueues.get(ort)!,
    offThread: false,
    async open(source) {
      return await backend.openFile(await source.files());
    },
    async openFile(files, options) {
      // Bytes, not paths: the WebGPU build would fetch a path as a URL, and both copy the model into
      // the WASM heap anyway.
      const [model, ...data] = await Promise.all(
        [files.model, ...files.externalData.map((f) => f.path)].map(readBytes),
      );
      const externalData = files.externalData.map((f, i) => ({ path: f.name, data: data[i] }));
      try {
        return await ort.InferenceSession.create(model, { executionProviders: [device], ...options, externalData });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        throw new ModelLoadError(
          files.model,
          `onnxruntime-web could not open ${files.model} on ${device}: ${message}`,
          {
            cause: err,
          },
        );
      }
    },
  };
  return backend;
}

/**
 * The cpu device's sessions: every core (setCpuThreads), and threads that stop spinning when a run ends. Within a
 * run the pool's threads spin between nodes, cheaper than waking them two thousand times a step; after it they
 * would spin on for a while on the cores the sampler's threads need then (with a helper on 2 cores, the GRPO load's
 * host time was 2.1-2.2 s with the spin, 1.5-1.8 s without).
 */
function threadOptions(device: Device): OrtSessionOptions & { extra?: Record<string, string> } {
  return device === "cpu" ? { intraOpNumThreads: cpuThreads, extra: { "session.force_spinning_stop": "1" } } : {};
}

async function readBytes(file: string): Promise<Uint8Array> {
  const buffer = await readFile(file);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

async function loadRuntime(device: Device, load: () => Promise<OrtModule>): Promise<OrtModule> {
  try {
    return await load();
  } catch (err) {
    const reason = `its ONNX Runtime did not load (${err instanceof Error ? err.message : String(err)})`;
    throw new DeviceUnavailableError(device, reason, (await availableDevices()).filter((d) => d !== device));
  }
}

async function loads(load: () => Promise<unknown>): Promise<boolean> {
  try {
    await load();
    return true;
  } catch {
    return false;
  }
}
