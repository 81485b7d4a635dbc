/** The flags every engine benchmark takes, which scripts extend with their own. */
import * as path from "node:path";
import process from "node:process";
import { z } from "zod";
import { defaultCacheDir } from "../../src/model/builtin.ts";
import { intFlag } from "./flags.ts";

/** The dtypes the engine serves (the builder writes each of them). */
export const EngineDtype = z.enum(["fp32", "q8", "q4"]);

/** Flags every engine benchmark takes (defaults: the server's engine defaults, 3 runs). */
export const EngineBenchFlags = z.object({
  preset: z.string().default("bench-135m").describe("model preset to build (once) and run"),
  device: z.enum(["cpu", "wasm", "webgpu"]).default("cpu").describe("where the model runs"),
  dtype: EngineDtype.default("fp32").describe("weight precision of the model built and run"),
  hostCache: z.boolean().default(false)
    .describe("on webgpu, keep the cache in host memory and sample on the CPU (the GPU-resident runner's comparison)"),
  cacheDir: z.string().default(path.join(defaultCacheDir(process.env), "bench")).describe("where the model is built"),
  runs: intFlag(3).describe("measured runs (the figure is their median)"),
  maxNumSeqs: intFlag(32).describe("the engine's --max-num-seqs"),
  maxNumBatchedTokens: intFlag(512).describe("the engine's --max-num-batched-tokens"),
  kvCacheMemory: intFlag(2 ** 30).describe("the engine's --kv-cache-memory, in bytes"),
  baseline: z.boolean().default(true).describe("also run the in-script baseline (transformers.js generate()) on cpu"),
});
export type EngineBenchFlags = z.infer<typeof EngineBenchFlags>;
