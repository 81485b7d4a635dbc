/**
 * Graceful shutdown of a real server process: answers that finish while it drains reach their clients whole
 * before the connections close.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { startChildServer } from "../support/child-server.ts";

const SLOW = { timeout: 120_000 };

/** The engine's running sequences, from /metrics. */
async function running(base: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("vllm:num_requests_running{"));
  return Number(line?.split(" ").at(-1) ?? 0);
}

test(
  "SIGINT while 3 completions generate: each client gets its whole 200 answer, then the server exits 0",
  SLOW,
  async () => {
    const server = await startChildServer();
    try {
      const answers = Array.from({ length: 3 }, async () => {
        const res = await fetch(`${server.base}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 60, ignore_eos: true, temperature: 0 }),
        });
        return { status: res.status, text: await res.text() };
      });
      // Signal once all three are generating, so that each finishes during the drain.
      for (let i = 0; i < 400 && (await running(server.base)) < 3; i++) await new Promise((r) => setTimeout(r, 25));
      server.signal("SIGINT");
      for (const { status, text } of await Promise.all(answers)) {
        assert.equal(status, 200, text);
        const json = JSON.parse(text);
        assert.equal(json.choices[0].finish_reason, "length");
        assert.equal(json.usage.completion_tokens, 60);
      }
      assert.equal(await server.exited, 0, server.stderr());
    } finally {
      server.signal("SIGKILL");
    }
  },
);
