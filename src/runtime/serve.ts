/** One way to serve a web-standard fetch handler on Deno, Bun and Node. */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { runtimeName } from "./detect.ts";

export type FetchHandler = (request: Request) => Response | Promise<Response>;

export interface ServeOptions {
  hostname: string;
  /** 0 picks a free port. */
  port: number;
  /**
   * Seconds an idle keep-alive connection stays open; 0 keeps it until the client closes it. Node applies it as
   * given, Bun up to 255 s; Deno has no such setting and keeps idle connections until the client closes them.
   */
  keepAliveTimeout?: number;
  /** The JSON body of the answer to a request the HTTP parser refused (Node only: Deno and Bun answer those themselves). */
  parseErrorBody?: (status: number, message: string) => string;
}

export interface RunningServer {
  hostname: string;
  port: number;
  /**
   * Stops accepting connections and resolves once they are closed. Responses under way get up to `graceMs` to
   * reach their clients; after that, or at once when 0 (the default), the open connections are cut (Deno cannot
   * cut them: it waits for its responses to end).
   */
  close(graceMs?: number): Promise<void>;
}

/** The address or port cannot be listened on; the message says which flag to change. */
export class ListenError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ListenError";
  }
}

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** Starts listening and resolves once the port is bound; rejects with a ListenError when it cannot be. */
export async function serve(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  try {
    switch (runtimeName()) {
      case "deno":
        return await serveDeno(handler, opts);
      case "bun":
        return serveBun(handler, opts);
      default:
        return await serveNode(handler, opts);
    }
  } catch (err) {
    throw listenError(err, opts);
  }
}

// Deno names some errors instead of giving a code.
const CODE_OF_NAME: Record<string, string> = {
  AddrInUse: "EADDRINUSE",
  AddrNotAvailable: "EADDRNOTAVAIL",
  PermissionDenied: "EACCES",
};

/** The runtime's bind or lookup failure (each words them its own way) as one sentence naming the flag to change. */
function listenError(err: unknown, { hostname, port }: ServeOptions): unknown {
  const { code: given, name, message } = (err ?? {}) as { code?: string; name?: string; message?: string };
  const code = given ?? CODE_OF_NAME[name ?? ""];
  const fail = (what: string) => new ListenError(what, { cause: err });
  if (code === "EADDRINUSE" && port !== 0) return fail(`port ${port} on ${hostname} is in use (pass --port)`);
  if (code === "EACCES") return fail(`no permission to listen on ${hostname}:${port} (pass --port above 1023)`);
  // Bun says a port is in use when the host is not this machine's: with port 0 it cannot be in use.
  if (code === "EADDRNOTAVAIL" || code === "EADDRINUSE") {
    return fail(`cannot listen on ${hostname}: not an address of this machine (pass --host)`);
  }
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || /lookup address/.test(message ?? "")) {
    return fail(`cannot listen on ${hostname}: no such host (pass --host)`);
  }
  return err;
}

/** Resolves when `promise` does or after `ms`, whichever comes first, leaving no timer behind. */
async function within(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([promise, new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

function serveDeno(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  return new Promise((resolve) => {
    // Deno.serve has no keep-alive setting; its shutdown() lets responses under way finish.
    const server = g.Deno.serve({
      hostname: opts.hostname,
      port: opts.port,
      onListen: (addr: { hostname: string; port: number }) => {
        resolve({
          hostname: addr.hostname,
          port: addr.port,
          close: (graceMs = 0) => graceMs > 0 ? within(server.shutdown(), graceMs) : server.shutdown(),
        });
      },
    }, handler);
  });
}

function serveBun(handler: FetchHandler, opts: ServeOptions): RunningServer {
  // Bun's idleTimeout (seconds, at most 255, 0: none) also cuts a request that sends nothing for that long, such as
  // a long generation: each request turns it off until its response is sent, then it times the idle connection.
  const idle = Math.min(255, Math.ceil(opts.keepAliveTimeout ?? 0));
  const rearm = (req: Request) => {
    try {
      server.timeout(req, idle);
    } catch { /* the connection is gone */ }
  };
  const server = g.Bun.serve({
    hostname: opts.hostname,
    port: opts.port,
    idleTimeout: idle,
    fetch: async (req: Request) => {
      if (idle > 0) server.timeout(req, 0);
      const res = await handler(req);
      return idle > 0 ? afterBody(res, () => rearm(req)) : res;
    },
  });
  return {
    hostname: opts.hostname,
    port: server.port,
    close: async (graceMs = 0) => {
      if (graceMs > 0) await within(server.stop(), graceMs);
      await server.stop(true);
    },
  };
}

/** The same response, calling `sent` once its body has been read to the end (or dropped). */
function afterBody(res: Response, sent: () => void): Response {
  if (!res.body) {
    sent();
    return res;
  }
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await reader.read();
        if (done) {
          controller.close();
          sent();
        } else controller.enqueue(value);
      } catch (err) {
        controller.error(err);
        sent();
      }
    },
    async cancel(reason) {
      sent();
      await reader.cancel(reason);
    },
  });
  return new Response(body, res);
}

