/** The gym-edge command line: `gym-edge [serve] [flags]`, `gym-edge build-model ...`, `--help`, `--version`. */
import { z } from "zod";
import { ENV_FLAGS, ServerConfig } from "../config.ts";
import { parseFlags, renderFlagHelp, UsageError } from "./flags.ts";
import { envRecord, exitProcess, onShutdownSignal } from "../runtime/process.ts";
import { installForModelThread, runAgain } from "../runtime/bun-install.ts";
import { serverLogger, startServer } from "../server.ts";
import { buildModel } from "../model/builder/build.ts";
import { PRESETS } from "../model/builder/presets.ts";
import { VERSION } from "../version.ts";

const BuildModelFlags = z.object({
  preset: z.enum(Object.keys(PRESETS) as [string, ...string[]]).describe("model shape and tokenizer"),
  out: z.string().min(1).describe("directory to write the model into"),
  seed: z.coerce.number().int().min(0).default(0).describe("seed of the random weights"),
  dtype: z.enum(["fp32", "fp16", "q4"]).default("fp32").describe("weight precision"),
});

const USAGE = `gym-edge ${VERSION}: an OpenAI-compatible generation server for reinforcement learning.

Usage:
  gym-edge [serve] [flags]          serve a model (the built-in tiny model when no --model is given)
  gym-edge build-model [flags]      write a random-weight model in the Hugging Face layout
  gym-edge --help | --version

Serve flags:
${renderFlagHelp(ServerConfig, ENV_FLAGS)}

build-model flags:
${renderFlagHelp(BuildModelFlags)}`;

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
      await buildModel({ preset: flags.preset as keyof typeof PRESETS, out: flags.out, seed: flags.seed, dtype: flags.dtype });
      console.error(`built ${flags.preset} (seed ${flags.seed}, ${flags.dtype}) in ${flags.out} in ${Math.round(performance.now() - started)} ms`);
      return 0;
    }
    const serveArgs = first === "serve" ? rest : argv;
    if (serveArgs.includes("--help") || serveArgs.includes("-h")) {
      console.log(USAGE);
      return 0;
    }
    const config = parseFlags(ServerConfig, serveArgs, envRecord(), ENV_FLAGS);
    debug = config.logLevel === "debug";
    const log = serverLogger(config);
    const installed = installForModelThread(log.info);
    if (installed !== null) {
      log.info(installed);
      return await runAgain();
    }
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
