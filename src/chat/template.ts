/**
 * The model's tokenizer and its chat template (its own, or one given with --chat-template): text <-> token ids,
 * and conversations -> prompt token ids.
 */
import { readFileSync } from "node:fs";
import { AutoTokenizer, type PreTrainedTokenizer } from "@huggingface/transformers";
import { type ChatMessage, templateMessages, templateTools, type ToolDefinition } from "./messages.ts";

/** How a conversation is rendered: the request's tools, template variables and whether to open an assistant turn. */
export interface RenderOptions {
  tools?: readonly ToolDefinition[] | null;
  chat_template_kwargs?: Record<string, unknown> | null;
  add_generation_prompt?: boolean;
}

/** The tokenizer directory (or hub id) could not be loaded. */
export class TokenizerLoadError extends Error {
  constructor(readonly source: string, cause: unknown) {
    super(`cannot load a tokenizer from '${source}': ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = "TokenizerLoadError";
  }
}

/** A text so long that its tokens cannot fit the context, refused before the (slow) tokenization. */
export class TextTooLongError extends Error {
  constructor(chars: number, maxModelLen: number) {
    super(
      `This model's maximum context length is ${maxModelLen} tokens, and a text of ${chars} characters cannot fit in it.`,
    );
    this.name = "TextTooLongError";
  }
}

/** The chat template could not render the conversation (no template, or the template rejected the messages). */
export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChatTemplateError";
  }
}

// Template variables a request must not replace: the conversation itself and the choice of template.
const RESERVED_TEMPLATE_NAMES = new Set(["messages", "chat_template"]);

/**
 * The template --chat-template gives: a file's text, or the value itself when it holds a template's characters
 * ({, } or a line break), as vLLM reads the flag. A value like a path that cannot be read is an error.
 */
export function readChatTemplate(value: string): string {
  try {
    return readFileSync(value, "utf8");
  } catch (err) {
    if (/[{}\n]/.test(value)) return value;
    const why = (err as NodeJS.ErrnoException).code === "ENOENT" ? "there is no such file" : (err as Error).message;
    throw new ChatTemplateError(`--chat-template '${value}' looks like a file path, but ${why}`);
  }
}

/** A transformers.js tokenizer with the operations the server needs, in the server's own terms. */
export class ChatTokenizer {
  /** The end-of-sequence token id of the tokenizer's configuration, or null when it names none. */
  readonly eosTokenId: number | null;
  /** One more than the largest token id the tokenizer knows. */
  readonly vocabSize: number;
  readonly #tokenizer: PreTrainedTokenizer;
  /** The template that replaces the tokenizer's own, or null. */
  readonly #chatTemplate: string | null;
  readonly #tokenStrings: string[];
  /** The most characters one token stands for (its byte-level string is at least as long as its text). */
  readonly #longestToken: number;
  #maxModelLen: number | null = null;

  /** `chatTemplate` (Jinja text) replaces the tokenizer's own template wherever a conversation is rendered. */
  constructor(tokenizer: PreTrainedTokenizer, options: { chatTemplate?: string | null } = {}) {
    this.#tokenizer = tokenizer;
    this.#chatTemplate = options.chatTemplate ?? null;
    this.eosTokenId = typeof tokenizer.eos_token_id === "number" ? tokenizer.eos_token_id : null;
    const strings: string[] = [];
    for (const [token, id] of tokenizer.get_vocab()) strings[id] = token;
    this.#tokenStrings = strings;
    this.vocabSize = strings.length;
    this.#longestToken = strings.reduce((max, t) => Math.max(max, t?.length ?? 0), 1);
  }

  /** Loads the tokenizer (tokenizer.json, tokenizer_config.json) of a local model directory, or of a hub id. */
  static async load(source: string, options: { localFilesOnly?: boolean } = {}): Promise<ChatTokenizer> {
    try {
      const tokenizer = await AutoTokenizer.from_pretrained(source, { local_files_only: options.localFilesOnly ?? true });
      return new ChatTokenizer(tokenizer);
    } catch (err) {
      throw new TokenizerLoadError(source, err);
    }
  }

