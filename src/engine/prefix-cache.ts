/**
 * The prefix cache: full blocks of KV keyed by their whole token prefix (and the request's cache salt, mixed into the
 * first block's key, so that requests with different salts never share a block), shared across requests, bounded in
 * bytes, evicted least-recently-used once no sequence references them, and tagged with the weights version. It holds copies
 * of blocks: a running sequence's KV lives in its row of the model runner, and is copied in from here at admission.
 */

interface Block {
  id: number;
  key: string;
  parent: number;
  data: Float32Array;
  refs: number;
  lastUsed: number;
  children: Set<number>;
}

export interface PrefixCacheStats {
  /** Prompt tokens looked up, and how many of them were found cached. */
  queriedTokens: number;
  hitTokens: number;
  evictions: number;
  blocks: number;
  capacityBlocks: number;
}

const ROOT = -1;

/** Most bytes one slab of block storage takes (a slab holds one block at least). */
const SLAB_BYTES = 64 * 2 ** 20;

/** Block store for automatic prefix caching. */
export class PrefixCache {
  readonly blockSize: number;
  readonly floatsPerBlock: number;
  #capacity: number;
  #blocks = new Map<number, Block>();
  #byKey = new Map<string, number>();
  #nextId = 0;
  #clock = 0;
  #version = 0;
  #stats = { queriedTokens: 0, hitTokens: 0, evictions: 0 };
  /** Storage of evicted blocks, reused by the next inserts. */
  #free: Float32Array[] = [];
  /** The slab new blocks are cut from, and how many blocks it has given out; blocks cut from slabs so far. */
  #slab: Float32Array = new Float32Array(0);
  #slabUsed = 0;
  #allocated = 0;

  constructor(opts: { blockSize: number; floatsPerToken: number; capacityBlocks: number }) {
    this.blockSize = opts.blockSize;
    this.floatsPerBlock = opts.blockSize * opts.floatsPerToken;
    this.#capacity = Math.max(0, Math.floor(opts.capacityBlocks));
  }

  get bytesPerBlock(): number {
    return this.floatsPerBlock * 4;
  }

  /** Weights version the cached KV belongs to. */
  get version(): number {
    return this.#version;
  }

  get capacityBlocks(): number {
    return this.#capacity;
  }

  get usedBlocks(): number {
    return this.#blocks.size;
  }

