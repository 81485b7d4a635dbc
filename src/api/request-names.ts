/**
 * The generations in flight by the names a client may abort them by (POST /abort_requests, /abort_request): the
 * request's id (its `x-request-id`, or the one the server gave it) and the id its response carries ("chatcmpl-…").
 * One name may cover several generations (a completion with several prompts).
 */

/** What a name points at: a generation, which can be stopped and tells whether it has ended. */
export interface Abortable {
  abort(): void;
  readonly done: boolean;
}

const byName = new Map<string, Set<Abortable>>();
let addsSinceSweep = 0;

/** Lets `target` be aborted by `name` until it is done; returns the name. */
export function nameRequest(name: string, target: Abortable): string {
  let set = byName.get(name);
  if (!set) byName.set(name, set = new Set());
  set.add(target);
  // Ended generations are dropped now and then, so the map never grows past what is in flight by much.
  if (++addsSinceSweep >= 256) {
    addsSinceSweep = 0;
    for (const [key, targets] of byName) {
      for (const t of targets) if (t.done) targets.delete(t);
      if (targets.size === 0) byName.delete(key);
    }
  }
  return name;
}

/** nameRequest for each of `targets`. */
export function nameRequests(name: string, targets: readonly Abortable[]): string {
  for (const target of targets) nameRequest(name, target);
  return name;
}

/** Aborts every generation still running under each name; returns the names that had one. */
export function abortNamed(names: readonly string[]): string[] {
  const found: string[] = [];
  for (const name of names) {
    const targets = byName.get(name);
    if (!targets) continue;
    byName.delete(name);
    let live = false;
    for (const target of targets) {
      if (target.done) continue;
      live = true;
      target.abort();
    }
    if (live) found.push(name);
  }
  return found;
}
