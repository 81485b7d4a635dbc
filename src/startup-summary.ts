/**
 * What the server logs once it can serve: where to point an OpenAI client, under which names, what runs where, and
 * how much the KV cache holds (vLLM's "GPU KV cache size" and "Maximum concurrency for N tokens per request").
 */
import type { SamplingDefaults } from "./model/generation-defaults.ts";

/** The figures of the summary. */
export interface StartupFacts {
  /** The address and port the server listens on. */
  hostname: string;
  port: number;
  servedModelNames: readonly string[];
  /** The model as it was asked for (a hub id or a directory) and where it runs. */
  model: string;
  device: string;
  backend: string;
  dtype: string;
  maxModelLen: number;
  kvCacheBytes: number;
  /** KV bytes one token takes, across layers, keys and values. */
  kvBytesPerToken: number;
  maxNumSeqs: number;
  /** Default sampling from the model's generation config, and the file it came from. */
  samplingDefaults: SamplingDefaults;
  samplingDefaultsSource: string | null;
}

/** The OpenAI base URL clients use (an IPv6 address in brackets). */
export function openAiBaseUrl(hostname: string, port: number): string {
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return `http://${host}:${port}/v1`;
}

/** The summary's figures as JSON fields (vLLM's words where it has them). */
export function startupFields(f: StartupFacts): Record<string, unknown> {
  const kvTokens = Math.floor(f.kvCacheBytes / f.kvBytesPerToken);
  return {
    msg: "ready",
    base_url: openAiBaseUrl(f.hostname, f.port),
    served_model_names: f.servedModelNames,
    model: f.model,
    device: f.device,
    backend: f.backend,
    dtype: f.dtype,
    max_model_len: f.maxModelLen,
    kv_cache_bytes: f.kvCacheBytes,
    kv_cache_tokens: kvTokens,
    // Sequences of the full context length whose KV fits at once; --max-num-seqs bounds how many run.
    max_concurrency: Math.floor(kvTokens / f.maxModelLen),
    max_num_seqs: f.maxNumSeqs,
    default_sampling: f.samplingDefaultsSource ? f.samplingDefaults : null,
    default_sampling_source: f.samplingDefaultsSource,
  };
}

/** 262144 -> "262,144". */
const grouped = (n: number) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/** 1073741824 -> "1 GiB", 536870912 -> "512 MiB". */
function byteSize(n: number): string {
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]] as const) {
    if (n >= size) return `${Number((n / size).toFixed(2))} ${unit}`;
  }
  return `${n} B`;
}

/** The summary as a few text lines. */
export function startupLines(f: StartupFacts): string[] {
  const fields = startupFields(f);
  const [name, ...others] = f.servedModelNames;
  const also = others.length ? ` (also answers to ${others.join(", ")})` : "";
  const concurrency = fields.max_concurrency as number;
  const lines = [
    `ready: serving ${name}${also} at ${fields.base_url}`,
    `model ${f.model} on ${f.device} via ${f.backend} (${f.dtype}), context ${grouped(f.maxModelLen)} tokens`,
    `KV cache ${byteSize(f.kvCacheBytes)}: ${grouped(fields.kv_cache_tokens as number)} tokens; maximum concurrency ` +
    `for ${grouped(f.maxModelLen)} tokens per request: ${concurrency}` +
    (concurrency === 0
      ? " (a request of the full context does not fit: raise --kv-cache-memory or lower --max-model-len)"
      : concurrency > f.maxNumSeqs
      ? ` (--max-num-seqs runs at most ${f.maxNumSeqs} at once)`
      : ""),
  ];
  if (f.samplingDefaultsSource) {
    const values = Object.entries(f.samplingDefaults).map(([k, v]) => `${k}=${v}`).join(", ");
    lines.push(`requests that leave them unset sample with ${values} (from ${f.samplingDefaultsSource}; --generation-config vllm turns this off)`);
  }
  return lines;
}