  /** Sum of reference counts over all blocks (zero when no sequence holds any). */
  get totalRefs(): number {
    let n = 0;
    for (const b of this.#blocks.values()) n += b.refs;
    return n;
  }

  /** Each block's reference count, by id. */
  referenceCounts(): Map<number, number> {
    return new Map([...this.#blocks.values()].map((b) => [b.id, b.refs]));
  }

  /** Changes the capacity, evicting unreferenced blocks to fit; returns whether it fits now. */
  resize(capacityBlocks: number): boolean {
    this.#capacity = Math.max(0, Math.floor(capacityBlocks));
    while (this.#blocks.size > this.#capacity && this.#evictOne());
    this.#free.length = Math.min(this.#free.length, Math.max(0, this.#capacity - this.#blocks.size));
    return this.#blocks.size <= this.#capacity;
  }

  /** Longest chain of cached full blocks that prefixes `tokens` under `salt`, using at most `maxTokens` tokens. */
  match(tokens: readonly number[], maxTokens: number, salt: string | null = null): number[] {
    const ids: number[] = [];
    let parent = ROOT;
    for (let end = this.blockSize; end <= Math.min(maxTokens, tokens.length); end += this.blockSize) {
      const id = this.#byKey.get(this.#key(parent, tokens, end - this.blockSize, end, salt));
      if (id === undefined) break;
      ids.push(id);
      parent = id;
    }
    return ids;
  }

  /** Records a prompt lookup for the hit-rate statistics. */
  countLookup(queriedTokens: number, hitTokens: number): void {
    this.#stats.queriedTokens += queriedTokens;
    this.#stats.hitTokens += hitTokens;
  }

  /** KV floats of a block (blockSize tokens, the runner's readKv layout). */
  data(id: number): Float32Array {
    const b = this.#blocks.get(id);
    if (!b) throw new Error(`prefix-cache block ${id} is gone`);
    return b.data;
  }

  /** Takes a reference on each block: referenced blocks are never evicted. */
  acquire(ids: readonly number[]): void {
    const now = ++this.#clock;
    for (const id of ids) {
      const b = this.#blocks.get(id);
      if (!b) throw new Error(`prefix-cache block ${id} is gone`);
      b.refs++;
      b.lastUsed = now;
    }
  }

  /** Drops a reference on each block (blocks already dropped by a reset are skipped). */
  release(ids: readonly number[]): void {
    for (const id of ids) {
      const b = this.#blocks.get(id);
      if (b && b.refs > 0) b.refs--;
    }
  }

  /**
   * Stores the block of `tokens[start, start+blockSize)` following block `parent` (ROOT for the first, which `salt`
   * keys too) and takes a reference on it. `fill` writes its KV. Returns the block id, or null when the cache has no
   * room.
   */
  insert(
    parent: number,
    tokens: readonly number[],
    start: number,
    fill: (out: Float32Array) => void,
    salt: string | null = null,
  ): number | null {
    const key = this.#key(parent, tokens, start, start + this.blockSize, salt);
    const existing = this.#byKey.get(key);
    if (existing !== undefined) {
      this.acquire([existing]);
      return existing;
    }
    if (parent !== ROOT && !this.#blocks.has(parent)) return null;
    while (this.#blocks.size >= this.#capacity) if (!this.#evictOne()) return null;
    const data = this.#free.pop() ?? this.#cut();
    fill(data);
    const id = this.#nextId++;
    this.#blocks.set(id, { id, key, parent, data, refs: 1, lastUsed: ++this.#clock, children: new Set() });
    this.#byKey.set(key, id);
    this.#blocks.get(parent)?.children.add(id);
    return id;
  }

  /** Forgets every block and moves to a new weights version (KV of old weights is never reused). */
  reset(version = this.#version): void {
    this.#blocks.clear();
    this.#byKey.clear();
    this.#version = version;
    [this.#free, this.#slab, this.#slabUsed, this.#allocated] = [[], new Float32Array(0), 0, 0];
  }

  stats(): PrefixCacheStats {
    return { ...this.#stats, blocks: this.#blocks.size, capacityBlocks: this.#capacity };
  }

  static readonly ROOT = ROOT;

  /**
   * A block's key: its parent and tokens; a first block's also holds the salt (a later block's parent is already
   * salted). The tokens part holds only digits and commas, so the salt, whatever its characters, cannot make one
   * key equal another's.
   */
  #key(parent: number, tokens: readonly number[], start: number, end: number, salt: string | null): string {
    const ids = tokens.slice(start, end).join(",");
    return parent === ROOT && salt !== null ? `${parent}@${salt}:${ids}` : `${parent}:${ids}`;
  }

  /**
   * Storage for a new block, cut from slabs of shared memory that grow with the blocks in use: no allocation per
   * block for the garbage collector to chase, and a runner on another thread reads and writes blocks in place.
   */
  #cut(): Float32Array {
    const n = this.floatsPerBlock;
    if (this.#slabUsed * n >= this.#slab.length) {
      const most = Math.max(1, Math.floor(SLAB_BYTES / this.bytesPerBlock));
      const blocks = Math.max(1, Math.min(most, this.#allocated, this.#capacity - this.#allocated));
      this.#slab = new Float32Array(new SharedArrayBuffer(blocks * this.bytesPerBlock)) as Float32Array;
      this.#slabUsed = 0;
    }
    this.#allocated++;
    return this.#slab.subarray(n * this.#slabUsed, n * ++this.#slabUsed);
  }

  /** Evicts the least recently used unreferenced block that has no children. */
  #evictOne(): boolean {
    let victim: Block | null = null;
    for (const b of this.#blocks.values()) {
      if (b.refs === 0 && b.children.size === 0 && (!victim || b.lastUsed < victim.lastUsed)) victim = b;
    }
    if (!victim) return false;
    this.#blocks.delete(victim.id);
    this.#byKey.delete(victim.key);
    this.#free.push(victim.data);
    this.#blocks.get(victim.parent)?.children.delete(victim.id);
    this.#stats.evictions++;
    return true;
  }
}
