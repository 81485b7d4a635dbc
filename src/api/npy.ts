/**
 * NumPy's .npy format (version 1.0) for a float32 matrix, base64-encoded: how vLLM's generate route sends
 * `prompt_token_id_logprobs`, which a client reads with `np.load(io.BytesIO(base64.b64decode(...)))`.
 */

const MAGIC = [0x93, ..."NUMPY"].map((c) => typeof c === "number" ? c : c.charCodeAt(0));
/** The header is padded so that the data starts at a multiple of this (what NumPy writes). */
const ALIGN = 64;

/** The .npy file of a row-major little-endian float32 array of `shape`. */
export function npyFloat32(values: Float32Array, shape: readonly number[]): Uint8Array {
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== values.length) throw new RangeError(`npy: shape (${shape.join(", ")}) holds ${size} values, not ${values.length}`);
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${dims}, }`;
  // magic (6) + version (2) + header length (2) + header, ending in a newline.
  const unpadded = 10 + header.length + 1;
  header += " ".repeat((ALIGN - (unpadded % ALIGN)) % ALIGN) + "\n";
  const out = new Uint8Array(10 + header.length + values.length * 4);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  view.setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  const data = 10 + header.length;
  values.forEach((v, i) => view.setFloat32(data + i * 4, v, true));
  return out;
}

/** Standard base64 (with padding) of `bytes`. */
export function base64(bytes: Uint8Array): string {
  let text = "";
  // In slices: String.fromCharCode takes its arguments on the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
