/**
 * Default sampling from a model's generation_config.json, read as vLLM's --generation-config reads it: requests
 * that leave temperature, top_p, top_k, min_p or repetition_penalty unset get the model's recommended values, and
 * its max_new_tokens caps max_tokens.
 */
import { readFileSync, statSync } from "node:fs";
import * as path from "node:path";

/** Sampling fields a model's generation config can set, under the request's names (max_new_tokens: max_tokens). */
export interface SamplingDefaults {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  repetition_penalty?: number;
  max_tokens?: number;
}

/** The defaults in force and the file (or flag) they came from; null when there are none. */
export interface SamplingDefaultsSource {
  defaults: SamplingDefaults;
  source: string | null;
}

/** A generation config that cannot be read, or that sets a value no request could use. */
export class GenerationConfigError extends Error {
  override name = "GenerationConfigError";
}

// transformers' GenerationConfig defaults: vLLM keeps only the fields whose value differs from these (to_diff_dict),
// so a file that spells out top_k 50 leaves top_k off, as it is in vLLM.
const HF_DEFAULTS: Record<string, unknown> = { temperature: 1, top_k: 50, top_p: 1, repetition_penalty: 1 };

/** What each field accepts: the same ranges as a request's field. */
const RANGES: Record<keyof SamplingDefaults, [(v: number) => boolean, string]> = {
  temperature: [(v) => v >= 0 && v <= 2, "from 0 to 2"],
  top_p: [(v) => v > 0 && v <= 1, "above 0 and at most 1"],
  top_k: [(v) => Number.isInteger(v) && v >= -1, "a whole number of -1 or more"],
  min_p: [(v) => v >= 0 && v <= 1, "from 0 to 1"],
  repetition_penalty: [(v) => v > 0, "above 0"],
  max_tokens: [(v) => Number.isInteger(v) && v >= 1, "a whole number of 1 or more"],
};

function readConfig(file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new GenerationConfigError(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new GenerationConfigError(`${file} does not hold a JSON object`);
  }
  return value as Record<string, unknown>;
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The generation_config.json that `choice` names: the model's (auto), none (vllm), or one in a folder given. */
function configFile(choice: string, modelDir: string): string | null {
  if (choice === "vllm") return null;
  if (choice === "auto") {
    const file = path.join(modelDir, "generation_config.json");
    return isFile(file) ? file : null;
  }
  if (isFile(choice)) return choice;
  const file = path.join(choice, "generation_config.json");
  if (!isFile(file)) {
    throw new GenerationConfigError(
      `--generation-config ${choice} must be auto, vllm, or a folder holding a generation_config.json, and ${file} does not exist`,
    );
  }
  return file;
}

/**
 * The default sampling that `choice` (--generation-config: auto, vllm or a folder) and `override`
 * (--override-generation-config, applied over it) give a model in `modelDir`.
 */
export function readSamplingDefaults(
  choice: string,
  modelDir: string,
  override: Record<string, unknown> = {},
): SamplingDefaultsSource {
  const file = configFile(choice, modelDir);
  const config: Record<string, unknown> = {};
  if (file !== null) {
    for (const [key, value] of Object.entries(readConfig(file))) if (HF_DEFAULTS[key] !== value) config[key] = value;
  }
  Object.assign(config, override);
  const defaults: SamplingDefaults = {};
  const where = Object.keys(override).length ? (file ? `${file} with --override-generation-config` : "--override-generation-config") : file;
  for (const field of Object.keys(RANGES) as (keyof SamplingDefaults)[]) {
    const value = config[field === "max_tokens" ? "max_new_tokens" : field];
    if (value == null) continue;
    const [fits, range] = RANGES[field];
    if (typeof value !== "number" || !fits(value)) {
      throw new GenerationConfigError(
        `${where} sets ${field === "max_tokens" ? "max_new_tokens" : field} to ${JSON.stringify(value)}, but it must be ` +
          `${range}${file ? "; --generation-config vllm ignores the model's generation config" : ""}`,
      );
    }
    defaults[field] = value;
  }
  return { defaults, source: Object.keys(defaults).length ? where : null };
}
