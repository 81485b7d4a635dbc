// Applies the logits processors to the few tokens they touch, in place, in vLLM's order: logit_bias, the
// min_tokens mask, the repetition penalty, then frequency and presence penalties (folded by the host into one
// amount per token). One invocation per edit; a (row, token) has at most one edit, so none of them race.
// Each edit keeps the token's original (sanitized) logit, for raw log-probabilities.
// The Edit struct is edit-record.wgsl's, put before this file by the loader.

const NEG_INF_BITS: u32 = 0xff800000u;
const MASK: u32 = 1u;
const REPEATED: u32 = 2u;

struct Count {
  edits: u32,
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

@group(0) @binding(0) var<uniform> count: Count;
@group(0) @binding(1) var<storage, read_write> logits: array<u32>;
@group(0) @binding(2) var<storage, read_write> edits: array<Edit>;

fn sanitize(b: u32) -> u32 {
  if ((b & 0x7fffffffu) > 0x7f800000u) { return NEG_INF_BITS; }
  if (b == 0x7f800000u) { return 0x7f7fffffu; }
  if (b == 0x80000000u) { return 0u; }
  return b;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let e = gid.x + gid.y * groups.x * 256u;
  if (e >= count.edits) { return; }
  let edit = edits[e];
  let orig = sanitize(logits[edit.index]);
  edits[e].orig = orig;
  if ((edit.flags & MASK) != 0u || orig == NEG_INF_BITS) {
    logits[edit.index] = NEG_INF_BITS;
    return;
  }
  var l = bitcast<f32>(orig) + edit.bias;
  if ((edit.flags & REPEATED) != 0u) { l = select(l * edit.repetition, l / edit.repetition, l > 0.0); }
  l = l - edit.subtract;
  logits[edit.index] = sanitize(bitcast<u32>(l));
}
