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

