/**
 * The engine's bookkeeping invariants: rows, the scheduler's queues and the prefix cache's references must agree
 * with the sequences they describe. Checked after every step in tests; a broken one names what is wrong.
 */
import type { PrefixCache } from "./prefix-cache.ts";
import type { Sequence } from "./sequence.ts";

/** What the audit reads: the engine's own state, between steps. */
export interface EngineState {
  running: readonly Sequence[];
  waiting: readonly Sequence[];
  held: readonly Sequence[];
  /** The sequence in each runner row (null: free). */
  rows: readonly (Sequence | null)[];
  maxNumSeqs: number;
  cache: PrefixCache;
  /** Sequences the engine can still find by id (abort): every one not finished. */
  live: readonly Sequence[];
}

/** Every invariant the state breaks, as sentences (empty: sound). */
export function auditEngine(state: EngineState): string[] {
  const problems: string[] = [];
  const fail = (what: string) => problems.push(what);
  const { running, waiting, held, rows } = state;
  const name = (seq: Sequence) => `sequence ${seq.id}`;

  const queued = new Set<Sequence>();
  for (const [list, status] of [[running, "running"], [waiting, "waiting"], [held, "waiting"]] as const) {
    for (const seq of list) {
      if (queued.has(seq)) fail(`${name(seq)} is queued twice`);
      queued.add(seq);
      if (seq.status !== status) fail(`${name(seq)} is ${seq.status} in the ${status} list`);
    }
  }
  if (running.length > state.maxNumSeqs) fail(`${running.length} sequences run, more than ${state.maxNumSeqs}`);
  if (running.length > rows.length - 1) fail(`${running.length} sequences run in ${rows.length} rows: no row is left for a move`);

  // Rows: exactly the running sequences, each where it says it is.
  const seated = new Set<Sequence>();
  rows.forEach((seq, r) => {
    if (!seq) return;
    if (seated.has(seq)) fail(`${name(seq)} holds two rows`);
    seated.add(seq);
    if (seq.row !== r) fail(`${name(seq)} sits in row ${r} but says row ${seq.row}`);
    if (seq.status !== "running") fail(`${name(seq)} holds row ${r} while ${seq.status}`);
  });
  for (const seq of running) if (!seated.has(seq)) fail(`${name(seq)} runs without a row (row ${seq.row})`);
  for (const seq of [...waiting, ...held]) {
    if (seq.row !== null) fail(`${name(seq)} waits but keeps row ${seq.row}`);
    if (seq.numComputed !== 0) fail(`${name(seq)} waits with ${seq.numComputed} tokens computed`);
    if (seq.blockIds.length) fail(`${name(seq)} waits holding ${seq.blockIds.length} cache blocks`);
  }
  for (const seq of running) {
    if (seq.numComputed > seq.length) fail(`${name(seq)} computed ${seq.numComputed} of ${seq.length} tokens`);
    if (seq.blockIds.length * state.cache.blockSize > seq.numComputed) {
      fail(`${name(seq)} holds ${seq.blockIds.length} blocks for ${seq.numComputed} computed tokens`);
    }
  }

  // The engine's lookups hold the queued sequences and nothing else.
  const live = new Set(state.live);
  for (const seq of queued) if (!live.has(seq)) fail(`${name(seq)} is queued but the engine lost it`);
  for (const seq of live) {
    if (!queued.has(seq)) fail(`${name(seq)} is ${seq.status} and in no queue: it would never end`);
  }

  // The prefix cache: each block's references are the sequences holding it.
  const holders = new Map<number, number>();
  for (const seq of running) for (const id of seq.blockIds) holders.set(id, (holders.get(id) ?? 0) + 1);
  for (const [id, refs] of state.cache.referenceCounts()) {
    const count = holders.get(id) ?? 0;
    if (refs !== count) fail(`cache block ${id} has ${refs} references but ${count} sequences hold it`);
  }
  return problems;
}