  /** Whether there is a chat template: the tokenizer's, or one that replaces it. */
  get hasChatTemplate(): boolean {
    return this.#chatTemplate !== null || this.#tokenizer.chat_template != null;
  }

  /**
   * Checks that the chat template given in place of the tokenizer's parses, by rendering one user message: a
   * syntax error is a ChatTemplateError now rather than a 400 on every chat request. An error the template raises
   * itself (it wants a system message first, say) is for the requests to meet.
   */
  checkChatTemplate(): void {
    const template = this.#chatTemplate;
    if (template === null) return;
    try {
      this.#tokenizer.apply_chat_template([{ role: "user", content: "Hello" }], {
        chat_template: template,
        add_generation_prompt: true,
        tokenize: false,
      });
    } catch (err) {
      // transformers.js caches a template once it has compiled, before rendering it: a template that is not in its
      // cache after a failure did not compile. (The parser's errors do not tell themselves apart: an unclosed block
      // is a TypeError.)
      const compiled = (this.#tokenizer as unknown as { _compiled_template_cache?: unknown })._compiled_template_cache;
      if (compiled instanceof Map && !compiled.has(template)) {
        const message = err instanceof Error ? err.message : String(err);
        throw new ChatTemplateError(`the chat template given with --chat-template does not parse: ${message}`);
      }
    }
  }

  /** Whether `id` is a token id the tokenizer knows. */
  isKnownId(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && this.#tokenStrings[id] !== undefined;
  }

  /**
   * Refuses, from now on, texts too long to fit `maxModelLen` tokens whatever their tokenization: tokenizing a
   * 10-million-character text takes minutes, so a client could stall the server with one request.
   */
  limitToContext(maxModelLen: number): void {
    this.#maxModelLen = maxModelLen;
  }

  /** The token ids of `text`; with addSpecialTokens (the default) the tokenizer's own BOS/EOS rules apply. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    if (this.#maxModelLen !== null && text.length > this.#maxModelLen * this.#longestToken) {
      throw new TextTooLongError(text.length, this.#maxModelLen);
    }
    return this.#tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true });
  }

  /** The text of `ids`; special tokens are kept unless skipSpecialTokens. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    // transformers.js rejects an empty list; an empty list is the empty text.
    if (ids.length === 0) return "";
    return this.#tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The vocabulary strings of `ids` (byte-level, e.g. "Ġto"); "" for an id the tokenizer does not know. */
  tokenStrings(ids: readonly number[]): string[] {
    return ids.map((id) => this.#tokenStrings[id] ?? "");
  }

  /** The text of a conversation rendered by the model's chat template. */
  renderChatText(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
    if (!this.hasChatTemplate) throw new ChatTemplateError("the model's tokenizer has no chat template");
    const variables: Record<string, unknown> = {};
    for (const [name, value] of Object.entries(options.chat_template_kwargs ?? {})) {
      if (!RESERVED_TEMPLATE_NAMES.has(name)) variables[name] = value;
    }
    const conversation = templateMessages(messages);
    const tools = options.tools == null ? null : templateTools(options.tools);
    try {
      return this.#tokenizer.apply_chat_template(conversation, {
        ...variables,
        chat_template: this.#chatTemplate ?? undefined,
        add_generation_prompt: options.add_generation_prompt ?? true,
        tools,
        tokenize: false,
      });
    } catch (err) {
      throw new ChatTemplateError(`the chat template failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** The prompt token ids of a conversation rendered by the model's chat template (no special tokens added). */
  renderChat(messages: readonly ChatMessage[], options: RenderOptions = {}): number[] {
    return this.encode(this.renderChatText(messages, options), { addSpecialTokens: false });
  }
}
