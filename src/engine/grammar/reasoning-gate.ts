/**
 * A constraint that waits for the model's reasoning to end: with a reasoning parser on, the grammar applies to the
 * content after `</think>`, as vLLM does. `qwen3` reasons only when the output opens with `<think>`: the first
 * token may be that tag or what the grammar allows; `deepseek_r1` reasons from the start. Both tags must be single
 * tokens of the vocabulary (they are in Qwen3's and DeepSeek-R1's); otherwise the grammar applies from the start.
 */
import type { TokenConstraint } from "../constraint.ts";

/** How the reasoning section is marked in token ids. */
export interface ReasoningTags {
  /** `<think>`; null: the output starts inside the reasoning (deepseek_r1). */
  open: number | null;
  close: number;
}

type Phase = "opening" | "reasoning" | "content";

export class ReasoningGate implements TokenConstraint {
  #phase: Phase;

  constructor(readonly inner: TokenConstraint, readonly tags: ReasoningTags) {
    this.#phase = tags.open === null ? "reasoning" : "opening";
  }

  fillNextMask(mask: Uint32Array): boolean {
    if (this.#phase === "reasoning") {
      mask.fill(0xffffffff);
      return true;
    }
    const more = this.inner.fillNextMask(mask);
    if (this.#phase === "opening") {
      const open = this.tags.open!;
      mask[open >>> 5] |= 1 << (open & 31);
      return true;
    }
    return more;
  }

  accept(tokenId: number): void {
    if (this.#phase === "opening") {
      if (tokenId === this.tags.open) {
        this.#phase = "reasoning";
        return;
      }
      this.#phase = "content";
    } else if (this.#phase === "reasoning") {
      if (tokenId === this.tags.close) this.#phase = "content";
      return;
    }
    this.inner.accept(tokenId);
  }

  get done(): boolean {
    return this.#phase === "content" && this.inner.done;
  }

  dispose(): void {
    this.inner.dispose();
  }
}
