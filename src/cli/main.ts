/** The gym-edge command line: `gym-edge [serve [MODEL]] [flags]`, `gym-edge build-model ...`, `--help`, `--version`. */
import { z } from "zod";
import { ENV_FLAGS, ServerConfig, VLLM_SPELLINGS, VLLM_VALUES } from "../config.ts";
import { parseFlags, renderFlagHelp, renderSpellingHelp, UsageError } from "./flags.ts";
import { envRecord, exitProcess, onShutdownSignal } from "../runtime/process.ts";
import { bunAllocatorEnv, exitWithParent, installForModelThread, runAgain } from "../runtime/bun-install.ts";
import { serverLogger, startServer } from "../server.ts";
import { ChatTemplateError, readChatTemplate } from "../chat/template.ts";
import { GenerationConfigError, readSamplingDefaults } from "../model/generation-defaults.ts";
import { type BuildDtype, buildModel, ONNX_FILES } from "../model/builder/build.ts";
import { PRESETS } from "../model/builder/presets.ts";
import { Progress } from "../progress.ts";
import { VERSION } from "../version.ts";

const BUILD_DTYPES = Object.keys(ONNX_FILES) as BuildDtype[];

const BuildModelFlags = z.object({
  preset: z.enum(Object.keys(PRESETS) as [string, ...string[]]).describe("model shape and tokenizer"),
  out: z.string().min(1).describe("directory to write the model into"),
  seed: z.coerce.number().int().min(0).default(0).describe("seed of the random weights"),
  dtype: z.string().default("fp32")
    .refine((list) => list.split(",").every((d) => (BUILD_DTYPES as string[]).includes(d)), {
      message: "fp32, fp16, q8 or q4, or several of them comma-separated (fp32,q8,q4)",
    })
    .transform((list) => list.split(",") as BuildDtype[])
    .describe("weight precision: fp32, fp16, q8 or q4, or several, comma-separated (fp32,q8,q4)"),
});

const USAGE = `gym-edge ${VERSION}: an OpenAI-compatible generation server for reinforcement learning.

Usage:
  gym-edge serve [MODEL] [flags]    serve a model (MODEL is --model; the built-in tiny model when none is given)
  gym-edge [flags]                  the same as gym-edge serve [flags]
  gym-edge build-model [flags]      write a random-weight model in the Hugging Face layout
  gym-edge --help | --version

Serve flags:
${renderFlagHelp(ServerConfig, ENV_FLAGS)}

vLLM's serve flags:
${renderSpellingHelp(VLLM_SPELLINGS)}

build-model flags:
${renderFlagHelp(BuildModelFlags)}`;

/**
 * The serve flags, with vLLM's spellings; after `serve` a bare argument is the model, as in `vllm serve MODEL`.
 * `warnings` are the flags accepted but ignored, for the log.
 */
export function parseServeFlags(
  args: string[],
  positionalModel = true,
  env: Record<string, string | undefined> = envRecord(),
): ServerConfig & { warnings: string[] } {
  const warnings: string[] = [];
  const config = parseFlags(ServerConfig, args, env, ENV_FLAGS, {
    spellings: VLLM_SPELLINGS,
    values: VLLM_VALUES,
    positional: positionalModel ? "model" : undefined,
    onIgnored: (message) => warnings.push(message),
  });
  // The files flags name are read now: a wrong path is a usage error, not a start that fails after the model loads.
  try {
    if (config.chatTemplate !== undefined) config.chatTemplate = readChatTemplate(config.chatTemplate);
    const { generationConfig: choice, overrideGenerationConfig: override } = config;
    if (choice !== "auto" && choice !== "vllm") readSamplingDefaults(choice, ".", override);
    else if (override !== undefined) readSamplingDefaults("vllm", ".", override);
  } catch (err) {
    if (err instanceof ChatTemplateError || err instanceof GenerationConfigError) throw new UsageError(err.message);
    throw err;
  }
  return { ...config, warnings };
}

/** Runs the command line; resolves with the exit code (a server keeps running until a signal). */
export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  let debug = false;
  try {
    if (first === "--help" || first === "-h" || first === "help") {
      console.log(USAGE);
      return 0;
    }
    if (first === "--version" || first === "-V") {
      console.log(VERSION);
      return 0;
    }
    if (first === "build-model") {
      const flags = parseFlags(BuildModelFlags, rest);
      const started = performance.now();
      // One progress per weights file: a bar on a terminal, else a line every few seconds.
      const files = new Map<string, Progress>();
      const onProgress = (file: string, written: number, total: number) => {
        let progress = files.get(file);
        if (!progress) files.set(file, progress = new Progress(`writing ${file}`, total, "bytes", { log: console.error }));
        progress.set(written);
        if (written >= total) progress.finish();
      };
      const preset = flags.preset as keyof typeof PRESETS;
      await buildModel({ preset, out: flags.out, seed: flags.seed, dtype: flags.dtype, onProgress });
      console.error(`built ${flags.preset} (seed ${flags.seed}, ${flags.dtype.join(", ")}) in ${flags.out} in ${Math.round(performance.now() - started)} ms`);
      return 0;
    }
    if (first !== undefined && first !== "serve" && !first.startsWith("-")) {
      throw new UsageError(
        `'${first}' is not a command (serve, build-model); to serve a model from it, run: gym-edge serve ${first}`,
      );
    }
    const serveArgs = first === "serve" ? rest : argv;
    if (serveArgs.includes("--help") || serveArgs.includes("-h")) {
      console.log(USAGE);
      return 0;
    }
    const config = parseServeFlags(serveArgs, first === "serve");
    debug = config.logLevel === "debug";
    const log = serverLogger(config);
    for (const warning of config.warnings) log.warn(warning);
    exitWithParent();
    const installed = installForModelThread(log.info);
    if (installed !== null) log.info(installed);
    const allocator = bunAllocatorEnv();
    if (allocator !== null) {
      log.info("on Bun: starting again with MIMALLOC_PURGE_DELAY=60000 (freed memory kept a minute for reuse; set it to skip this)");
    }
    if (installed !== null || allocator !== null) return await runAgain(allocator ?? {});
    const server = await startServer(config, log);
    let stopping = false;
    onShutdownSignal(async (signal) => {
      // A second signal does not wait any more.
      if (stopping) exitProcess(0);
      stopping = true;
      log.info(`${signal}: finishing the requests in flight (up to ${config.shutdownTimeout} s), then exiting`);
      await server.shutdown(config.shutdownTimeout * 1000);
      exitProcess(0);
    });
    // startServer has logged why the model did not load.
    await server.ready.catch((err) => {
      if (debug) console.error(err);
      exitProcess(1);
    });
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`gym-edge: ${err.message}`);
      return 2;
    }
    // A start-up failure (the port in use, a bad address) is one line; its stack trace is for --log-level debug.
    console.error(`gym-edge: ${err instanceof Error ? err.message : String(err)}`);
    if (debug) console.error(err);
    return 1;
  }
}
