/** What the HTTP app needs from the rest of the server. An interface, so later layers (the engine) can join it. */
import type { ChatTokenizer } from "../chat/template.ts";

/** The served model, its tokenizer, readiness and the server's request limits. */
export interface AppDeps {
  /** The model name clients send as `model` (and see in /v1/models). */
  servedModelName: string;
  /** Where the model came from (a hub id or a directory): `root` in /v1/models; defaults to servedModelName. */
  modelRoot?: string;
  /** The context length: prompt plus generated tokens. */
  maxModelLen: number;
  tokenizer: ChatTokenizer;
  /** Whether the model is loaded and requests can be served. */
  isReady(): boolean;
  /** When set, every route but /health requires `Authorization: Bearer <apiKey>`. */
  apiKey?: string | null;
  /** The largest request body accepted, in bytes (default 32 MiB). */
  maxBodyBytes?: number;
}
