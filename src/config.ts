/** Every server flag, its type and default, as one zod schema; the CLI parser and --help are derived from it. */
import { z } from "zod";
import type { FlagSpelling } from "./cli/flags.ts";
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
  const n = m ? Math.floor(Number(m[1]) * UNITS[m[2] ?? ""]) : 0;
  if (n <= 0) {
    ctx.addIssue({ code: "custom", message: "a positive byte count such as 1073741824, 512MiB or 2GiB" });
    return z.NEVER;
  }
  return n;
});
const probability = z.coerce.number().min(0).max(1);
/** A token count as vLLM reads one: 4096, 32k (32,000), 32K (32,768), 1.5M. */
const tokenCount = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const m = String(v).trim().match(/^(\d+(?:\.\d+)?)([kmgKMG]?)$/);
  const scale = m?.[2] ? (m[2] === m[2].toLowerCase() ? 1000 : 1024) ** ("kmg".indexOf(m[2].toLowerCase()) + 1) : 1;
  const n = m ? Number(m[1]) * scale : NaN;
  if (!Number.isInteger(n) || n <= 0) {
    ctx.addIssue({ code: "custom", message: "a whole number of tokens of 1 or more, such as 4096, 32k (32,000) or 32K (32,768)" });
    return z.NEVER;
  }
  return n;
});

/** Server flags. Keys are camelCase here and kebab-case on the command line (`maxModelLen` = `--max-model-len`). */
export const ServerConfig = z.object({
  model: z.string().min(1).optional()
    .describe("Hugging Face model id or local model directory; none serves the built-in tiny model"),
  servedModelName: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)])
    .transform((names) => (typeof names === "string" ? [names] : names)).optional()
    .describe(
      "names clients may send as model, each listed in /v1/models; responses carry the first (default: the model " +
        "path). Requests naming the --model path are answered too",
    ),
  host: z.string().min(1).default("127.0.0.1").describe("address to bind"),
  port: port.default(8000).describe("port to listen on (0 picks a free one)"),
  device: z.enum(DEVICES).default("auto").describe("where the model runs"),
  dtype: z.enum(DTYPES).default("fp32").describe(
    "weight precision of the ONNX files to load; the engine serves fp32, q8 and q4 (int8 and 4-bit weights, " +
      "multiplied in int8 on the cpu)",
  ),
  threads: positiveInt.optional().describe("CPU threads one model run uses on the cpu and wasm devices (default: every core)"),
  samplerThreads: z.coerce.number().int().min(0).optional().describe(
    "threads that sample rows beside the engine's own when logits come back to the host (default: cores - 1, up to 7)",
  ),
  maxModelLen: tokenCount.optional().describe("context length in tokens (default: the model's)"),
  apiKey: z.string().min(1).optional().describe("require 'Authorization: Bearer KEY' on every route but /health and /metrics (see --metrics-api-key-required)"),
  metricsApiKeyRequired: z.boolean().default(false)
    .describe("/metrics requires the --api-key key too (default: open to Prometheus scrapers, as in vLLM)"),
  cacheDir: z.string().min(1).optional()
    .describe("where models are built and downloaded (default $XDG_CACHE_HOME/gym-edge or ~/.cache/gym-edge)"),
  hubUrl: z.url({ protocol: /^https?$/ }).optional()
    .describe("address of the Hugging Face hub or a mirror that hub ids are downloaded from (default https://huggingface.co)"),
  hfToken: z.string().min(1).optional().describe("token for gated and private hub repositories"),
  revision: z.string().min(1).max(256).regex(/^[^\s/\\][^\s\\]*$/, "a branch, tag or commit without spaces or backslashes").optional()
    .describe("the hub revision (branch, tag or commit) a hub id is downloaded at (default main)"),
  logLevel: z.enum(["debug", "info", "warn", "error"]).default("info").describe("least severe log level printed"),
  // Engine
  maxNumSeqs: positiveInt.default(32).describe("most sequences decoded together in one batch"),
  // The default is in the words: --help cannot read it through the token count's parsing.
  maxNumBatchedTokens: tokenCount.default(512)
    .describe("most tokens fed to the model in one step (prefill chunk) (default 512)"),
  kvCacheMemory: bytes.optional().describe("bytes for the KV cache: running sequences and prefix cache (default 1GiB)"),
  prefixCaching: z.boolean().default(true).describe("reuse cached KV of shared prompt prefixes"),
  schedulingPolicy: z.enum(["fcfs", "priority"]).default("fcfs").describe(
    "order of waiting requests: fcfs (arrival), or priority (lower 'priority' first, then arrival; preemption takes " +
      "the highest number first); under fcfs a priority other than 0 is refused, as in vLLM",
  ),
  // Generation
  toolCallParser: z.enum(TOOL_CALL_PARSERS).default("hermes").describe("how tool calls are read from output"),
  reasoningParser: z.enum(REASONING_PARSERS).optional().describe("move <think> text to reasoning_content"),
  logprobsMode: z.enum(["processed", "raw"]).default("processed")
    .describe("default distribution of reported logprobs: the one sampled from, or the model's raw one"),
  returnTokensAsTokenIds: z.boolean().default(false).describe("logprob tokens as 'token_id:<id>' for every request"),
  enableReturnSamplingMask: z.boolean().default(false)
    .describe("every /inference/v1/generate choice carries sampling_mask, the ids each token was drawn from"),
  requireTemperature: z.coerce.number().min(0).optional().describe("reject requests whose temperature differs"),
  requireTopP: probability.optional().describe("reject requests whose top_p differs"),
  requireTopK: z.coerce.number().int().optional().describe("reject requests whose top_k differs"),
  strictMaxTokens: z.boolean().default(false).describe("400 for a max_tokens that does not fit, instead of clamping"),
  seed: z.coerce.number().int().optional().describe(
    "requests without a seed draw theirs from a stream with this seed, so the same requests in the same order " +
      "sample the same tokens after a restart (default: fresh randomness)",
  ),
  chatTemplate: z.string().min(1).optional()
    .describe("a Jinja chat template file, or the template itself, used instead of the model's"),
  generationConfig: z.string().min(1).default("auto").describe(
    "default sampling of requests that set none: auto (the model's generation_config.json), vllm (none), or a " +
      "folder holding a generation_config.json",
  ),
  overrideGenerationConfig: z.string().min(1).optional().transform((text, ctx) => {
    if (text === undefined) return undefined;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch { /* refused below */ }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      ctx.addIssue({ code: "custom", message: `a JSON object such as '{"temperature": 0.6}'` });
      return z.NEVER;
    }
    return value as Record<string, unknown>;
  }).describe("JSON object of generation_config.json fields that replace the model's, e.g. '{\"temperature\": 0.6}'"),
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
    .describe("CORS: origins allowed to call from a browser, comma-separated or a JSON list, or * (default: CORS off)"),
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

