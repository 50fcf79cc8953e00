// The Playground: a chat with one model through POST /v1/chat/completions, the reply streamed as it is generated.
import { HttpError, readSSE } from "./api.js";
import { $, h } from "./dom.js";
import * as fmt from "./format.js";
import { on, store } from "./store.js";

let messages = [];
let controller = null;

function bubble(role, text = "") {
  const body = h("div", { class: "msg-body", text });
  const item = h("li", { class: `msg msg-${role}` }, h("div", { class: "msg-role", text: role === "user" ? "You" : "Assistant" }), body);
  $("transcript").append(item);
  $("pg-empty").hidden = true;
  return { item, body };
}

function scrollDown() {
  const t = $("transcript");
  t.scrollTop = t.scrollHeight;
}

function setStreaming(on) {
  $("pg-send").disabled = on;
  $("pg-stop").disabled = !on;
  $("pg-model").disabled = on;
  $("transcript").setAttribute("aria-busy", on ? "true" : "false");
}

function fillModels() {
  const select = $("pg-model");
  const previous = select.value;
  const usable = store.models.filter((m) => !m.missing && !m.unlisted);
  const models = (usable.length ? usable : store.models).slice().sort((a, b) => (b.state === "loaded") - (a.state === "loaded") || a.name.localeCompare(b.name));
  select.replaceChildren(...models.map((m) => h("option", { value: m.name }, m.state === "loaded" ? `${m.name} (loaded)` : m.name)));
  if (models.some((m) => m.name === previous)) select.value = previous;
}

async function send(text) {
  const model = $("pg-model").value;
  if (!model) return;
  const request = [];
  const system = $("pg-system").value.trim();
  if (system) request.push({ role: "system", content: system });
  messages.push({ role: "user", content: text });
  request.push(...messages);
  bubble("user", text);
  const { item, body } = bubble("assistant");
  item.classList.add("streaming");
  body.textContent = "";
  const thinking = h("details", { class: "thinking", hidden: true }, h("summary", { text: "Reasoning" }), h("div", { class: "thinking-text" }));
  body.before(thinking);
  const cursor = h("span", { class: "cursor-blink", "aria-hidden": "true" });
  const content = h("span", { class: "msg-text" });
  body.append(content, cursor);
  const stats = h("div", { class: "msg-stats" });
  item.append(stats);
  scrollDown();

  const temperature = Number($("pg-temperature").value);
  const maxTokens = Number($("pg-max-tokens").value);
  const payload = { model, messages: request, stream: true, stream_options: { include_usage: true } };
  if (Number.isFinite(temperature)) payload.temperature = temperature;
  if (Number.isFinite(maxTokens) && maxTokens > 0) payload.max_tokens = maxTokens;

  controller = new AbortController();
  setStreaming(true);
  stats.textContent = store.models.find((m) => m.name === model)?.state === "loaded" ? "generating…" : "loading the model…";
  const started = performance.now();
  let firstToken = null;
  let reply = "";
  let usage = null;
  let timings = null;
  let finish = null;
  try {
    await readSSE("/v1/chat/completions", {
      method: "POST", body: payload, signal: controller.signal,
      onEvent: ({ event, data }) => {
        if (data === "[DONE]") return;
        let chunk;
        try { chunk = JSON.parse(data); } catch { return; }
        if (event === "error" || chunk.error) throw new HttpError(500, chunk.error?.message || chunk.message || data);
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.reasoning_content) {
            thinking.hidden = false;
            thinking.lastChild.append(delta.reasoning_content);
          }
          if (delta.content) {
            firstToken ??= performance.now();
            reply += delta.content;
            content.append(delta.content);
            stats.textContent = "generating…";
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        scrollDown();
      },
    });
    messages.push({ role: "assistant", content: reply });
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
      if (reply) messages.push({ role: "assistant", content: reply });
    } else {
      item.classList.add("msg-error");
      body.append(h("div", { class: "error-text", role: "alert", text: `Error: ${err.message}` }));
      messages.pop(); // the question goes unanswered: leave it out of the next request
    }
  } finally {
    controller.abort(); // ends the response if an error event cut the reading short
    cursor.remove();
    item.classList.remove("streaming");
    setStreaming(false);
    controller = null;
  }
  const parts = [];
  const tokens = usage?.completion_tokens ?? timings?.predicted_n;
  if (tokens != null) parts.push(`${tokens} tokens`);
  const speed = timings?.predicted_per_second;
  if (speed) parts.push(`${fmt.decimal(speed, 1)} tok/s`);
  if (firstToken) parts.push(`first token after ${fmt.seconds((firstToken - started) / 1000)}`);
  parts.push(`total ${fmt.seconds((performance.now() - started) / 1000)}`);
  if (finish) parts.push(finish === "length" ? "stopped at max tokens" : finish === "stop" ? "finished" : finish);
  stats.textContent = parts.join(" · ");
  if (!reply && !item.classList.contains("msg-error")) content.textContent = "(empty reply)";
  scrollDown();
  $("pg-input").focus();
}

export const playgroundPanel = {
  init() {
    on("models", fillModels);
    $("composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("pg-input");
      const text = input.value.trim();
      if (!text || controller) return;
      input.value = "";
      send(text);
    });
    $("pg-input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("pg-stop").addEventListener("click", () => controller?.abort());
    $("pg-clear").addEventListener("click", () => {
      controller?.abort();
      messages = [];
      $("transcript").replaceChildren();
      $("pg-empty").hidden = false;
      $("pg-input").focus();
    });
    $("pg-settings").addEventListener("submit", (ev) => ev.preventDefault());
  },
  show() {
    fillModels();
  },
};
