/** Every server flag, its type and default, as one zod schema; the CLI parser and --help are derived from it. */
import { z } from "zod";
import { REASONING_PARSERS } from "./chat/reasoning.ts";
import { TOOL_CALL_PARSERS } from "./chat/tools/names.ts";

export const DEVICES = ["auto", "cpu", "wasm", "webgpu"] as const;
export const DTYPES = ["fp32", "fp16", "q8", "q4"] as const;

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();
const UNITS: Record<string, number> = { "": 1, k: 1e3, m: 1e6, g: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };
/** A byte count: 1073741824, 1GiB, 512MiB, 2G. */
const bytes = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const m = String(v).trim().toLowerCase().match(/^(\d+(?:\.\d+)?)\s*(k|m|g|kib|mib|gib)?b?$/);
  if (!m) {
    ctx.addIssue({ code: "custom", message: "expected a byte count such as 1073741824, 512MiB or 2GiB" });
    return z.NEVER;
  }
  return Math.floor(Number(m[1]) * UNITS[m[2] ?? ""]);
}).pipe(z.number().int().positive());
const probability = z.coerce.number().min(0).max(1);

/** Server flags. Keys are camelCase here and kebab-case on the command line (`maxModelLen` = `--max-model-len`). */
export const ServerConfig = z.object({
  model: z.string().min(1).optional()
    .describe("Hugging Face model id or local model directory; none serves the built-in tiny model"),
  servedModelName: z.string().min(1).optional().describe("model name clients send and see (default: the model path)"),
  host: z.string().min(1).default("127.0.0.1").describe("address to bind"),
  port: port.default(8000).describe("port to listen on (0 picks a free one)"),
  device: z.enum(DEVICES).default("auto").describe("where the model runs"),
  dtype: z.enum(DTYPES).default("fp32").describe("weight precision of the ONNX files to load"),
  threads: positiveInt.optional().describe("CPU threads one model run uses on the cpu and wasm devices (default: every core)"),
  samplerThreads: z.coerce.number().int().min(0).optional().describe(
    "threads that sample rows beside the engine's own when logits come back to the host (default: cores - 1 up to 7 with 4 cores or more, else 0)",
  ),
  maxModelLen: positiveInt.optional().describe("context length in tokens (default: the model's)"),
  apiKey: z.string().min(1).optional().describe("require 'Authorization: Bearer KEY' on every route but /health"),
  metricsApiKeyRequired: z.boolean().default(false)
    .describe("/metrics requires the --api-key key too (default: open to Prometheus scrapers, as in vLLM)"),
  cacheDir: z.string().min(1).optional()
    .describe("where models are built and downloaded (default $XDG_CACHE_HOME/gym-edge or ~/.cache/gym-edge)"),
  logLevel: z.enum(["debug", "info", "warn", "error"]).default("info").describe("least severe log level printed"),
  // Engine
  maxNumSeqs: positiveInt.default(32).describe("most sequences decoded together in one batch"),
  maxNumBatchedTokens: positiveInt.default(512).describe("most tokens fed to the model in one step (prefill chunk)"),
  kvCacheMemory: bytes.optional().describe("bytes for the KV cache: running sequences and prefix cache (default 1GiB)"),
  prefixCaching: z.boolean().default(true).describe("reuse cached KV of shared prompt prefixes"),
  // Generation
  toolCallParser: z.enum(TOOL_CALL_PARSERS).default("hermes").describe("how tool calls are read from output"),
  reasoningParser: z.enum(REASONING_PARSERS).optional().describe("move <think> text to reasoning_content"),
  logprobsMode: z.enum(["processed", "raw"]).default("processed")
    .describe("default distribution of reported logprobs: the one sampled from, or the model's raw one"),
  returnTokensAsTokenIds: z.boolean().default(false).describe("logprob tokens as 'token_id:<id>' for every request"),
  requireTemperature: z.coerce.number().min(0).optional().describe("reject requests whose temperature differs"),
  requireTopP: probability.optional().describe("reject requests whose top_p differs"),
  requireTopK: z.coerce.number().int().optional().describe("reject requests whose top_k differs"),
  strictMaxTokens: z.boolean().default(false).describe("400 for a max_tokens that does not fit, instead of clamping"),
  // Operations and control plane
  maxQueue: positiveInt.optional()
    .describe("most sequences waiting to run; more requests get 503 with Retry-After (default: unbounded)"),
  disableControlPlane: z.boolean().default(false)
    .describe("no /update_weights, /sleep, /wake_up, /reset_prefix_cache routes"),
  adminApiKey: z.string().min(1).optional()
    .describe("the control routes require this bearer key instead of --api-key"),
  allowedWeightDir: z.string().min(1).optional()
    .describe("/update_weights loads only from inside this directory (real paths: no .. or symlink escapes)"),
  allowedOrigins: z.string().min(1).optional()
    .describe("CORS: comma-separated origins allowed to call from a browser, or * (default: CORS off)"),
  // Longer than client pools keep an idle connection (NeMo Gym's 15 s, aiohttp's 15 s, a load balancer's 60 s), so the
  // client, not the server, closes it: a server that closes first races the client's next request on that socket.
  keepAliveTimeout: z.coerce.number().min(0).default(120).describe(
    "seconds an idle keep-alive connection stays open; 0: until the client closes it (Node and Bun; Bun at most 255)",
  ),
  shutdownTimeout: z.coerce.number().min(0).default(30)
    .describe("seconds in-flight requests get to finish after SIGTERM/SIGINT before they are aborted"),
  logFormat: z.enum(["text", "json"]).default("text").describe("log lines as text or as one JSON object each"),
  logRequests: z.boolean().default(true).describe("one log line per request: id, route, status, tokens, latencies"),
});
export type ServerConfig = z.infer<typeof ServerConfig>;

/** Environment variables that stand in for a flag not given on the command line. */
export const ENV_FLAGS: Partial<Record<keyof ServerConfig, string>> = {
  apiKey: "GYM_EDGE_API_KEY",
  adminApiKey: "GYM_EDGE_ADMIN_API_KEY",
  cacheDir: "GYM_EDGE_CACHE",
};
