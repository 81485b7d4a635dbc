/** The built-in tiny model (random weights, real Qwen3 tokenizer and template) with a real engine, for tests. */
import * as os from "node:os";
import * as path from "node:path";
import { ServerConfig } from "../../src/config.ts";
import type { SubmittedRequest } from "../../src/engine/engine.ts";
import { silentLogger } from "../../src/log.ts";
import { loadServedModel, type ServedModel } from "../../src/server.ts";
import { ensureBuiltinModel } from "../../src/model/builtin.ts";

/** Where tests build and share models: $GYM_EDGE_CACHE (CI builds the test model there) or a temp dir. */
export function testCacheDir(): string {
  return process.env.GYM_EDGE_CACHE || path.join(os.tmpdir(), "gym-edge-test-cache");
}

/** The built-in tiny model's directory, built on first use. */
export function tinyModelDir(): Promise<string> {
  return ensureBuiltinModel(testCacheDir());
}

/** The tiny model served on the cpu device with an engine; `flags` override server flags (camelCase keys). */
export async function openServedTiny(flags: Partial<Record<keyof ServerConfig, unknown>> = {}): Promise<ServedModel> {
  const config = ServerConfig.parse({ device: "cpu", cacheDir: testCacheDir(), ...flags });
  return await loadServedModel(config, silentLogger);
}

/** The token ids and logprobs a submitted request generates. */
export async function generated(req: SubmittedRequest): Promise<{ ids: number[]; logprobs: number[] }> {
  const ids: number[] = [];
  const logprobs: number[] = [];
  for await (const e of req.events) {
    ids.push(e.tokenId);
    logprobs.push(e.logprob);
  }
  return { ids, logprobs };
}
