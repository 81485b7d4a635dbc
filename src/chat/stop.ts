/**
 * Stop strings, matched on the generated text rather than on tokens: "\n\n" ends generation whether the model
 * produced it as one token or two, and a stop string split across tokens is still found. Text that could be the
 * start of a stop string is held back until the next piece decides, so a stream never shows a stop string that
 * the final text does not contain.
 */

/** What one piece of text gives: the text safe to emit now, and the stop string that ended the output, if any. */
export interface StopCheck {
  text: string;
  stop: string | null;
}

/** Watches generated text for any of a request's stop strings. */
export class StopStringMatcher {
  readonly #stops: string[];
  readonly #includeStopString: boolean;
  #held = "";
  #stopped: string | null = null;

  constructor(stops: readonly string[], options: { includeStopString?: boolean } = {}) {
    this.#stops = stops.filter((s) => s.length > 0);
    this.#includeStopString = options.includeStopString ?? false;
  }

  /** Whether there is anything to match. */
  get active(): boolean {
    return this.#stops.length > 0;
  }

  /** The stop string that ended the output, once one has. */
  get stopped(): string | null {
    return this.#stopped;
  }

  /**
   * Adds a piece of generated text. Once a stop string is found the output ends: the text up to it (and the stop
   * string itself with includeStopString) is emitted, and everything after it is dropped.
   */
  push(piece: string): StopCheck {
    if (this.#stopped !== null) return { text: "", stop: null };
    if (this.#stops.length === 0) return { text: piece, stop: null };
    const text = this.#held + piece;
    let at = -1;
    let found: string | null = null;
    for (const stop of this.#stops) {
      const i = text.indexOf(stop);
      if (i >= 0 && (at < 0 || i < at || (i === at && stop.length > found!.length))) {
        at = i;
        found = stop;
      }
    }
    if (found !== null) {
      this.#held = "";
      this.#stopped = found;
      return { text: text.slice(0, at + (this.#includeStopString ? found.length : 0)), stop: found };
    }
    const keep = this.#partialStopLength(text);
    this.#held = text.slice(text.length - keep);
    return { text: text.slice(0, text.length - keep), stop: null };
  }

  /** The text held back when generation ends without a stop string. */
  flush(): string {
    const held = this.#held;
    this.#held = "";
    return this.#stopped === null ? held : "";
  }

  // The longest end of `text` that is the beginning of some stop string.
  #partialStopLength(text: string): number {
    return Math.max(0, ...this.#stops.map((stop) => partialTagLength(text, stop)));
  }
}

/** The length of the longest end of `text` that begins `tag`. */
export function partialTagLength(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (text.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}
