/** One way to serve a web-standard fetch handler on Deno, Bun and Node. */
import { runtimeName } from "./detect.ts";

export type FetchHandler = (request: Request) => Response | Promise<Response>;

export interface ServeOptions {
  hostname: string;
  /** 0 picks a free port. */
  port: number;
}

export interface RunningServer {
  hostname: string;
  port: number;
  /** Stops accepting connections and resolves once the listener is closed. */
  close(): Promise<void>;
}

// deno-lint-ignore no-explicit-any
const g = globalThis as any;

/** Starts listening and resolves once the port is bound. */
export function serve(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  switch (runtimeName()) {
    case "deno":
      return serveDeno(handler, opts);
    case "bun":
      return Promise.resolve(serveBun(handler, opts));
    default:
      return serveNode(handler, opts);
  }
}

function serveDeno(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  return new Promise((resolve) => {
    const server = g.Deno.serve({
      hostname: opts.hostname,
      port: opts.port,
      onListen: (addr: { hostname: string; port: number }) => {
        resolve({ hostname: addr.hostname, port: addr.port, close: () => server.shutdown() });
      },
    }, handler);
  });
}

function serveBun(handler: FetchHandler, opts: ServeOptions): RunningServer {
  // Bun's default idle timeout (10 s) would cut long generations; 0 disables it.
  const server = g.Bun.serve({ hostname: opts.hostname, port: opts.port, fetch: handler, idleTimeout: 0 });
  return { hostname: opts.hostname, port: server.port, close: () => Promise.resolve(server.stop(true)) };
}

async function serveNode(handler: FetchHandler, opts: ServeOptions): Promise<RunningServer> {
  const { serve: nodeServe } = await import("@hono/node-server");
  return new Promise((resolve) => {
    const server = nodeServe({ fetch: handler, hostname: opts.hostname, port: opts.port }, (info) => {
      resolve({
        hostname: opts.hostname,
        port: info.port,
        close: () =>
          new Promise<void>((done) => {
            const s = server as unknown as { closeAllConnections?: () => void; close: (cb: () => void) => void };
            s.close(() => done());
            s.closeAllConnections?.();
          }),
      });
    });
  });
}
