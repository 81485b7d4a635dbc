/**
 * Which sequence lives in which runner row. Decoding sequences always occupy rows [0, D) so that a decode step
 * reads one contiguous slice of the cache; prefilling ones live above. Moving a sequence copies its KV.
 */
import type { ModelRunner } from "./model-runner.ts";
import type { Sequence } from "./sequence.ts";

export class RowTable {
  readonly #rows: (Sequence | null)[];

  /** `capacity` must exceed the most sequences running at once by one: moves need a free row. */
  constructor(readonly runner: ModelRunner, capacity: number) {
    this.#rows = new Array(capacity).fill(null);
  }

  get capacity(): number {
    return this.#rows.length;
  }

  /** The sequence in each row (null: free). */
  get occupants(): readonly (Sequence | null)[] {
    return this.#rows;
  }

  /**
   * Places a new sequence in the highest free row among the first k, k being the count of sequences with this one
   * (one of those is free): above the decoding rows, so a prefill that becomes a decoder often needs no move, and
   * never higher than the count of sequences calls for, so that the rows in use (the runner's memory) follow it.
   */
  assign(seq: Sequence): number {
    const taken = this.#rows.reduce((n, s) => n + (s === null ? 0 : 1), 0);
    for (let r = Math.min(this.#rows.length, taken + 1) - 1; r >= 0; r--) {
      if (this.#rows[r] === null) {
        this.#rows[r] = seq;
        seq.row = r;
        return r;
      }
    }
    throw new Error("no free row: the scheduler admitted more sequences than rows");
  }

  /** Rows [0, n) reach the highest row taken: n (0 when every row is free). */
  get reach(): number {
    return this.#rows.findLastIndex((s) => s !== null) + 1;
  }

  /** Frees a sequence's row. */
  release(seq: Sequence): void {
    if (seq.row === null) return;
    this.runner.releaseRow(seq.row);
    this.#rows[seq.row] = null;
    seq.row = null;
  }

  /**
   * Tells the runner again that every free row is empty: a run in flight when a row was released (an aborted
   * request) wrote its tokens there afterwards.
   */
  releaseFree(): void {
    this.#rows.forEach((seq, r) => seq === null && this.runner.releaseRow(r));
  }

  /**
   * Moves the given decoding sequences into rows [0, n) (in the order given) and returns them in row order.
   * Sequences already in place do not move.
   *
   * Movers take the free rows below n first. Only once none is left is a prefilling sequence pushed out of the
   * way, and then a free row above n exists: with at most capacity - 1 rows taken, and every row below n taken, the
   * free one is above.
   */
  gather(decoding: readonly Sequence[]): Sequence[] {
    const n = decoding.length;
    const inPlace = new Set(decoding.filter((s) => s.row !== null && s.row < n));
    const movers = decoding.filter((s) => !inPlace.has(s));
    const targets: number[] = [];
    for (let r = 0; r < n; r++) if (this.#rows[r] === null) targets.push(r);
    for (let r = 0; r < n; r++) if (this.#rows[r] !== null && !inPlace.has(this.#rows[r]!)) targets.push(r);
    movers.forEach((seq, i) => {
      const target = targets[i];
      const occupant = this.#rows[target];
      if (occupant) this.#moveTo(occupant, this.#freeRowAbove(n));
      this.#moveTo(seq, target);
    });
    return this.#rows.slice(0, n) as Sequence[];
  }

  /** The lowest free row at or above n: rows in use stay as few as they can. */
  #freeRowAbove(n: number): number {
    for (let r = n; r < this.#rows.length; r++) if (this.#rows[r] === null) return r;
    throw new Error("no free row to move a sequence into");
  }

  #moveTo(seq: Sequence, to: number): void {
    const from = seq.row!;
    if (from === to) return;
    this.runner.copyRow(from, to, seq.numComputed);
    this.runner.releaseRow(from);
    this.#rows[from] = null;
    this.#rows[to] = seq;
    seq.row = to;
  }
}