async function serveNode(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  const { createAdaptorServer } = await import("@hono/node-server");
  const server = createAdaptorServer({ fetch: handler, hostname: opts.hostname }) as Server;
  if (opts.keepAliveTimeout !== undefined) {
    server.keepAliveTimeout = opts.keepAliveTimeout * 1000;
    // The headers timer must outlast the keep-alive wait, or it can cut a socket that is being reused.
    server.headersTimeout = Math.max(server.headersTimeout, server.keepAliveTimeout + 1000);
    server.requestTimeout = Math.max(server.requestTimeout, server.headersTimeout);
  }
  if (opts.parseErrorBody) server.on("clientError", answerParseError(opts.parseErrorBody));
  const active = activeResponses(server);
  return await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.hostname, () => {
      server.off("error", reject);
      const port = (server.address() as { port: number }).port;
      resolve({ hostname: opts.hostname, port, close: (graceMs = 0) => closeNode(server, active, graceMs) });
    });
  });
}

/** The responses not yet sent, and a hook for when there are none. */
interface ActiveResponses {
  set: Set<ServerResponse>;
  closing: boolean;
  onEmpty: (() => void) | null;
}

function activeResponses(server: Server): ActiveResponses {
  const active: ActiveResponses = { set: new Set(), closing: false, onEmpty: null };
  server.on("request", (_req: IncomingMessage, res: ServerResponse) => {
    // While closing, each connection ends after its response instead of waiting for another request.
    if (active.closing) res.shouldKeepAlive = false;
    active.set.add(res);
    res.once("close", () => {
      active.set.delete(res);
      if (active.set.size === 0) active.onEmpty?.();
    });
  });
  return active;
}

/** Waits (up to `graceMs`) until every response under way is handed to the kernel, then closes every connection. */
async function closeNode(server: Server, active: ActiveResponses, graceMs: number): Promise<void> {
  active.closing = true;
  for (const res of active.set) if (!res.headersSent) res.shouldKeepAlive = false;
  if (graceMs > 0 && active.set.size > 0) {
    await within(new Promise<void>((resolve) => (active.onEmpty = resolve)), graceMs);
  }
  await new Promise<void>((done) => {
    server.close(() => done());
    server.closeAllConnections();
  });
}

/** Node's answer to a request its parser refused: the same status as Node's own, with a JSON body. */
function answerParseError(body: (status: number, message: string) => string) {
  return (err: Error & { code?: string }, socket: Socket) => {
    if (err.code === "ECONNRESET" || !socket.writable || socket.bytesWritten > 0) {
      socket.destroy();
      return;
    }
    const [status, reason, message] = err.code === "HPE_HEADER_OVERFLOW"
      ? [431, "Request Header Fields Too Large", "the request headers are too large"]
      : err.code === "HPE_CHUNK_EXTENSIONS_OVERFLOW"
      ? [413, "Payload Too Large", "the chunk extensions are too large"]
      : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? [408, "Request Timeout", "the request took too long to arrive"]
      : [400, "Bad Request", `the request is not valid HTTP/1.1 (${err.code ?? err.message})`];
    const text = body(status, message);
    const length = new TextEncoder().encode(text).length;
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n` +
        `Connection: close\r\n\r\n${text}`,
    );
  };
}
