/**
 * `vllm:cache_config_info`: the KV cache's configuration as the labels of a gauge set to 1, with vLLM's label names
 * and value spellings. The Kubernetes Gateway API Inference Extension and llm-d's scheduler read `block_size` and
 * `num_gpu_blocks` from it to route requests to the replica that holds their prefix.
 */
import type { Engine } from "../engine/engine.ts";
import { Registry } from "./registry.ts";

/** The engine's KV cache as the metric reports it. */
export interface CacheConfig {
  /** Tokens per KV block (the prefix cache's unit). */
  blockSize: number;
  /** The whole KV budget in blocks: running sequences and cached prefixes share it. */
  numBlocks: number;
  /** The KV budget in bytes (--kv-cache-memory). */
  kvCacheBytes: number;
  prefixCaching: boolean;
}

/** The cache configuration of a running engine. */
export function cacheConfigOf(engine: Engine): CacheConfig {
  const { blockSize, bytesPerBlock } = engine.cache;
  const { kvCacheBytes } = engine.scheduler.limits;
  return {
    blockSize,
    numBlocks: Math.floor(kvCacheBytes / bytesPerBlock),
    kvCacheBytes,
    prefixCaching: engine.scheduler.prefixCaching,
  };
}

// Python's str() of a bool, as vLLM writes its config values.
const pythonBool = (b: boolean) => (b ? "True" : "False");

/** The metric as Prometheus text. No `model_name` label, as in vLLM; `engine` is the engine's index (one engine). */
export function renderCacheConfigInfo(config: CacheConfig): string {
  const r = new Registry();
  r.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig").set(1, {
    block_size: config.blockSize,
    // "auto": the KV has the model's compute precision (fp32 here, whatever the weights' dtype).
    cache_dtype: "auto",
    enable_prefix_caching: pythonBool(config.prefixCaching),
    engine: 0,
    kv_cache_memory_bytes: config.kvCacheBytes,
    num_gpu_blocks: config.numBlocks,
  });
  return r.render();
}
