/**
 * Operating the HTTP server: a request id and one log line per request (with its tokens and latencies, why it failed,
 * and a max_tokens lowered to fit the context), metrics by route and status, the count of requests in flight for a
 * graceful shutdown (which turns new ones away with 503), and the translation of the engine's control errors into
 * HTTP errors.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { ControlError, EngineUnavailableError } from "../engine/control.ts";
import type { ServingMetrics } from "../metrics/serving.ts";
import { CLIENT_CLOSED_STATUS, InvalidRequestError } from "./errors.ts";

/** 503 with Retry-After: the server cannot take this request now (queue full, asleep, weights updating, stopping). */
export class ServiceUnavailableError extends HTTPException {
  constructor(message: string, readonly reason: string, readonly retryAfterSeconds = 1) {
    super(503, { message });
    this.name = "ServiceUnavailableError";
  }
}

/** The HTTP error for an error of the engine's control plane; other errors pass through unchanged. */
export function httpErrorOf(err: unknown): unknown {
  if (err instanceof EngineUnavailableError) return new ServiceUnavailableError(err.message, err.reason, err.retryAfterSeconds);
  if (err instanceof ControlError) {
    if (err.kind === "invalid") return new InvalidRequestError(err.message, err.param);
    return new HTTPException(err.kind === "forbidden" ? 403 : 409, { message: err.message });
  }
  return err;
}

/** What the log line of one request says. */
export interface RequestRecord {
  id: string;
  method: string;
  route: string;
  /** The status sent; 499 when the client hung up before its answer was sent (nginx's convention). */
  status: number;
  /** Prompt tokens (once per prompt) and generated tokens (all samples) of the engine requests it made. */
  promptTokens: number;
  completionTokens: number;
  /** Milliseconds from arrival to the first generated token and to the last byte sent. */
  ttftMs: number | null;
  durationMs: number;
  /** The newest policy version among its tokens. */
  policyVersion: number | null;
  /** performance.now() at arrival. */
  startedAt: number;
  /** Why it failed (status 400 and up): the error message sent, on one line and shortened; null when it did not. */
  reason: string | null;
  /** The max_tokens asked for and the one it was lowered to, to fit the context; null when it was not lowered. */
  maxTokensClamp: { requested: number; allowed: number } | null;
}

const currentRequest = new AsyncLocalStorage<RequestRecord>();

/** The record of the HTTP request being served in this async context, if any (the engine wrapper adds tokens). */
export function requestInContext(): RequestRecord | undefined {
  return currentRequest.getStore();
}

/** Notes in the request's log line that its max_tokens was lowered to fit the context (a batch: the lowest). */
export function noteClampedMaxTokens(requested: number, allowed: number): void {
  const record = currentRequest.getStore();
  if (record && (record.maxTokensClamp === null || allowed < record.maxTokensClamp.allowed)) {
    record.maxTokensClamp = { requested, allowed };
  }
}

/** The longest reason a log line carries. */
const MAX_REASON_CHARS = 300;

/** An error message as a log line's reason: one line, at most MAX_REASON_CHARS characters. */
export function oneLineReason(message: string): string {
  const line = message.replace(/\s+/g, " ").trim();
  return line.length <= MAX_REASON_CHARS ? line : `${line.slice(0, MAX_REASON_CHARS - 1)}…`;
}

/** The error message of an error response (OpenAI's shape), or null when it has none. */
async function errorMessageOf(res: Response): Promise<string | null> {
  if (!(res.headers.get("content-type") ?? "").includes("json")) return null;
  try {
    const body = await res.clone().json();
    const message = body?.error?.message;
    return typeof message === "string" ? message : null;
  } catch {
    return null;
  }
}

/** Requests in flight, and the switch that turns new ones away while the server drains. */
export class RequestTracker {
  #inFlight = 0;
  #draining = false;
  #waiters: (() => void)[] = [];

