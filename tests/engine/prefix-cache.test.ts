/**
 * The prefix cache's block storage: blocks live in shared memory (a runner on the model thread reads and writes
 * them in place), an evicted block's storage serves the next insert, and a reset lets all of it go.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PrefixCache } from "../../src/engine/prefix-cache.ts";

const BLOCK = 4;
const FLOATS_PER_TOKEN = 6;

/** Inserts the block of tokens [start, start + BLOCK) after `parent`, filled with `value`, and drops its reference. */
function insert(cache: PrefixCache, parent: number, tokens: number[], start: number, value: number): number {
  const id = cache.insert(parent, tokens, start, (out) => out.fill(value));
  assert.notEqual(id, null);
  cache.release([id!]);
  return id!;
}

test("blocks are views of shared memory, cut from slabs rather than one allocation each", () => {
  const cache = new PrefixCache({ blockSize: BLOCK, floatsPerToken: FLOATS_PER_TOKEN, capacityBlocks: 8 });
  const tokens = Array.from({ length: 4 * BLOCK }, (_, i) => i + 1);
  let parent = PrefixCache.ROOT;
  const ids: number[] = [];
  for (let b = 0; b < 4; b++) ids.push(parent = insert(cache, parent, tokens, b * BLOCK, b + 1));
  const data = ids.map((id) => cache.data(id));
  for (const [b, d] of data.entries()) {
    assert.ok(d.buffer instanceof SharedArrayBuffer, `block ${b} is in shared memory`);
    assert.equal(d.length, BLOCK * FLOATS_PER_TOKEN);
    assert.ok(d.every((x) => x === b + 1), `block ${b} holds what its fill wrote, untouched by its neighbours`);
  }
  // Slabs grow with the blocks in use: 1, then 1, then 2 blocks; the third and fourth share a buffer.
  assert.equal(data[2].buffer, data[3].buffer);
  assert.notEqual(data[0].buffer, data[2].buffer);
});

test("an evicted block's storage holds the next block inserted, and a reset lets every slab go", () => {
  const cache = new PrefixCache({ blockSize: BLOCK, floatsPerToken: FLOATS_PER_TOKEN, capacityBlocks: 2 });
  const a = [1, 2, 3, 4];
  const b = [5, 6, 7, 8];
  const c = [9, 10, 11, 12];
  const first = insert(cache, PrefixCache.ROOT, a, 0, 1);
  const second = insert(cache, PrefixCache.ROOT, b, 0, 2);
  const freed = cache.data(first);
  const third = insert(cache, PrefixCache.ROOT, c, 0, 3);
  assert.throws(() => cache.data(first), /gone/, "the least recently used block was evicted");
  assert.equal(cache.data(third).buffer, freed.buffer);
  assert.equal(cache.data(third).byteOffset, freed.byteOffset);
  assert.ok(cache.data(third).every((x) => x === 3));
  assert.ok(cache.data(second).every((x) => x === 2), "the block that stayed is intact");

  const kept = cache.data(second).buffer;
  cache.reset();
  const after = insert(cache, PrefixCache.ROOT, a, 0, 4);
  assert.notEqual(cache.data(after).buffer, kept, "after a reset blocks come from new memory");
  assert.notEqual(cache.data(after).buffer, freed.buffer);
});

test("a cache salt keys the first block: other salts and no salt never match it, the same salt does", () => {
  const cache = new PrefixCache({ blockSize: BLOCK, floatsPerToken: FLOATS_PER_TOKEN, capacityBlocks: 8 });
  const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9];
  const salted = cache.insert(PrefixCache.ROOT, tokens, 0, (out) => out.fill(1), "tenant-a");
  const next = cache.insert(salted!, tokens, BLOCK, (out) => out.fill(2), "tenant-a");
  cache.release([salted!, next!]);
  assert.deepEqual(cache.match(tokens, 8, "tenant-a"), [salted, next]);
  assert.deepEqual(cache.match(tokens, 8, "tenant-b"), []);
  assert.deepEqual(cache.match(tokens, 8), [], "the unsalted cache does not see salted blocks");
  const plain = insert(cache, PrefixCache.ROOT, tokens, 0, 3);
  assert.notEqual(plain, salted, "the same tokens unsalted are a block of their own");
  assert.deepEqual(cache.match(tokens, 8), [plain]);
  assert.deepEqual(cache.match(tokens, 8, "tenant-a"), [salted, next], "and leave the salted chain alone");
  // A salt is any string: one that spells a key's separators or tokens matches only itself.
  for (const salt of ["1,2,3,4", ":", "tenant-a:1", "-1:1,2,3,4", ""]) {
    assert.deepEqual(cache.match(tokens, 8, salt), [], `salt ${JSON.stringify(salt)}`);
  }
  const odd = insert(cache, PrefixCache.ROOT, [2, 3, 4, 5], 0, 4);
  assert.deepEqual(cache.match([2, 3, 4, 5], 4, null), [odd]);
  assert.deepEqual(cache.match([2, 3, 4, 5], 4, "1:"), []);
});
