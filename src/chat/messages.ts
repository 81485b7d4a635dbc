/**
 * The conversation as clients send it (OpenAI chat messages and tool definitions, plus the RL token fields),
 * and as the chat template sees it, prepared the way vLLM prepares it.
 */
import { z } from "zod";

/** A list of token ids: non-negative integers. */
export const TokenIds = z.array(z.int().nonnegative());

const ContentPart = z.looseObject({ type: z.string().optional(), text: z.string().optional() });

const ToolCall = z.looseObject({
  id: z.string().optional(),
  type: z.string().optional(),
  function: z.looseObject({
    name: z.string(),
    arguments: z.union([z.string(), z.record(z.string(), z.unknown())]).nullish(),
  }),
});

/** The roles OpenAI accepts; `developer` is its newer name for `system`, and renders as one. */
export const CHAT_ROLES = ["system", "developer", "user", "assistant", "tool"] as const;

// A role shown so that what makes it wrong is visible: "user\u200f", not a "user" that looks right.
function shownRole(role: unknown): string {
  return JSON.stringify(role).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * A message's role, one of `roles`; the error shows the role refused and lists those accepted. Typed as a string:
 * the template renders whatever role it is given, the API decides which it takes.
 */
export function roleField(roles: readonly string[]) {
  const accepted = `one of ${roles.join(", ")}`;
  const error = (issue: { input?: unknown }) =>
    issue.input === undefined ? `a message needs a role, ${accepted}` : `unknown role ${shownRole(issue.input)}: a message's role is ${accepted}`;
  return z.string({ error }).refine((role) => roles.includes(role), { error });
}

/**
 * One chat message; unknown fields are dropped. The token fields carry what the model produced in earlier turns.
 * An unknown role is refused: templates drop messages of roles they do not know, and the text would vanish. Only an
 * assistant message may lack content (it may be tool calls alone).
 */
export const ChatMessage = z.object({
  role: roleField(CHAT_ROLES),
  content: z.union([z.string(), z.array(ContentPart)]).nullish(),
  name: z.string().nullish(),
  tool_calls: z.array(ToolCall).nullish(),
  tool_call_id: z.string().nullish(),
  reasoning_content: z.string().nullish(),
  reasoning: z.string().nullish(),
  prompt_token_ids: TokenIds.nullish(),
  generation_token_ids: TokenIds.nullish(),
}).superRefine(({ role, content }, ctx) => {
  if (content == null && role !== "assistant") ctx.addIssue({ code: "custom", path: ["content"], message: `a ${role} message needs content` });
});
export type ChatMessage = z.infer<typeof ChatMessage>;

/** A tool the model may call (OpenAI `tools[i]`); fields beyond the known ones are kept for the template. */
export const ToolDefinition = z.looseObject({
  type: z.literal("function").default("function"),
  function: z.looseObject({
    name: z.string(),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(),
  }),
});
export type ToolDefinition = z.infer<typeof ToolDefinition>;

/** A message in the form chat templates expect: content a string, tool call arguments an object. */
export type TemplateMessage = Record<string, unknown> & { role: string; content: string };

/** A message the template cannot be given: a content part that is not text, or tool arguments that are not JSON. */
export class InvalidMessageError extends Error {
  constructor(message: string, readonly param: string) {
    super(message);
    this.name = "InvalidMessageError";
  }
}

// Text parts as the Chat Completions and Responses APIs name them.
const TEXT_PART_TYPES = new Set(["text", "input_text", "output_text"]);

function contentText(content: ChatMessage["content"], param: string): string {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.map((part, i) => {
    if (part.type !== undefined && !TEXT_PART_TYPES.has(part.type)) {
      throw new InvalidMessageError(`content part type '${part.type}' is not supported: this model reads text only`, `${param}[${i}].type`);
    }
    if (typeof part.text !== "string") throw new InvalidMessageError("a text content part needs `text`", `${param}[${i}].text`);
    return part.text;
  }).join("\n");
}

// Tool-use templates expect arguments as an object (they serialize it themselves), clients send a JSON string.
function toolCallArguments(args: unknown, param: string): unknown {
  if (typeof args !== "string") return args ?? {};
  if (args.trim() === "") return {};
  try {
    return JSON.parse(args);
  } catch {
    throw new InvalidMessageError("tool call arguments are not valid JSON", param);
  }
}

/** The messages handed to the chat template: text content, parsed tool arguments, and no token fields. */
export function templateMessages(messages: readonly ChatMessage[]): TemplateMessage[] {
  return messages.map((message, i) => {
    const role = message.role === "developer" ? "system" : message.role;
    const out: TemplateMessage = { role, content: contentText(message.content, `messages[${i}].content`) };
    if (message.name != null) out.name = message.name;
    if (message.tool_call_id != null) out.tool_call_id = message.tool_call_id;
    const reasoning = message.reasoning_content ?? message.reasoning;
    if (message.role === "assistant" && reasoning != null) {
      out.reasoning_content = reasoning;
      out.reasoning = reasoning;
    }
    if (message.role === "assistant" && message.tool_calls != null) {
      out.tool_calls = message.tool_calls.map((call, j) => ({
        ...call,
        function: {
          ...call.function,
          arguments: toolCallArguments(call.function.arguments, `messages[${i}].tool_calls[${j}].function.arguments`),
        },
      }));
    }
    return out;
  });
}

/** The tools handed to the chat template: every known field present (null when absent), as vLLM renders them. */
export function templateTools(tools: readonly ToolDefinition[]): Record<string, unknown>[] {
  return tools.map(({ type, function: fn, ...rest }) => {
    const { name, description, parameters, ...fnRest } = fn;
    return {
      type,
      function: { name, description: description ?? null, parameters: parameters ?? null, ...fnRest },
      ...rest,
    };
  });
}
