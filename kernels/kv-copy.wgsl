// Copies token ranges of one layer's K and V between cache rows (a prefix forked to the n samples of a prompt,
// a sequence moved to another row). Rows are [rows, kvHeads, headDim, capacity] ("dim-slot", slots last) or
// [rows, kvHeads, capacity, headDim] ("slot-dim"), each of K and V in its own; elements are 32-bit words.
// Workgroup row y does copy y; invocations stride over its heads x dims x tokens in memory order.
// The host forbids a copy whose destination overlaps any copy's source or destination, so order never matters.

struct Layout {
  heads: u32,
  headDim: u32,
  capacity: u32,
  copies: u32,
  keyDimSlot: u32,
  valueDimSlot: u32,
  pad0: u32,
  pad1: u32,
}

struct RangeCopy {
  fromRow: u32,
  fromStart: u32,
  toRow: u32,
  toStart: u32,
  length: u32,
}

@group(0) @binding(0) var<uniform> shape: Layout;
@group(0) @binding(1) var<storage, read> copies: array<RangeCopy>;
@group(0) @binding(2) var<storage, read_write> keys: array<u32>;
@group(0) @binding(3) var<storage, read_write> values: array<u32>;

// Word index of (row, head, token, dim).
fn wordAt(dimSlot: bool, row: u32, h: u32, t: u32, i: u32) -> u32 {
  let run = row * shape.heads + h;
  if (dimSlot) { return (run * shape.headDim + i) * shape.capacity + t; }
  return (run * shape.capacity + t) * shape.headDim + i;
}

// Element e of a copy of `length` tokens as (head, token, dim), in the order the layout stores them.
fn element(dimSlot: bool, e: u32, length: u32) -> vec3u {
  let d = shape.headDim;
  if (dimSlot) { return vec3u(e / (length * d), e % length, (e / length) % d); }
  return vec3u(e / (length * d), (e / d) % length, e % d);
}

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3u,
) {
  if (wid.y >= shape.copies) { return; }
  let c = copies[wid.y];
  let total = shape.heads * shape.headDim * c.length;
  let keyDimSlot = shape.keyDimSlot != 0u;
  let valueDimSlot = shape.valueDimSlot != 0u;
  for (var e = wid.x * 256u + lid; e < total; e += groups.x * 256u) {
    let k = element(keyDimSlot, e, c.length);
    keys[wordAt(keyDimSlot, c.toRow, k.x, c.toStart + k.y, k.z)] = keys[wordAt(keyDimSlot, c.fromRow, k.x, c.fromStart + k.y, k.z)];
    let v = element(valueDimSlot, e, c.length);
    values[wordAt(valueDimSlot, c.toRow, v.x, c.toStart + v.y, v.z)] =
      values[wordAt(valueDimSlot, c.fromRow, v.x, c.fromStart + v.y, v.z)];
  }
}