/** Environment variables that stand in for a flag not given on the command line (the first one set, in order). */
export const ENV_FLAGS: Partial<Record<keyof ServerConfig, string | readonly string[]>> = {
  // vllm serve reads VLLM_API_KEY when --api-key is not given.
  apiKey: ["GYM_EDGE_API_KEY", "VLLM_API_KEY"],
  adminApiKey: "GYM_EDGE_ADMIN_API_KEY",
  cacheDir: "GYM_EDGE_CACHE",
  // The variables huggingface_hub (and so vllm serve) reads.
  hubUrl: "HF_ENDPOINT",
  hfToken: ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"],
};

/** vLLM's names of flags gym-edge has, and what happens to its flags that mean nothing here (README lists them). */
export const VLLM_SPELLINGS: Readonly<Record<string, FlagSpelling>> = {
  "enable-prefix-caching": { key: "prefixCaching" },
  "disable-log-requests": { key: "logRequests", negate: true },
  "enable-log-requests": { key: "logRequests" },
  "disable-uvicorn-access-log": { key: "logRequests", negate: true },
  "uvicorn-log-level": { key: "logLevel" },
  "kv-cache-memory-bytes": { key: "kvCacheMemory" },
  "download-dir": { key: "cacheDir" },
  "return-sampling-mask": { key: "enableReturnSamplingMask" },
  "enable-auto-tool-choice": { accepted: "tool calls are always read from the output (--tool-call-parser)" },
  "enable-chunked-prefill": { accepted: "long prompts are always prefilled in chunks (--max-num-batched-tokens)" },
  "disable-log-stats": { accepted: "no periodic stats lines are logged; /metrics has the figures" },
  "gpu-memory-utilization": { ignored: "the KV cache is sized in bytes with --kv-cache-memory", value: true },
  "swap-space": { ignored: "preempted sequences are recomputed, never swapped to host memory", value: true },
  "cpu-offload-gb": { ignored: "the weights stay where the device runs them", value: true },
  "block-size": { ignored: "the prefix cache keeps blocks of 16 tokens", value: true },
  "enforce-eager": { ignored: "there are no CUDA graphs to capture" },
  "trust-remote-code": { ignored: "no model code is downloaded: the architectures are built in" },
  "tensor-parallel-size": { refused: "a model runs on one device", value: true, unless: ["1"] },
  "tp": { refused: "a model runs on one device", value: true, unless: ["1"] },
  "pipeline-parallel-size": { refused: "a model runs on one device", value: true, unless: ["1"] },
  "pp": { refused: "a model runs on one device", value: true, unless: ["1"] },
  "data-parallel-size": { refused: "run one server per device behind a load balancer", value: true, unless: ["1"] },
  "dp": { refused: "run one server per device behind a load balancer", value: true, unless: ["1"] },
  "quantization": { refused: "the weights' precision is the ONNX file's: pick it with --dtype (q8, q4)", value: true },
  "q": { refused: "the weights' precision is the ONNX file's: pick it with --dtype (q8, q4)", value: true },
  "kv-cache-dtype": { refused: "the KV cache is kept in fp32", value: true, unless: ["auto"] },
  "tokenizer": { refused: "the tokenizer is the model folder's own tokenizer.json", value: true },
  "tokenizer-revision": { ignored: "the tokenizer comes from the model's own revision (--revision)", value: true },
  "code-revision": { ignored: "no model code is downloaded: the architectures are built in", value: true },
  "enable-lora": { refused: "LoRA adapters are not served; /update_weights replaces the weights" },
  "ssl-keyfile": { refused: "serve TLS through a reverse proxy in front of gym-edge", value: true },
  "ssl-certfile": { refused: "serve TLS through a reverse proxy in front of gym-edge", value: true },
};

/** vLLM's spellings of values, by flag (`--dtype float16`, `--uvicorn-log-level warning`). */
export const VLLM_VALUES: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  dtype: { auto: "fp32", float: "fp32", float32: "fp32", half: "fp16", float16: "fp16" },
  logLevel: { warning: "warn", critical: "error", trace: "debug" },
  logprobsMode: { raw_logprobs: "raw", processed_logprobs: "processed" },
};
