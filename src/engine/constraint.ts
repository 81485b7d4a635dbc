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
