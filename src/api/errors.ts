/**
 * Every error a request can meet, and the one place where each becomes an HTTP status and OpenAI's error shape
 * `{"error": {"message", "type", "param", "code"}}`.
 */
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { InvalidMessageError } from "../chat/messages.ts";
import { SpliceError } from "../chat/splice.ts";
import { ChatTemplateError, TextTooLongError } from "../chat/template.ts";
import { ToolChoiceError } from "../chat/tools/parser.ts";
import { EngineRequestError } from "../engine/engine.ts";
import { SamplingParamsError } from "../engine/sampling-params.ts";
import { describeIssues } from "./issues.ts";

/** OpenAI's error body. */
export const ErrorBody = z.object({
  error: z.object({ message: z.string(), type: z.string(), param: z.string().nullable(), code: z.string().nullable() }),
});
export type ErrorBody = z.infer<typeof ErrorBody>;

/** A request that is well-formed JSON but asks for something invalid. */
export class InvalidRequestError extends Error {
  constructor(message: string, readonly param: string | null = null) {
    super(message);
    this.name = "InvalidRequestError";
  }
}

/** The body is not JSON. */
export class MalformedJsonError extends Error {
  constructor(detail: string) {
    super(`the request body is not valid JSON: ${detail}`);
    this.name = "MalformedJsonError";
  }
}

/** The request names a model this server does not serve. */
export class ModelNotFoundError extends Error {
  constructor(readonly model: string) {
    super(`The model \`${model}\` does not exist.`);
    this.name = "ModelNotFoundError";
  }
}

/** No route has this path. */
export class RouteNotFoundError extends Error {
  constructor(method: string, path: string) {
    super(`Invalid URL (${method} ${path})`);
    this.name = "RouteNotFoundError";
  }
}

/** The path exists, but not for this method. */
export class MethodNotAllowedError extends Error {
  constructor(method: string, path: string, readonly allowed: readonly string[]) {
    super(`Method ${method} is not allowed on ${path}; allowed: ${allowed.join(", ")}`);
    this.name = "MethodNotAllowedError";
  }
}

/** The body is larger than the server accepts. */
export class PayloadTooLargeError extends Error {
  constructor(limitBytes: number) {
    super(`the request body is larger than the limit of ${limitBytes} bytes`);
    this.name = "PayloadTooLargeError";
  }
}

/** The API key is missing or wrong. */
export class UnauthorizedError extends Error {
  constructor() {
    super("Incorrect or missing API key: send `Authorization: Bearer <key>`.");
    this.name = "UnauthorizedError";
  }
}

/** The client closed the connection before its request was read or answered: nobody gets the answer. */
export class ClientClosedError extends Error {
  constructor() {
    super("the client closed the connection");
    this.name = "ClientClosedError";
  }
}

/** nginx's status for a client that went away first: logged and counted, never sent, and not a server error. */
export const CLIENT_CLOSED_STATUS = 499;

/** A request the HTTP parser refused (bad syntax, headers too large), answered before any route sees it. */
export class HttpParseError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "HttpParseError";
  }
}

/** The model is not loaded yet. */
export class NotReadyError extends Error {
  constructor(message = "The model is not loaded yet; retry shortly.") {
    super(message);
    this.name = "NotReadyError";
  }
}

interface HttpError {
  status: number;
  type: string;
  code: string | null;
  param: string | null;
  message: string;
  headers?: Record<string, string>;
}

function validationError(err: z.ZodError): HttpError {
  const { message, param } = describeIssues(err.issues);
  return invalid(400, message, param);
}

function invalid(status: number, message: string, param: string | null = null, code: string | null = null): HttpError {
  return { status, type: "invalid_request_error", code, param, message };
}

function httpError(err: unknown): HttpError {
  if (err instanceof z.ZodError) return validationError(err);
  if (err instanceof InvalidRequestError) return invalid(400, err.message, err.param);
  if (err instanceof InvalidMessageError) return invalid(400, err.message, err.param);
  if (err instanceof ChatTemplateError) return invalid(400, err.message, "messages");
  if (err instanceof TextTooLongError) return invalid(400, err.message, null);
  if (err instanceof SpliceError) return invalid(400, err.message, null, err.reason);
  if (err instanceof EngineRequestError) return invalid(400, err.message, err.param);
  if (err instanceof SamplingParamsError) return invalid(400, err.message, err.param);
  if (err instanceof ToolChoiceError) return invalid(400, err.message, err.param);
  if (err instanceof MalformedJsonError) return invalid(400, err.message);
  if (err instanceof UnauthorizedError) {
    return { ...invalid(401, err.message, null, "invalid_api_key"), headers: { "www-authenticate": "Bearer" } };
  }
  if (err instanceof ModelNotFoundError) return invalid(404, err.message, "model", "model_not_found");
  if (err instanceof RouteNotFoundError) return invalid(404, err.message);
  if (err instanceof MethodNotAllowedError) {
    return { ...invalid(405, err.message, null, "method_not_allowed"), headers: { allow: err.allowed.join(", ") } };
  }
  if (err instanceof PayloadTooLargeError) return invalid(413, err.message, null, "request_too_large");
  if (err instanceof ClientClosedError) {
    return invalid(CLIENT_CLOSED_STATUS, err.message, null, "client_closed_request");
  }
  if (err instanceof HttpParseError) return invalid(err.status, err.message, null, "malformed_request");
  if (err instanceof NotReadyError) {
    return { status: 503, type: "server_error", code: "model_not_ready", param: null, message: err.message, headers: { "Retry-After": "1" } };
  }
  if (err instanceof HTTPException) {
    const type = err.status >= 500 ? "server_error" : "invalid_request_error";
    return { status: err.status, type, code: null, param: null, message: err.message || `HTTP ${err.status}` };
  }
  console.error("gym-edge: unexpected error while serving a request:", err);
  const detail = err instanceof Error ? err.message : String(err);
  return { status: 500, type: "server_error", code: "internal_error", param: null, message: `internal server error: ${detail}` };
}

/** The status and OpenAI error body of any error (a stream that fails midway sends the body as an event). */
export function errorPayload(err: unknown): { status: number; body: ErrorBody; headers?: Record<string, string> } {
  const { status, type, code, param, message, headers } = httpError(err);
  return { status, body: { error: { message, type, param, code } }, headers };
}

/** The HTTP response for any error thrown while serving a request: OpenAI's JSON shape, never a stack trace. */
export function errorResponse(err: unknown): Response {
  const { status, body, headers } = errorPayload(err);
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}
