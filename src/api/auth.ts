/**
 * The API key check (`--api-key`): `Authorization: Bearer <key>` on every route but /health, and /metrics unless
 * `--metrics-api-key-required` (scrapers read it without a key, as vLLM's do). The control routes use the same
 * check with their own key when `--admin-api-key` is set.
 */
import type { MiddlewareHandler } from "hono";
import { UnauthorizedError } from "./errors.ts";

const OPEN_PATHS = new Set(["/health", "/health/"]);

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

// Comparing digests takes the same time whatever the key and the guess share, and leaks no length.
function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** Middleware that rejects requests without the bearer key (401), except on /health and the `except` paths. */
export function requireApiKey(apiKey: string, except: readonly string[] = []): MiddlewareHandler {
  const expected = digest(apiKey);
  const open = new Set([...OPEN_PATHS, ...except.flatMap((p) => [p, `${p}/`])]);
  return async (c, next) => {
    if (open.has(c.req.path)) return next();
    const match = /^Bearer\s+(.+)$/i.exec(c.req.header("authorization") ?? "");
    const presented = await digest(match ? match[1].trim() : "");
    if (!match || !sameDigest(presented, await expected)) throw new UnauthorizedError();
    return next();
  };
}
