/**
 * Where a model comes from: a local directory, or a Hugging Face hub id that transformers.js downloads
 * into its file cache (<cacheDir>/hub/<owner>/<name>/...), after which it reads like a local directory.
 */
import { AutoConfig, env as transformersEnv } from "@huggingface/transformers";
import { existsSync } from "node:fs";
import * as path from "node:path";
import { ModelLoadError } from "./errors.ts";

/** A model named on the command line, resolved. */
export interface ModelLocation {
  /** What transformers.js is given: an absolute directory or the hub id. */
  id: string;
  local: boolean;
  /** The directory the files are (or will be, once downloaded) in. */
  dir: string;
  /** transformers.js's download cache. */
  cacheDir: string;
}

// owner/name, as the hub spells repository ids; a bare name is taken for a directory.
const HUB_ID = /^[\w][\w.-]{0,95}\/[\w][\w.-]{0,95}$/;

/** Resolves `model` to a directory when one exists there (or it looks like a path), else to a hub id. */
export function locateModel(model: string, cacheDir: string): ModelLocation {
  const hubCache = path.resolve(cacheDir, "hub");
  const looksLikePath = path.isAbsolute(model) || /^\.\.?([\\/]|$)/.test(model) || model.startsWith("~");
  if (existsSync(model) || looksLikePath) {
    const dir = path.resolve(model);
    return { id: dir, local: true, dir, cacheDir: hubCache };
  }
  if (HUB_ID.test(model) && !model.includes("..") && !model.includes("--")) {
    return { id: model, local: false, dir: path.join(hubCache, model), cacheDir: hubCache };
  }
  throw new ModelLoadError(model, `model ${model} is neither an existing directory nor a hub id (owner/name)`);
}

/** Fetches a hub model's config.json into the cache (the tokenizer and ONNX files follow when they load). */
export async function fetchHubConfig(location: ModelLocation, hubUrl?: string): Promise<void> {
  if (hubUrl) transformersEnv.remoteHost = hubUrl.endsWith("/") ? hubUrl : hubUrl + "/";
  // A hub id must be fetched, whatever an earlier caller in this process set.
  transformersEnv.allowRemoteModels = true;
  // Deno has the web Cache API, which transformers.js would prefer to the cache directory.
  transformersEnv.useBrowserCache = false;
  try {
    await AutoConfig.from_pretrained(location.id, { cache_dir: location.cacheDir });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new ModelLoadError(location.id, `could not fetch config.json of ${location.id} from the hub: ${message}`, {
      cause: err,
    });
  }
}
