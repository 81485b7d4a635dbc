// The rows' allowed-token masks and kept sets (kernels/gpu-sampler.ts packs and reads them): one buffer of u32 words,
// bound only when a row of the call has a mask or asks for its kept set; calls without either compile
// sample-rows.wgsl with row-words-off.wgsl instead, and pay nothing. The loader puts this file before
// sample-rows.wgsl, whose `maskAt`, `keptAt` and helpers it uses.

@group(0) @binding(5) var<storage, read_write> rowWords: array<u32>;

// Sanitized bits b of token i, or -inf when the row's mask forbids it (bit i & 31 of its word i >> 5 is 0).
fn masked(i: u32, b: u32) -> u32 {
  if (maskAt == 0u) { return b; }
  if (((rowWords[maskAt - 1u + (i >> 5u)] >> (i & 31u)) & 1u) == 0u) { return NEG_INF_BITS; }
  return b;
}

// Writes the row's kept set (finite, within the cut, passing min-p) as a bitmask of ceil(n / 32) words from word
// keptAt - 1: the set the token was drawn from, as the CPU twin's keptIds gives it.
fn storeKept(cutKey: u32, cutId: u32, useMinP: bool) {
  if (keptAt == 0u) { return; }
  let words = (n + 31u) / 32u;
  for (var w = lid; w < words; w += WG) {
    let first = w * 32u;
    let last = min(first + 32u, n);
    var bits = 0u;
    for (var i = first; i < last; i++) {
      let b = rowBits(i);
      if (b != NEG_INF_BITS && within(keyOf(b), i, cutKey, cutId) && passesMinP(b, useMinP)) {
        bits = bits | (1u << (i - first));
      }
    }
    rowWords[keptAt - 1u + w] = bits;
  }
}
