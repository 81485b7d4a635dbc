/** Reading a request body as JSON: a body that is not JSON is its own error, apart from schema mismatches. */
import type { Context } from "hono";
import { MalformedJsonError } from "./errors.ts";

/** The request body parsed as JSON, whatever the content type says. */
export async function readJson(c: Context): Promise<unknown> {
  const text = await c.req.text();
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new MalformedJsonError(text.trim() === "" ? "it is empty; send a JSON object" : (err as Error).message);
  }
}


/** The body as a JSON object, or {} when there is none (routes that take their options from the query too). */
export async function optionalJson(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new MalformedJsonError((err as Error).message);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new MalformedJsonError("expected a JSON object");
  }
  return value as Record<string, unknown>;
}
