/**
 * collectGarbage (runtime/gc.ts) runs a full collection on every runtime: an object only a WeakRef points to is gone
 * after it, and the heap the garbage held is given back.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { collectGarbage, freeBuffer } from "../../src/runtime/gc.ts";

const turn = () => new Promise((resolve) => setTimeout(resolve, 10));

describe("collectGarbage", () => {
  test("collects an object nothing holds, and can be called again", async () => {
    // Built in a function of its own, so that no local of this one keeps it alive.
    const weak = (() => new WeakRef({ payload: new Array(1000).fill("x") }))();
    // A WeakRef's target lives to the end of the job that made it.
    await turn();
    assert.equal(collectGarbage(), true);
    await turn();
    assert.equal(weak.deref(), undefined, "the unreachable object was collected");
    assert.equal(collectGarbage(), true);
  });

  test("objects still reachable survive it", async () => {
    const kept = { payload: [1, 2, 3] };
    const weak = new WeakRef(kept);
    await turn();
    collectGarbage();
    await turn();
    assert.equal(weak.deref(), kept);
  });
});

describe("freeBuffer", () => {
  const frees = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === "function";

  test("frees an ArrayBuffer where the runtime can (its views read as empty), and leaves it whole elsewhere", () => {
    const data = new Float32Array(1024).fill(1.5);
    freeBuffer(data.buffer);
    if (frees) assert.equal(data.length, 0);
    else assert.deepEqual([data.length, data[1023]], [1024, 1.5]);
    freeBuffer(data.buffer); // twice: no error
  });

  test("leaves shared memory alone (other threads may read it)", () => {
    const shared = new Float32Array(new SharedArrayBuffer(64)).fill(2);
    freeBuffer(shared.buffer);
    assert.deepEqual([shared.length, shared[15]], [16, 2]);
  });
});
