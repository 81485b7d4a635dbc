/** Every server flag, its type and default, as one zod schema; the CLI parser and --help are derived from it. */
import { z } from "zod";

export const DEVICES = ["auto", "cpu", "wasm", "webgpu"] as const;
export const DTYPES = ["fp32", "fp16", "q8", "q4"] as const;

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();

/** Server flags. Keys are camelCase here and kebab-case on the command line (`maxModelLen` = `--max-model-len`). */
export const ServerConfig = z.object({
  model: z.string().min(1).optional()
    .describe("Hugging Face model id or local model directory; none serves the built-in tiny model"),
  servedModelName: z.string().min(1).optional().describe("model name clients send and see (default: the model path)"),
  host: z.string().min(1).default("127.0.0.1").describe("address to bind"),
  port: port.default(8000).describe("port to listen on (0 picks a free one)"),
  device: z.enum(DEVICES).default("auto").describe("where the model runs"),
  dtype: z.enum(DTYPES).default("fp32").describe("weight precision of the ONNX files to load"),
  maxModelLen: positiveInt.optional().describe("context length in tokens (default: the model's)"),
  apiKey: z.string().min(1).optional().describe("require 'Authorization: Bearer KEY' (env GYM_EDGE_API_KEY)"),
  cacheDir: z.string().min(1).optional()
    .describe("where models are built and downloaded (env GYM_EDGE_CACHE, default $XDG_CACHE_HOME/gym-edge)"),
  logLevel: z.enum(["debug", "info", "warn", "error"]).default("info").describe("least severe log level printed"),
});
export type ServerConfig = z.infer<typeof ServerConfig>;

/** Environment variables that stand in for a flag not given on the command line. */
export const ENV_FLAGS: Partial<Record<keyof ServerConfig, string>> = {
  apiKey: "GYM_EDGE_API_KEY",
  cacheDir: "GYM_EDGE_CACHE",
};
