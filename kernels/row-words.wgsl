// The rows' allowed-token masks (kernels/gpu-sampler.ts packs them): one buffer of u32 words, bound only when a row
// of the call has a mask; calls without one compile sample-rows.wgsl with row-words-off.wgsl instead, and pay
// nothing. The loader puts this file before sample-rows.wgsl, whose `maskAt` and NEG_INF_BITS it reads.

@group(0) @binding(5) var<storage, read_write> rowWords: array<u32>;

// Sanitized bits b of token i, or -inf when the row's mask forbids it (bit i & 31 of its word i >> 5 is 0).
fn masked(i: u32, b: u32) -> u32 {
  if (maskAt == 0u) { return b; }
  if (((rowWords[maskAt - 1u + (i >> 5u)] >> (i & 31u)) & 1u) == 0u) { return NEG_INF_BITS; }
  return b;
}