  get inFlight(): number {
    return this.#inFlight;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** From now on every new request gets 503 (reason shutting_down). */
  drain(): void {
    this.#draining = true;
  }

  /** Resolves once no request is in flight, or after `timeoutMs`; says which. */
  async settled(timeoutMs: number): Promise<boolean> {
    if (this.#inFlight === 0) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = new Promise<boolean>((resolve) => this.#waiters.push(() => resolve(true)));
    const expired = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([done, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  begin(): void {
    this.#inFlight++;
  }

  end(): void {
    this.#inFlight--;
    if (this.#inFlight === 0) for (const wake of this.#waiters.splice(0)) wake();
  }
}

/** What the operations middleware needs. */
export interface OperationsOptions {
  tracker?: RequestTracker;
  metrics?: ServingMetrics | null;
  /** Receives one record per request, once its response is fully sent (or abandoned). */
  log?: ((record: RequestRecord) => void) | null;
  /** The route a path belongs to, as a bounded label ("/v1/chat/completions"; unknown paths share one). */
  routeOf: (method: string, path: string) => string;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/**
 * Middleware that gives each request an id (`x-request-id`, the client's own when it sends a sane one), refuses
 * new requests while draining, and when the response has been sent (a stream: its last byte, or the client gone)
 * counts it in the metrics and logs it.
 */
export function operations(options: OperationsOptions): MiddlewareHandler {
  return async (c, next) => {
    const given = c.req.header("x-request-id");
    const record: RequestRecord = {
      id: given && REQUEST_ID.test(given) ? given : crypto.randomUUID(),
      method: c.req.method,
      route: options.routeOf(c.req.method, c.req.path),
      status: 0,
      promptTokens: 0,
      completionTokens: 0,
      ttftMs: null,
      durationMs: 0,
      policyVersion: null,
      startedAt: performance.now(),
      reason: null,
      maxTokensClamp: null,
    };
    const tracker = options.tracker;
    tracker?.begin();
    options.metrics?.inFlight(tracker?.inFlight ?? 0);
    let ended = false;
    const end = (clientGone = false) => {
      if (ended) return;
      ended = true;
      // Like nginx's 499: the client went away first, so no status reached it; not a server error.
      if (clientGone) {
        record.status = CLIENT_CLOSED_STATUS;
        record.reason ??= "the client closed the connection";
      }
      record.durationMs = performance.now() - record.startedAt;
      tracker?.end();
      options.metrics?.inFlight(tracker?.inFlight ?? 0);
      options.metrics?.httpRequest(record.method, record.route, record.status, record.durationMs / 1000);
      options.log?.(record);
    };
    try {
      await currentRequest.run(record, async () => {
        if (tracker?.draining) throw new ServiceUnavailableError("the server is shutting down", "shutting_down");
        await next();
      });
    } catch (err) {
      // Only this middleware's own refusal gets here: Hono turns a route's errors into c.res before next() returns.
      record.status = err instanceof HTTPException ? err.status : 500;
      record.reason = oneLineReason(err instanceof Error ? err.message : String(err));
      end();
      throw err;
    }
    record.status = c.res.status;
    if (record.status >= 400) {
      const message = await errorMessageOf(c.res) ?? c.error?.message ?? null;
      record.reason = message === null ? null : oneLineReason(message);
    }
    c.res.headers.set("x-request-id", record.id);
    const body = c.res.body;
    if (body && (c.res.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      c.res = new Response(untilDone(body, end), c.res);
    } else end(c.req.raw.signal.aborted);
  };
}

/** The same stream, calling `done` once it ends or fails, or `done(true)` when the client cancels it. */
function untilDone(body: ReadableStream<Uint8Array>, done: (clientGone?: boolean) => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done: finished } = await reader.read();
        if (finished) {
          controller.close();
          done();
        } else controller.enqueue(value);
      } catch (err) {
        controller.error(err);
        done();
      }
    },
    async cancel(reason) {
      done(true);
      await reader.cancel(reason);
    },
  });
}

/** A record as one text log line. */
export function formatRequestLine(r: RequestRecord): string {
  const ms = (v: number | null) => (v === null ? "-" : String(Math.round(v)));
  return `request ${r.id} ${r.method} ${r.route} ${r.status} prompt_tokens=${r.promptTokens} ` +
    `completion_tokens=${r.completionTokens} ttft_ms=${ms(r.ttftMs)} duration_ms=${ms(r.durationMs)}` +
    (r.policyVersion === null ? "" : ` policy_version=${r.policyVersion}`) +
    (r.maxTokensClamp === null ? "" : ` max_tokens_clamped=${r.maxTokensClamp.requested}->${r.maxTokensClamp.allowed}`) +
    (r.reason === null ? "" : ` reason=${JSON.stringify(r.reason)}`);
}

/** A record as the fields of a JSON log line. */
export function requestLogFields(r: RequestRecord): Record<string, unknown> {
  return {
    event: "request",
    request_id: r.id,
    method: r.method,
    route: r.route,
    status: r.status,
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    ttft_ms: r.ttftMs === null ? null : Math.round(r.ttftMs * 10) / 10,
    duration_ms: Math.round(r.durationMs * 10) / 10,
    policy_version: r.policyVersion,
    ...(r.maxTokensClamp === null ? {} : { max_tokens_requested: r.maxTokensClamp.requested, max_tokens: r.maxTokensClamp.allowed }),
    ...(r.reason === null ? {} : { reason: r.reason }),
  };
}
