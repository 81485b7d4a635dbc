/**
 * Where a model comes from: a local directory, or a Hugging Face hub id that transformers.js downloads
 * into its file cache (<cacheDir>/hub/<owner>/<name>/...), after which it reads like a local directory.
 */
import { AutoConfig, env as transformersEnv } from "@huggingface/transformers";
import { closeSync, existsSync, mkdirSync, openSync, renameSync, writeSync } from "node:fs";
import * as path from "node:path";
import { envVar } from "../../runtime/process.ts";
import { Progress } from "../../progress.ts";
import { REPORTED_DOWNLOAD } from "./download-progress.ts";
import { ModelLoadError } from "../errors.ts";

/** A model named on the command line, resolved. */
export interface ModelLocation {
  /** What transformers.js is given: an absolute directory or the hub id. */
  id: string;
  local: boolean;
  /** The directory the files are (or will be, once downloaded) in. */
  dir: string;
  /** transformers.js's download cache. */
  cacheDir: string;
  /** The hub revision a hub id is downloaded at (branch, tag or commit): "main" unless asked. */
  revision: string;
}

// owner/name, as the hub spells repository ids; a bare name is taken for a directory.
const HUB_ID = /^[\w][\w.-]{0,95}\/[\w][\w.-]{0,95}$/;

/**
 * Resolves `model` to a directory when one exists there (or it looks like a path), else to a hub id at `revision`.
 * Where transformers.js caches it: main's files under the repository's name, another revision's in a folder of that
 * name inside it, so two revisions never read each other's files.
 */
export function locateModel(model: string, cacheDir: string, revision = "main"): ModelLocation {
  const hubCache = path.resolve(cacheDir, "hub");
  const looksLikePath = path.isAbsolute(model) || /^\.\.?([\\/]|$)/.test(model) || model.startsWith("~");
  if (existsSync(model) || looksLikePath) {
    const dir = path.resolve(model);
    return { id: dir, local: true, dir, cacheDir: hubCache, revision };
  }
  if (HUB_ID.test(model) && !model.includes("..") && !model.includes("--")) {
    const dir = revision === "main" ? path.join(hubCache, model) : path.join(hubCache, model, revision);
    return { id: model, local: false, dir, cacheDir: hubCache, revision };
  }
  throw new ModelLoadError(model, `model ${model} is neither an existing directory nor a hub id (owner/name)`);
}

/** The token for gated and private repositories: the variables transformers.js reads itself, HF_TOKEN first. */
export function hubToken(): string | undefined {
  return envVar("HF_TOKEN") ?? envVar("HF_ACCESS_TOKEN");
}

/**
 * What a failed hub request says, with what to do about it: a hub that cannot be reached at all (no network, a
 * proxy, a wrong mirror) gets the ways to start without it; a refused one (401, 403) the token.
 */
function hubFailure(what: string, location: ModelLocation, err: unknown, hubUrl?: string): ModelLoadError {
  const message = err instanceof Error ? err.message : String(err);
  const host = hubUrl ?? transformersEnv.remoteHost;
  const unreachable = /fetch failed|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|connection|network|dns/i
    .test(`${message} ${err instanceof Error && err.cause instanceof Error ? err.cause.message : ""}`);
  const refused = /\b(401|403)\b|unauthori[sz]ed|forbidden|gated/i.test(message);
  const hint = unreachable
    ? `: the hub at ${host} could not be reached. Without network access, give --model a local directory (a ` +
      `model folder or a safetensors checkpoint); to use a mirror, set HF_ENDPOINT or --hub-url`
    : refused
    ? `: the hub refused the request; a gated or private repository needs a token (HF_TOKEN or --hf-token)`
    : "";
  return new ModelLoadError(location.id, `could not ${what} of ${location.id} from the hub (${message})${hint}`, {
    cause: err,
  });
}

let plainFetch: typeof transformersEnv.fetch | null = null;

/**
 * Has transformers.js send the token to the hub it downloads from, a mirror included (it sends one only to
 * huggingface.co itself, as huggingface_hub sends one to HF_ENDPOINT too).
 */
function authorizeHubFetches(): void {
  if (plainFetch) return;
  const fetch = plainFetch = transformersEnv.fetch;
  transformersEnv.fetch = (input: string | URL, init: RequestInit = {}) => {
    const token = hubToken();
    const headers = new Headers(init.headers);
    if (token && !headers.has("authorization") && String(input).startsWith(transformersEnv.remoteHost)) {
      headers.set("authorization", `Bearer ${token}`);
    }
    return fetch(input, { ...init, headers });
  };
}

