/** Runs async jobs one at a time, in the order they were queued. */
export class RunQueue {
  #tail: Promise<unknown> = Promise.resolve();

  /** Queues `job` behind every job queued before it; a failed job does not stop the ones after it. */
  run<T>(job: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(job);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}
