/**
 * GET /metrics (Prometheus text), and the engine as the routes see it: each request's tokens timed into the
 * metrics and into its log line, and the engine's retriable refusals turned into 503s.
 */
import { Hono } from "hono";
import { requestHandle, type SubmittedRequest } from "../engine/request.ts";
import type { TokenConstraint } from "../engine/constraint.ts";
import type { SamplingParams } from "../engine/sampling-params.ts";
import type { TokenEvent } from "../engine/sequence.ts";
import { type CacheConfig, renderCacheConfigInfo } from "../metrics/cache-config.ts";
import { renderProcessMetrics } from "../metrics/process.ts";
import { type EngineSnapshot, PROMETHEUS_CONTENT_TYPE, type ServingMetrics } from "../metrics/serving.ts";
import type { GenerationEngine } from "./deps.ts";
import { httpErrorOf, type RequestRecord, requestInContext, ServiceUnavailableError } from "./operations.ts";

/** The path Prometheus scrapes. */
export const METRICS_PATH = "/metrics";

/**
 * The metrics route: the registry's text with the engine's live state, the KV cache's configuration
 * (`vllm:cache_config_info`, when known) and the process's `process_*` series.
 */
export function metricsRoutes(
  metrics: ServingMetrics,
  snapshot: () => EngineSnapshot | null,
  cacheConfig: CacheConfig | null = null,
): Hono {
  const routes = new Hono();
  const cacheInfo = cacheConfig ? renderCacheConfigInfo(cacheConfig) : "";
  routes.get(METRICS_PATH, (c) => {
    const text = metrics.render(snapshot()) + cacheInfo + renderProcessMetrics();
    return c.body(text, 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
  });
  return routes;
}

/** `engine` with every request observed (metrics, the request's log record) and control errors as HTTP errors. */
export function meteredEngine(engine: GenerationEngine, metrics: ServingMetrics | null): GenerationEngine {
  return {
    get policyVersion() {
      return engine.policyVersion;
    },
    abort: (id, reason) => engine.abort(id, reason),
    weightVersionOf: (policyVersion) => engine.weightVersionOf?.(policyVersion) ?? null,
    submit(
      promptIds: readonly number[],
      params: SamplingParams,
      sampleIndex = 0,
      constraint: TokenConstraint | null = null,
    ): SubmittedRequest {
      let request: SubmittedRequest;
      try {
        request = engine.submit(promptIds, params, sampleIndex, constraint);
      } catch (err) {
        const translated = httpErrorOf(err);
        if (translated instanceof ServiceUnavailableError) metrics?.rejected(translated.reason);
        throw translated;
      }
      const record = requestInContext();
      // The n samples of a prompt share it: count it once.
      if (record && sampleIndex === 0) record.promptTokens += promptIds.length;
      return requestHandle(request, observe(request, promptIds.length, record, metrics));
    },
  };
}

async function* observe(
  request: SubmittedRequest,
  promptTokens: number,
  record: RequestRecord | undefined,
  metrics: ServingMetrics | null,
): AsyncGenerator<TokenEvent> {
  let last: number | null = null;
  let generated = 0;
  try {
    for await (const event of request.events) {
      const now = performance.now();
      if (last === null) {
        metrics?.firstToken((now - request.arrivedAt) / 1000);
        if (record && record.ttftMs === null) record.ttftMs = now - record.startedAt;
      } else metrics?.interToken((now - last) / 1000);
      last = now;
      generated++;
      if (record) {
        record.completionTokens++;
        record.policyVersion = Math.max(record.policyVersion ?? -1, event.policyVersion);
      }
      yield event;
    }
  } catch (err) {
    throw httpErrorOf(err);
  } finally {
    const { scheduledAt, arrivedAt } = request;
    metrics?.sequence({
      promptTokens,
      generationTokens: generated,
      finishReason: request.finishReason ?? "abort",
      queueSeconds: scheduledAt === null ? null : (scheduledAt - arrivedAt) / 1000,
      e2eSeconds: (performance.now() - arrivedAt) / 1000,
    });
  }
}
