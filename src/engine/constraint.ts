/**
 * A constraint on what a sequence may generate next (a grammar: JSON schema, regex, choice, EBNF, a forced tool
 * call), as the engine asks it for each token. The engine holds one per sequence: it asks for the mask when it
 * builds the row's sampling, calls accept() once the token is sampled, and dispose() when the sequence ends.
 */
export interface TokenConstraint {
  /** Fills `mask` (ceil(vocab/32) words) with the tokens allowed next; returns false when nothing more may follow
   *  (the grammar is complete and accepts no token): the engine then ends the sequence with finish_reason "stop". */
  fillNextMask(mask: Uint32Array): boolean;
  /** Advances past the sampled token. */
  accept(tokenId: number): void;
  /** True once the grammar accepts the output as complete and the stop token is allowed (informational). */
  readonly done: boolean;
  /** Frees native/WASM memory. */
  dispose(): void;
}

/**
 * A sequence's constraint as the engine drives it: the mask of the next token is filled once per token (a step
 * that is retried, or a sequence preempted and recomputed, asks again and gets the same words), and each token is
 * accepted exactly once, when it is appended to the sequence.
 */
export class SequenceConstraint {
  #mask: Uint32Array | null = null;
  #fresh = false;
  #ended = false;
  #disposed = false;

  constructor(readonly constraint: TokenConstraint) {}

  /** The tokens allowed next, as a mask of ceil(vocabSize / 32) words; null once the grammar takes no more. */
  allowed(vocabSize: number): Uint32Array | null {
    if (this.#disposed) return null;
    if (!this.#fresh) {
      this.#mask ??= new Uint32Array(Math.ceil(vocabSize / 32));
      this.#ended = !this.constraint.fillNextMask(this.#mask);
      this.#fresh = true;
    }
    return this.#ended ? null : this.#mask;
  }

  /** Advances past the token just appended to the sequence. */
  accept(tokenId: number): void {
    if (this.#disposed) return;
    this.constraint.accept(tokenId);
    this.#fresh = false;
  }

  /** Whether the grammar takes no more tokens after the latest one (the sequence then stops). */
  ended(vocabSize: number): boolean {
    return this.allowed(vocabSize) === null;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.constraint.dispose();
  }
}
