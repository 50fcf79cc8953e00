// LM Studio's JavaScript SDK, unchanged, against a host: `node sdk_flow.mjs <ws base url> <scenario>`.
// Prints one JSON object (what the scenario saw) for tests/lmstudio/test_sdk_js.py to check.
import { LMStudioClient } from "@lmstudio/sdk";

const [baseUrl, scenario, passkey] = process.argv.slice(2);
const client = new LMStudioClient({ baseUrl, ...(passkey ? { clientPasskey: passkey } : {}) });
const out = {};

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return String(error?.message ?? error);
  }
}

const scenarios = {
  // README: list models, model() on demand, respond, complete, stream, stats, info, context, tokens
  async readme() {
    out.downloaded = (await client.system.listDownloadedModels()).map(m => [m.modelKey, m.type]);
    out.loadedBefore = (await client.llm.listLoaded()).map(m => m.identifier);
    const model = await client.llm.model("tiny", { verbose: false, ttl: 90 });
    out.identifier = model.identifier;
    out.loadedAfter = (await client.llm.listLoaded()).map(m => m.identifier);
    out.contextLength = await model.getContextLength();
    out.info = await model.getModelInfo();
    const result = await model.respond("What is the meaning of life?", { maxTokens: 8 });
    out.respond = { content: result.content, stats: result.stats, modelKey: result.modelInfo.modelKey };
    const completion = await model.complete("Once upon a time,", { maxTokens: 6 });
    out.complete = { content: completion.content, stats: completion.stats };
    const prediction = model.respond([{ role: "system", content: "be brief" }, { role: "user", content: "hi" }],
                                     { maxTokens: 10 });
    const fragments = [];
    for await (const fragment of prediction) fragments.push(fragment.content);
    const streamed = await prediction.result();
    out.stream = { fragments, content: streamed.content, stats: streamed.stats };
    out.tokens = await model.tokenize("hello world");
    out.tokenCount = await model.countTokens("hello world");
  },
  async structured() {
    const model = await client.llm.model("tiny", { verbose: false });
    const schema = { type: "object", properties: { answer: { enum: ["yes", "no"] } }, required: ["answer"],
                     additionalProperties: false };
    const result = await model.respond("Yes or no?", { maxTokens: 400, structured: { type: "json", jsonSchema: schema } });
    out.content = result.content;
  },
  async cancel() {
    const model = await client.llm.model("tiny-long", { verbose: false });
    const prediction = model.respond("Go on forever");  // no limit: the runner would fill its 32k context
    const fragments = [];
    for await (const fragment of prediction) {
      fragments.push(fragment.content);
      if (fragments.length === 3) await prediction.cancel();
    }
    out.stats = (await prediction.result()).stats;
    out.fragments = fragments.length;
  },
  async abort() {
    const model = await client.llm.model("tiny-long", { verbose: false });
    const controller = new AbortController();
    const prediction = model.respond("Go on forever", { signal: controller.signal });
    let fragments = 0;
    for await (const _ of prediction) {
      if (++fragments === 2) controller.abort();
    }
    out.stats = (await prediction.result()).stats;
  },
  async embedding() {
    const model = await client.embedding.model("tiny-embed", { verbose: false });
    out.embedding = (await model.embed("hello")).embedding;
    out.contextLength = await model.getContextLength();
    out.loaded = (await client.embedding.listLoaded()).map(m => m.identifier);
  },
  async unload() {
    const model = await client.llm.model("tiny", { verbose: false });
    await model.unload();
    out.loaded = (await client.llm.listLoaded()).map(m => m.identifier);
    out.again = await errorOf(client.llm.unload("tiny"));
  },
  async errors() {
    out.unknown = await errorOf(client.llm.model("no-such-model", { verbose: false }));
    out.wrongDomain = await errorOf(client.llm.model("tiny-embed", { verbose: false }));
    out.noneLoaded = await errorOf(client.llm.model());
    out.stillWorks = (await client.system.listDownloadedModels()).length;
  },
  async models() {
    out.downloaded = (await client.system.listDownloadedModels()).map(m => m.modelKey);
  },
};

await scenarios[scenario]();
console.log(JSON.stringify(out));
