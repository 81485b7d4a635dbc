/**
 * Messages between threads carry no typed array (runtime/wire.ts): each travels as its buffer and place, and comes
 * back as the same kind of array with the same values; shared memory stays shared.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { fromWire, toWire } from "../../src/runtime/wire.ts";

/** Every typed array anywhere in `value`. */
function typedArrays(value: unknown): ArrayBufferView[] {
  if (ArrayBuffer.isView(value)) return [value];
  if (typeof value !== "object" || value === null) return [];
  return Object.values(value).flatMap(typedArrays);
}

/** What a thread receives: the message cloned, its transfer list moved. */
function post(message: unknown): unknown {
  const transfer: ArrayBuffer[] = [];
  const wire = toWire(message, transfer);
  assert.deepEqual(typedArrays(wire), [], "no typed array in the message");
  return fromWire(structuredClone(wire, { transfer }));
}

describe("thread messages", () => {
  test("typed arrays come back as the same kind with the same values, nested in objects and arrays", () => {
    const message = {
      rows: [{ id: 1, mask: Uint32Array.of(1, 2, 3) }, { id: 2, mask: null }],
      kept: Int32Array.of(-5, 7),
      big: BigInt64Array.of(9n),
      floats: new Float32Array([0.5, -1.25]),
    };
    const got = post(message) as typeof message;
    assert.ok(got.rows[0].mask instanceof Uint32Array && got.kept instanceof Int32Array && got.floats instanceof Float32Array);
    assert.ok(got.big instanceof BigInt64Array);
    assert.deepEqual(got, message);
  });

  test("a view into shared memory stays a view of the same memory", () => {
    const shared = new Float32Array(new SharedArrayBuffer(64));
    const got = post({ out: shared.subarray(4, 8) }) as { out: Float32Array };
    got.out[0] = 42;
    assert.equal(shared[4], 42);
    assert.equal(got.out.length, 4);
  });

  test("a view into part of a buffer travels as a copy of its own, and the sender keeps its buffer", () => {
    const whole = Float32Array.from({ length: 16 }, (_, i) => i);
    const transfer: ArrayBuffer[] = [];
    const wire = toWire({ part: whole.subarray(2, 5) }, transfer);
    assert.equal(transfer.length, 1);
    assert.notEqual(transfer[0], whole.buffer);
    const got = fromWire(structuredClone(wire, { transfer })) as { part: Float32Array };
    assert.deepEqual([...got.part], [2, 3, 4]);
    assert.equal(whole.byteLength, 64, "not detached");
  });

  test("an array whose whole buffer is in the transfer list moves without a copy", () => {
    const ids = Int32Array.of(1, 2, 3);
    const transfer = [ids.buffer];
    const wire = toWire({ ids }, transfer) as { ids: { buffer: ArrayBuffer } };
    assert.deepEqual(transfer, [ids.buffer]);
    assert.equal(wire.ids.buffer, ids.buffer);
  });

  test("messages without typed arrays are passed on as they are", () => {
    const inputs = [{ row: 0, tokens: [1, 2, 3], start: 0 }];
    assert.equal(toWire(inputs), inputs);
    assert.equal(fromWire(inputs), inputs);
  });
});
