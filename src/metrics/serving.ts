/**
 * The server's metrics. Where vLLM has a metric for the same thing it keeps vLLM's name (`vllm:` prefix, same
 * unit and labels, `model_name` on every series), so existing dashboards and autoscalers read it unchanged; what
 * vLLM lacks is `gym_edge:`. Engine statistics are read at scrape time from a snapshot; request timings are
 * observed as they happen. Per-request series count engine sequences: a request with n samples counts n.
 */
import { PROMETHEUS_CONTENT_TYPE, Registry } from "./registry.ts";

export { PROMETHEUS_CONTENT_TYPE };

// Bucket edges in seconds (latencies) and tokens (lengths): wide enough for a CPU-served model and a GPU one.
const TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640];
const ITL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 20];
const REQUEST_BUCKETS = [0.1, 0.3, 0.5, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 60, 120, 240, 480, 960, 1920];
const TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
const HTTP_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const REFIT_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/** Live engine state, read at each scrape. */
export interface EngineSnapshot {
  running: number;
  /** Sequences queued, held during a weight update included. */
  waiting: number;
  /** Fraction (0..1) of the KV budget holding tokens of running sequences and cached prefixes. */
  kvCacheUsage: number;
  /** Running totals since start. */
  prefixCacheQueriedTokens: number;
  prefixCacheHitTokens: number;
  preemptions: number;
  steps: number;
  policyVersion: number;
  /** 0 awake, 1 or 2 the sleep level. */
  sleepLevel: number;
  /** Generation is paused (POST /pause, /pause_generation). */
  paused?: boolean;
}

/** One finished engine sequence, as the metrics see it. */
export interface SequenceObservation {
  promptTokens: number;
  generationTokens: number;
  finishReason: string;
  /** Seconds from submission to the first scheduling (null when it never ran). */
  queueSeconds: number | null;
  e2eSeconds: number;
}

/** Every metric of a serving process. */
export class ServingMetrics {
  readonly registry: Registry;
  readonly #m;

  constructor(modelName: string) {
    const r = this.registry = new Registry({ model_name: modelName });
    this.#m = {
      running: r.gauge("vllm:num_requests_running", "Sequences in the running batch."),
      waiting: r.gauge("vllm:num_requests_waiting", "Sequences waiting to be scheduled (held ones included)."),
      kvUsage: r.gauge("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means the whole KV budget is in use."),
      prefixQueries: r.counter("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."),
      prefixHits: r.counter("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache."),
      preemptions: r.counter("vllm:num_preemptions_total", "Sequences preempted (KV dropped, recomputed later)."),
      promptTokens: r.counter("vllm:prompt_tokens_total", "Prompt tokens of finished sequences."),
      generationTokens: r.counter("vllm:generation_tokens_total", "Tokens generated."),
      success: r.counter("vllm:request_success_total", "Finished sequences by finish reason."),
      ttft: r.histogram("vllm:time_to_first_token_seconds", "Time from submission to the first token.", TTFT_BUCKETS),
      itl: r.histogram("vllm:inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", ITL_BUCKETS),
      e2e: r.histogram("vllm:e2e_request_latency_seconds", "Time from submission to the end of a sequence.", REQUEST_BUCKETS),
      queue: r.histogram("vllm:request_queue_time_seconds", "Time a sequence waited before it was scheduled.", REQUEST_BUCKETS),
      promptLength: r.histogram("vllm:request_prompt_tokens", "Prompt length of finished sequences.", TOKEN_BUCKETS),
      generationLength: r.histogram("vllm:request_generation_tokens", "Generated length of finished sequences.", TOKEN_BUCKETS),
      hitRate: r.gauge("gym_edge:prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / looked up, since start."),
      steps: r.counter("gym_edge:engine_steps_total", "Model steps the engine ran."),
      policyVersion: r.gauge("gym_edge:policy_version", "Version of the weights serving now (bumped by each weight update)."),
      sleepLevel: r.gauge("gym_edge:sleep_level", "0 awake; 1 the KV cache is freed; 2 the weights are dropped too."),
      paused: r.gauge("gym_edge:paused", "1 while generation is paused (POST /pause until /resume), else 0."),
      refits: r.counter("gym_edge:weight_updates_total", "Weight updates by mode and result (ok, failed)."),
      refitTime: r.histogram("gym_edge:weight_update_seconds", "Duration of successful weight updates.", REFIT_BUCKETS),
      rejected: r.counter("gym_edge:requests_rejected_total", "Requests refused with 503 by reason."),
      http: r.counter("gym_edge:http_requests_total", "HTTP requests by method, route and status code."),
      httpTime: r.histogram("gym_edge:http_request_duration_seconds", "HTTP request duration (streams: to the last byte).", HTTP_BUCKETS),
      inFlight: r.gauge("gym_edge:http_requests_in_flight", "HTTP requests being served."),
    };
    for (const reason of ["stop", "length", "abort"]) this.#m.success.touch({ finished_reason: reason });
  }

  /** A sequence's first token arrived `seconds` after it was submitted. */
  firstToken(seconds: number): void {
    this.#m.ttft.observe(seconds);
  }

  /** A token arrived `seconds` after the previous token of its sequence. */
  interToken(seconds: number): void {
    this.#m.itl.observe(seconds);
  }

  /** A sequence ended. */
  sequence(o: SequenceObservation): void {
    const m = this.#m;
    m.promptTokens.inc({}, o.promptTokens);
    m.generationTokens.inc({}, o.generationTokens);
    m.success.inc({ finished_reason: o.finishReason });
    m.e2e.observe(o.e2eSeconds);
    if (o.queueSeconds !== null) m.queue.observe(o.queueSeconds);
    m.promptLength.observe(o.promptTokens);
    m.generationLength.observe(o.generationTokens);
  }

  /** A request was refused (queue full, asleep, shutting down). */
  rejected(reason: string): void {
    this.#m.rejected.inc({ reason });
  }

  /** A weight update ended. */
  weightUpdate(mode: string, ok: boolean, seconds: number): void {
    this.#m.refits.inc({ mode, result: ok ? "ok" : "failed" });
    if (ok) this.#m.refitTime.observe(seconds);
  }

  /** An HTTP request ended. */
  httpRequest(method: string, route: string, status: number, seconds: number): void {
    this.#m.http.inc({ method, route, status });
    this.#m.httpTime.observe(seconds, { method, route });
  }

  /** The number of HTTP requests being served. */
  inFlight(count: number): void {
    this.#m.inFlight.set(count);
  }

  /** The exposition text, with the engine's live state read from `snapshot`. */
  render(snapshot: EngineSnapshot | null): string {
    const m = this.#m;
    if (snapshot) {
      m.running.set(snapshot.running);
      m.waiting.set(snapshot.waiting);
      m.kvUsage.set(snapshot.kvCacheUsage);
      m.prefixQueries.advanceTo(snapshot.prefixCacheQueriedTokens);
      m.prefixHits.advanceTo(snapshot.prefixCacheHitTokens);
      m.hitRate.set(
        snapshot.prefixCacheQueriedTokens > 0 ? snapshot.prefixCacheHitTokens / snapshot.prefixCacheQueriedTokens : 0,
      );
      m.preemptions.advanceTo(snapshot.preemptions);
      m.steps.advanceTo(snapshot.steps);
      m.policyVersion.set(snapshot.policyVersion);
      m.sleepLevel.set(snapshot.sleepLevel);
      m.paused.set(snapshot.paused ? 1 : 0);
    }
    return this.registry.render();
  }
}
