/**
 * Top-k selection on the CPU in the sampler's rank order (logit descending, then token id ascending) with a heap
 * of k entries, worst on top: one pass over the row, then the heap sorted in place. The sampler uses it for
 * top-k up to HEAP_LIMIT and for the top log-probabilities.
 */

/** Whether (va, ia) ranks after (vb, ib): a lower value, or an equal value with a higher id. */
export function worse(va: number, ia: number, vb: number, ib: number): boolean {
  return va < vb || (va === vb && ia > ib);
}

function siftUp(ids: Int32Array, vals: Float32Array, pos: number, v: number, id: number): void {
  while (pos > 0) {
    const parent = (pos - 1) >> 1;
    if (!worse(v, id, vals[parent], ids[parent])) break;
    ids[pos] = ids[parent];
    vals[pos] = vals[parent];
    pos = parent;
  }
  ids[pos] = id;
  vals[pos] = v;
}

// Puts (v, id) at the root of a heap of `size` (worst on top) and restores the order.
function siftDown(ids: Int32Array, vals: Float32Array, size: number, v: number, id: number): void {
  let pos = 0;
  for (let child = 1; child < size; child = 2 * pos + 1) {
    if (child + 1 < size && worse(vals[child + 1], ids[child + 1], vals[child], ids[child])) child++;
    if (!worse(vals[child], ids[child], v, id)) break;
    ids[pos] = ids[child];
    vals[pos] = vals[child];
    pos = child;
  }
  ids[pos] = id;
  vals[pos] = v;
}

function collectTop(values: Float32Array, n: number, k: number, ids: Int32Array, vals: Float32Array): number {
  let size = 0;
  for (let i = 0; i < n; i++) {
    if (size < k) siftUp(ids, vals, size++, values[i], i);
    // An equal value never displaces: the newcomer's id is higher, so it ranks after.
    else if (values[i] > vals[0]) siftDown(ids, vals, size, values[i], i);
  }
  return size;
}

function sortHeap(ids: Int32Array, vals: Float32Array, size: number): void {
  for (let end = size - 1; end > 0; end--) {
    const v = vals[end];
    const id = ids[end];
    ids[end] = ids[0];
    vals[end] = vals[0];
    siftDown(ids, vals, end, v, id);
  }
}

/**
 * Writes the k first tokens in rank order into ids/vals, best first; returns how many (min(k, n)). `argmax`, the
 * row's first token in rank order when the caller knows it already, answers k = 1 without a pass over the row.
 */
export function selectTop(
  values: Float32Array,
  n: number,
  k: number,
  ids: Int32Array,
  vals: Float32Array,
  argmax = -1,
): number {
  if (k === 1 && argmax >= 0 && n > 0) {
    ids[0] = argmax;
    vals[0] = values[argmax];
    return 1;
  }
  const size = collectTop(values, n, k, ids, vals);
  sortHeap(ids, vals, size);
  return size;
}
