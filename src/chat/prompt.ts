/**
 * The prompt token ids of a chat request. Chat completions, responses and /tokenize all call `chatPromptIds`, so
 * /tokenize answers exactly the ids generation would run on.
 */
import { z } from "zod";
import { ChatMessage, TokenIds, ToolDefinition } from "./messages.ts";
import { splicedPrompt } from "./splice.ts";
import type { ChatTokenizer } from "./template.ts";

/** The request fields that decide a chat prompt. */
export const ChatPromptFields = {
  messages: z.array(ChatMessage).min(1),
  tools: z.array(ToolDefinition).nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  add_generation_prompt: z.boolean().default(true),
  required_prefix_token_ids: TokenIds.nullish(),
};
export const ChatPromptRequest = z.object(ChatPromptFields);
export type ChatPromptRequest = z.infer<typeof ChatPromptRequest>;

/**
 * The prompt token ids of a chat request: its messages rendered by the chat template, with the model's own tokens
 * (required_prefix_token_ids, or the messages' token fields) spliced in where it produced them.
 */
export function chatPromptIds(tokenizer: ChatTokenizer, request: ChatPromptRequest): number[] {
  const { tools, chat_template_kwargs } = request;
  const options = {
    requiredPrefixTokenIds: request.required_prefix_token_ids,
    addGenerationPrompt: request.add_generation_prompt,
    eosTokenId: tokenizer.eosTokenId,
  };
  return splicedPrompt(request.messages, options, (messages, add_generation_prompt) => {
    return tokenizer.renderChat(messages, { tools, chat_template_kwargs, add_generation_prompt });
  });
}
