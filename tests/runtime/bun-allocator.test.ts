/**
 * Bun's allocator setting: on Bun the program runs itself again with MIMALLOC_PURGE_DELAY=60000 (freed memory kept for
 * reuse instead of handed back and faulted in again every step), and that second process ends with the first.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { bunAllocatorEnv } from "../../src/runtime/bun-install.ts";
import { runtimeName } from "../../src/runtime/detect.ts";
import { startChildServer } from "../support/child-server.ts";

const SLOW = { timeout: 120_000 };

test("the setting is asked for on Bun run from files, and only where the environment lacks it", () => {
  assert.deepEqual(bunAllocatorEnv("bun", {}, true), { MIMALLOC_PURGE_DELAY: "60000" });
  assert.equal(bunAllocatorEnv("bun", { MIMALLOC_PURGE_DELAY: "10" }, true), null, "a value the user set is kept");
  assert.equal(bunAllocatorEnv("bun", {}, false), null, "a compiled binary does not run itself again");
  assert.equal(bunAllocatorEnv("node", {}, true), null);
  assert.equal(bunAllocatorEnv("deno", {}, true), null);
});

/** Processes whose parent is `pid` (Linux /proc). */
function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** True while `pid` runs (a zombie, ended but not yet reaped, does not). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

test(
  "served from a checkout: on Bun by a second process with MIMALLOC_PURGE_DELAY=60000 that ends when the first is killed",
  { ...SLOW, skip: process.platform !== "linux" && "reads /proc" },
  async () => {
    const server = await startChildServer();
    const said = /starting again with MIMALLOC_PURGE_DELAY=60000/.test(server.stderr());
    try {
      assert.equal((await fetch(`${server.base}/health`)).status, 200);
      if (runtimeName() !== "bun") {
        assert.equal(said, false, server.stderr());
        return;
      }
      assert.ok(said, server.stderr());
      const [serving] = childrenOf(server.child.pid!);
      assert.ok(serving !== undefined, "the serving process is a child of the one started");
      const env = fs.readFileSync(`/proc/${serving}/environ`, "utf8").split("\0");
      assert.ok(env.includes("MIMALLOC_PURGE_DELAY=60000"), "the serving process has the setting");
      server.signal("SIGKILL");
      await server.exited;
      const deadline = performance.now() + 10_000;
      while (alive(serving) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.equal(alive(serving), false, "the serving process ended with the one that ran it");
    } finally {
      server.signal("SIGKILL");
      await server.exited;
    }
  },
);
