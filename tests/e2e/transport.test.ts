/**
 * The HTTP transport of a real server on loopback: a body over the limit gets its 413 even while the client is still
 * sending, requests the parser refuses get OpenAI's error shape where the runtime allows it, clients that hang up
 * are logged as 499 (not server errors), and idle keep-alive connections last as long as --keep-alive-timeout says.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as http from "node:http";
import * as net from "node:net";
import { ServerConfig } from "../../src/config.ts";
import type { Logger } from "../../src/log.ts";
import { runtimeName } from "../../src/runtime/detect.ts";
import { type StartedServer, startServer } from "../../src/server.ts";
import { testCacheDir } from "../support/served.ts";

const SLOW = { timeout: 120_000 };
const BIG = 33 * 1024 * 1024;

/** A raw HTTP/1.1 connection: requests one after another on one socket, and when the server closes it. */
class RawConnection {
  #buffer = "";
  #wake: (() => void) | null = null;
  readonly closed: Promise<number>;

  private constructor(private socket: net.Socket) {
    const opened = performance.now();
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => {
      this.#buffer += d;
      this.#wake?.();
    });
    socket.on("error", () => {});
    this.closed = new Promise((resolve) => socket.on("close", () => resolve(performance.now() - opened)));
  }

  static async open(port: number): Promise<RawConnection> {
    const socket = net.connect(port, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    return new RawConnection(socket);
  }

  /** Sends `raw` and resolves with the status and body (as sent) of the whole response, or null if the socket closes. */
  async send(raw: string): Promise<{ status: number; body: string } | null> {
    this.#buffer = "";
    this.socket.write(raw);
    for (let i = 0; i < 400; i++) {
      const end = this.#buffer.indexOf("\r\n\r\n");
      const length = /content-length: *(\d+)/i.exec(this.#buffer.slice(0, end));
      const whole = length
        ? this.#buffer.length >= end + 4 + Number(length[1])
        : this.#buffer.endsWith("\r\n0\r\n\r\n");
      if (end >= 0 && whole) return { status: Number(this.#buffer.slice(9, 12)), body: this.#buffer.slice(end + 4) };
      if (this.socket.destroyed) return null;
      await Promise.race([new Promise<void>((resolve) => (this.#wake = resolve)), this.closed, sleep(50)]);
    }
    return null;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Request log lines, as the server writes them. */
const lines: string[] = [];
const capture: Logger = { debug() {}, info: (m) => lines.push(m), warn() {}, error: (m) => lines.push(m) };

async function loggedAs(id: string): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const line = lines.find((l) => l.startsWith(`request ${id} `));
    if (line) return line;
    await sleep(25);
  }
  assert.fail(`no log line for ${id}`);
}

function start(flags: Record<string, unknown> = {}): Promise<StartedServer> {
  return startServer(ServerConfig.parse({ port: 0, device: "cpu", cacheDir: testCacheDir(), ...flags }), capture);
}

/** POSTs a body of `BIG` bytes with node:http (Content-Length given) and resolves with the answer. */
function uploadWithHttp(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      port,
      host: "127.0.0.1",
      method: "POST",
      path: "/v1/completions",
      headers: { "content-length": BIG },
    });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    });
    req.on("error", reject);
    req.end(new Uint8Array(BIG).fill(32));
  });
}

describe("one server's transport edge", () => {
  let server: StartedServer;
  let base: string;

  before(async () => {
    server = await start();
    await server.ready;
    base = `http://127.0.0.1:${server.port}`;
  });
  after(async () => await server.close());

  test(
    "a 33 MiB upload gets the 413 in OpenAI's shape, with or without Content-Length, from fetch and node:http",
    SLOW,
    async () => {
      const chunked = () =>
        new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < 33; i++) controller.enqueue(new Uint8Array(1024 * 1024).fill(32));
            controller.close();
          },
        });
      const viaFetch = async (body: BodyInit) => {
        const res = await fetch(`${base}/v1/completions`, { method: "POST", body, duplex: "half" } as RequestInit);
        return { status: res.status, body: await res.text() };
      };
      for (let i = 0; i < 2; i++) {
        for (
          const answer of [
            await viaFetch(new Uint8Array(BIG).fill(32)),
            await uploadWithHttp(server.port),
            await viaFetch(chunked()),
          ]
        ) {
          assert.equal(answer.status, 413, answer.body);
          const { error } = JSON.parse(answer.body);
          assert.equal(error.type, "invalid_request_error");
          assert.equal(error.code, "request_too_large");
        }
      }
    },
  );

  test("requests the HTTP parser refuses get OpenAI's error shape (Node; Deno and Bun answer them themselves)", {
    skip: runtimeName() !== "node" && "Deno and Bun have no hook for the parser's answer",
  }, async () => {
    for (
      const [raw, status] of [
        ["NOT-A-METHOD / HTTP/1.1\r\nHost: x\r\n\r\n", 400],
        [`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(64 * 1024)}\r\n\r\n`, 431],
      ] as const
    ) {
      const conn = await RawConnection.open(server.port);
      const answer = await conn.send(raw);
      conn.destroy();
      assert.equal(answer?.status, status, raw.slice(0, 20));
      assert.equal(JSON.parse(answer!.body).error.type, "invalid_request_error");
    }
  });

  test(
    "a client that hangs up mid-upload, or mid-stream, is logged and counted as 499, not as a server error",
    SLOW,
    async () => {
      const conn = await RawConnection.open(server.port);
      void conn.send(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Id: gone-mid-upload\r\n" +
          'Content-Length: 100000\r\n\r\n{"prompt": "hi", ',
      );
      await sleep(200);
      conn.destroy();
      const aborted = new AbortController();
      const res = await fetch(`${base}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": "gone-mid-stream" },
        body: JSON.stringify({ prompt: "hi", max_tokens: 500, ignore_eos: true, stream: true }),
        signal: aborted.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      aborted.abort();
      await reader.cancel().catch(() => {});
      assert.match(await loggedAs("gone-mid-upload"), /^request gone-mid-upload POST \/v1\/completions 499 /);
      assert.match(await loggedAs("gone-mid-stream"), /^request gone-mid-stream POST \/v1\/completions 499 /);
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /gym_edge:http_requests_total\{[^}]*route="\/v1\/completions",status="499"\} 2/);
      assert.doesNotMatch(metrics, /route="\/v1\/completions",status="5\d\d"/);
    },
  );

  test(
    "idle keep-alive: the default keeps a connection past Node's old 5 s; --keep-alive-timeout 1 closes it",
    SLOW,
    async () => {
      const short = await start({ keepAliveTimeout: 1 });
      try {
        await short.ready;
        const kept = await RawConnection.open(server.port);
        const cut = await RawConnection.open(short.port);
        const health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        assert.equal((await kept.send(health))?.status, 200);
        assert.equal((await cut.send(health))?.status, 200);
        // Bun checks idle connections every 4 s or so; Deno has no setting.
        const cutWithinMs = runtimeName() === "bun" ? 6000 : 3000;
        const closedAfter = runtimeName() === "deno"
          ? null
          : await Promise.race([cut.closed, sleep(cutWithinMs).then(() => -1)]);
        await sleep(6000 - (closedAfter ?? 0));
        assert.equal(
          (await kept.send(health))?.status,
          200,
          "the idle connection is still open and serves a second request",
        );
        if (closedAfter !== null) {
          // Bun's sockets time out on a 4 s tick, so a 1 s timeout ends at the next tick: anywhere within it.
          const earliestMs = runtimeName() === "bun" ? 0 : 900;
          assert.ok(
            closedAfter >= earliestMs && closedAfter < cutWithinMs,
            `closed after ${closedAfter} ms`,
          );
        }
        kept.destroy();
        cut.destroy();
      } finally {
        await short.close();
      }
    },
  );
});
