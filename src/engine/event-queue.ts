/** A single-consumer async queue: the engine pushes, the request handler iterates. */
export class EventQueue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #waiter: (() => void) | null = null;
  #closed = false;
  #error: unknown = null;

  /** Adds an item (ignored once closed). */
  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    this.#wake();
  }

  /** Ends the stream after the items already pushed; with an error, iteration throws it after them. */
  close(error?: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    if (error !== undefined) this.#error = error;
    this.#wake();
  }

  get closed(): boolean {
    return this.#closed;
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    while (true) {
      if (this.#items.length) {
        yield this.#items.shift()!;
        continue;
      }
      if (this.#closed) {
        if (this.#error !== null) throw this.#error;
        return;
      }
      await new Promise<void>((resolve) => (this.#waiter = resolve));
    }
  }
}
