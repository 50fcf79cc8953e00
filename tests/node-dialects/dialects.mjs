// Node clients against llama-host: node dialects.mjs <base-url> <model>
// Prints one JSON line with what each client got; the pytest side (tests/dialects/test_node_real.py) checks it.
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [base, model] = process.argv.slice(2);
const out = {};

const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const created = await client.responses.create({ model, input: "hello", instructions: "Be brief.", max_output_tokens: 5 });
out.sdk = { id: created.id, status: created.status, text: created.output_text, usage: created.usage };
const types = [];
let deltas = "";
const stream = await client.responses.create({ model, input: "hello", max_output_tokens: 4, stream: true });
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
out.sdkStream = { types, deltas };
const followUp = await client.responses.create({ model, input: "and again", previous_response_id: created.id,
  max_output_tokens: 2 });
out.sdkFollowUp = { previous: followUp.previous_response_id, inputTokens: followUp.usage.input_tokens };
const tools = [{ type: "function", name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } }];
const withTools = await client.responses.create({ model, input: "weather?", tools, max_output_tokens: 3 });
out.sdkTools = { status: withTools.status, tools: withTools.tools.map((t) => t.name) };

// The Vercel AI SDK's default OpenAI provider: openai(model) speaks the Responses API
const openai = createOpenAI({ baseURL: `${base}/v1`, apiKey: "unused" });
const generated = await generateText({ model: openai(model), prompt: "hello", maxOutputTokens: 5, maxRetries: 0 });
out.aiGenerate = { text: generated.text, finishReason: generated.finishReason, usage: generated.usage };
const streamed = streamText({ model: openai(model), prompt: "hello", maxOutputTokens: 4, maxRetries: 0 });
let streamedText = "";
for await (const part of streamed.textStream) streamedText += part;
out.aiStream = { text: streamedText, finishReason: await streamed.finishReason };

console.log(JSON.stringify(out));
