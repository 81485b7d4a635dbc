// Moves tokens' K and V between one layer's cache rows and packed blocks: K rows [rows, kvHeads, headDim,
// capacity] (slots last), V rows [rows, kvHeads, capacity, headDim]; a packed block is [kvHeads][stride][headDim]
// of which each head's first `length` tokens count: the engine graph's new K/V ([batch, kvHeads, seq, headDim],
// stride = seq) or one layer of the canonical layout (stride = length).
// Into rows (the graph's new tokens, writeKv) or out of rows (readKv, re-laying out rows). Workgroup row y does
// entry y; invocations stride over its heads x tokens x dims in packed order.

struct Shape {
  heads: u32,
  headDim: u32,
  capacity: u32,
  entries: u32,
  // 1: packed -> rows; 0: rows -> packed.
  intoRows: u32,
  // Words added to every packed offset per layer (one packed buffer for all layers), else 0.
  layerStride: u32,
  pad0: u32,
  pad1: u32,
}

struct Entry {
  row: u32,
  start: u32,
  length: u32,
  stride: u32,
  keyOffset: u32,
  valueOffset: u32,
}

@group(0) @binding(0) var<uniform> shape: Shape;
@group(0) @binding(1) var<uniform> layer: vec4u;
@group(0) @binding(2) var<storage, read> entries: array<Entry>;
@group(0) @binding(3) var<storage, read_write> keyRows: array<u32>;
@group(0) @binding(4) var<storage, read_write> valueRows: array<u32>;
@group(0) @binding(5) var<storage, read_write> packedKeys: array<u32>;
@group(0) @binding(6) var<storage, read_write> packedValues: array<u32>;

@compute @workgroup_size(256)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) groups: vec3u,
) {
  if (wid.y >= shape.entries) { return; }
  let e = entries[wid.y];
  let d = shape.headDim;
  let cap = shape.capacity;
  let base = layer.x * shape.layerStride;
  let total = shape.heads * e.length * d;
  for (var n = wid.x * 256u + lid; n < total; n += groups.x * 256u) {
    let h = n / (e.length * d);
    let t = (n / d) % e.length;
    let i = n % d;
    let packed = (h * e.stride + t) * d + i;
    let run = e.row * shape.heads + h;
    let k = (run * d + i) * cap + e.start + t;
    let v = (run * cap + e.start + t) * d + i;
    if (shape.intoRows != 0u) {
      keyRows[k] = packedKeys[base + e.keyOffset + packed];
      valueRows[v] = packedValues[base + e.valueOffset + packed];
    } else {
      packedKeys[base + e.keyOffset + packed] = keyRows[k];
      packedValues[base + e.valueOffset + packed] = valueRows[v];
    }
  }
}
