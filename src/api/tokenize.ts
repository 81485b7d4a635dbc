/** POST /tokenize and POST /detokenize (at the root, as vLLM serves them). */
import { Hono } from "hono";
import { chatPromptIds } from "../chat/prompt.ts";
import { readJson } from "./body.ts";
import type { AppDeps } from "./deps.ts";
import { InvalidRequestError } from "./errors.ts";
import { assertServedModel } from "./models.ts";
import {
  DetokenizeRequest,
  type DetokenizeResponse,
  TokenizeChatRequest,
  TokenizePromptRequest,
  type TokenizeResponse,
} from "./schemas.ts";

// A body with `messages` is a chat request, as in vLLM; anything else must be a prompt request.
function isChatBody(body: unknown): boolean {
  return typeof body === "object" && body !== null && "messages" in body;
}

/** The tokenize routes. */
export function tokenizeRoutes(deps: AppDeps): Hono {
  const { tokenizer } = deps;
  const routes = new Hono();

  routes.post("/tokenize", async (c) => {
    const body = await readJson(c);
    const request = isChatBody(body) ? TokenizeChatRequest.parse(body) : TokenizePromptRequest.parse(body);
    assertServedModel(deps, request.model);
    const tokens = "messages" in request
      ? chatPromptIds(tokenizer, request)
      : tokenizer.encode(request.prompt, { addSpecialTokens: request.add_special_tokens });
    const response: TokenizeResponse = {
      count: tokens.length,
      max_model_len: deps.maxModelLen,
      tokens,
      token_strs: request.return_token_strs ? tokenizer.tokenStrings(tokens) : null,
    };
    return c.json(response);
  });

  routes.post("/detokenize", async (c) => {
    const request = DetokenizeRequest.parse(await readJson(c));
    assertServedModel(deps, request.model);
    const unknown = request.tokens.findIndex((id) => !tokenizer.isKnownId(id));
    if (unknown >= 0) {
      throw new InvalidRequestError(
        `token id ${request.tokens[unknown]} is outside the vocabulary (${tokenizer.vocabSize} tokens)`,
        `tokens[${unknown}]`,
      );
    }
    const response: DetokenizeResponse = { prompt: tokenizer.decode(request.tokens) };
    return c.json(response);
  });

  return routes;
}