/** Fetches a hub model's config.json into the cache (the tokenizer and ONNX files follow when they load). */
export async function fetchHubConfig(location: ModelLocation, hubUrl?: string): Promise<void> {
  if (hubUrl) transformersEnv.remoteHost = hubUrl.endsWith("/") ? hubUrl : hubUrl + "/";
  authorizeHubFetches();
  // A hub id must be fetched, whatever an earlier caller in this process set.
  transformersEnv.allowRemoteModels = true;
  // Deno has the web Cache API, which transformers.js would prefer to the cache directory.
  transformersEnv.useBrowserCache = false;
  try {
    await AutoConfig.from_pretrained(location.id, { cache_dir: location.cacheDir, revision: location.revision });
  } catch (err) {
    throw hubFailure("fetch config.json", location, err, hubUrl);
  }
}

/** Files a checkpoint folder carries beside its weights (the optional ones may be missing). */
const CHECKPOINT_FILES = {
  required: ["tokenizer.json", "tokenizer_config.json"],
  optional: ["generation_config.json", "special_tokens_map.json", "chat_template.jinja"],
};

/** Written into a hub model's cache directory once its whole checkpoint is there. */
const CHECKPOINT_DOWNLOADED = "gym-edge-checkpoint-downloaded";

/**
 * Downloads a hub model's safetensors checkpoint (weights and tokenizer files) into its cache directory when the hub
 * has no ONNX graph `onnxFile` for it; returns whether the directory holds such a checkpoint. The checkpoint is then
 * converted like a local one. What an earlier load cached (the ONNX graph or the whole checkpoint) asks nothing of the
 * hub, so cached models start offline.
 */
export async function fetchHubCheckpoint(
  location: ModelLocation,
  onnxFile: string,
  hubUrl?: string,
  log: (message: string) => void = () => {},
): Promise<boolean> {
  if (existsSync(path.join(location.dir, onnxFile))) return false;
  if (existsSync(path.join(location.dir, CHECKPOINT_DOWNLOADED))) return true;
  const base = hubUrl ? (hubUrl.endsWith("/") ? hubUrl : hubUrl + "/") : transformersEnv.remoteHost;
  const url = (file: string) => `${base}${location.id}/resolve/${encodeURIComponent(location.revision)}/${file}`;
  const token = hubToken();
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const fetch = (input: string, init: RequestInit = {}) => globalThis.fetch(input, { ...init, headers });
  try {
    if ((await fetch(url(onnxFile), { method: "HEAD" })).ok) return false;
    const index = await fetch(url("model.safetensors.index.json"));
    let weights = ["model.safetensors"];
    if (index.ok) {
      const text = await index.text();
      weights = [...new Set(Object.values(JSON.parse(text).weight_map as Record<string, string>))];
      await writeDownload(location.dir, "model.safetensors.index.json", new Response(text));
    } else if (!(await fetch(url("model.safetensors"), { method: "HEAD" })).ok) return false;
    for (const file of [...weights, ...CHECKPOINT_FILES.required, ...CHECKPOINT_FILES.optional]) {
      const res = await fetch(url(file));
      if (res.ok) await writeDownload(location.dir, file, res, log);
      else if (!CHECKPOINT_FILES.optional.includes(file)) throw new Error(`${file}: HTTP ${res.status}`);
    }
    await writeDownload(location.dir, CHECKPOINT_DOWNLOADED, new Response(""));
    return true;
  } catch (err) {
    throw hubFailure("download the checkpoint", location, err, base);
  }
}


/**
 * Streams a response body into `dir/name` (through a temporary file, so a cut download never looks complete);
 * its progress goes to `log` in lines every few seconds, and a big one's end too.
 */
export async function writeDownload(dir: string, name: string, res: Response, log?: (message: string) => void): Promise<void> {
  const target = path.resolve(dir, name);
  if (path.dirname(target) !== path.resolve(dir)) throw new Error(`${name} would land outside ${dir}`);
  mkdirSync(dir, { recursive: true });
  const partial = `${target}.partial`;
  const fd = openSync(partial, "w");
  const length = Number(res.headers.get("content-length") ?? NaN);
  const total = Number.isFinite(length) ? length : null;
  const progress = log ? new Progress(`downloading ${name}`, total, "bytes", { log, bar: false }) : null;
  try {
    const reader = res.body!.getReader();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      writeSync(fd, chunk.value);
      progress?.add(chunk.value.byteLength);
    }
    // A small file is not worth a line (a long one has said so every few seconds already).
    if (progress && (total ?? progress.done) >= REPORTED_DOWNLOAD) progress.finish();
  } finally {
    closeSync(fd);
  }
  renameSync(partial, target);
}
