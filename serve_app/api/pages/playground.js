// The playground: reads the form, calls POST /v1/rerank as any client would, and shows the
// ranking with the service's own account of it (model header, routing, usage) or its error.
import { apiKey, call, formatMs, setUpKeyField, showError } from "/pages/api.js";

const $ = (id) => document.getElementById(id);
const ROUTERS = ["auto", "cascade"];

async function loadModels() {
  const answer = await call("/v1/models");
  if (!answer.ok) {
    showError($("error"), answer.error);
    return;
  }
  const select = $("model");
  const chosen = select.value;
  for (const option of [...select.options]) {
    if (!ROUTERS.includes(option.value)) option.remove();
  }
  for (const model of answer.json.data) {
    select.append(new Option(model.id, model.id));
  }
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "auto";
  const random = answer.json.data.filter((m) => m.weights === "random").map((m) => m.id);
  const warning = $("weights-warning");
  warning.hidden = random.length === 0;
  warning.textContent = random.length
    ? `Demo checkpoints: ${random.length === answer.json.data.length ? "every model has" : random.join(", ") + " have"} random weights, so scores and rankings are meaningless.`
    : "";
  showError($("error"), null);
}

function requestBody() {
  const model = $("model").value;
  const body = {
    model,
    query: $("query").value,
    documents: $("documents").value.split("\n").filter((line) => line.trim() !== ""),
    return_documents: true,
  };
  if (model === "auto") {
    for (const [id, field] of [["max-latency", "max_latency_ms"], ["min-ndcg", "min_ndcg"]]) {
      const value = $(id).value.trim();
      if (value !== "") body[field] = Number(value);
    }
  }
  return body;
}

function describeRouting(routing) {
  if (!routing) return "–";
  const parts = [routing.policy];
  if (routing.stages) parts.push(`stages ${routing.stages.join(" → ")}`);
  if (routing.predicted_ms !== undefined && routing.predicted_ms !== null) {
    parts.push(`predicted ${formatMs(routing.predicted_ms)}`);
  }
  if (routing.budget_met !== undefined) {
    parts.push(routing.budget_met ? "budget met" : "budget not met");
  }
  return parts.join(" · ");
}

function showRanking(body, answer) {
  const list = $("ranking");
  list.replaceChildren();
  for (const result of answer.json.results) {
    const item = document.createElement("li");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.relevance_score.toFixed(4);
    const index = document.createElement("span");
    index.className = "index";
    index.textContent = `#${result.index}`;
    const text = document.createElement("span");
    text.className = "text";
    const full = result.document ? result.document.text : body.documents[result.index];
    if (result.span) {
      // A chunked document: mark the window it was scored by. The span counts code
      // points (Python's string offsets), not JavaScript's UTF-16 units.
      const chars = Array.from(full);
      const { start, end } = result.span;
      const passage = document.createElement("mark");
      passage.textContent = chars.slice(start, end).join("");
      text.append(chars.slice(0, start).join(""), passage, chars.slice(end).join(""));
      const chunks = document.createElement("span");
      chunks.className = "chunks";
      chunks.textContent = `best of ${result.chunks} windows`;
      item.append(score, " ", index, " ", chunks, " ", text);
    } else {
      text.textContent = full;
      item.append(score, " ", index, " ", text);
    }
    list.append(item);
  }
  $("served-by").textContent = answer.headers.get("x-rerank-model") || answer.json.model;
  $("routing").textContent = describeRouting(answer.json.routing);
  $("latency").textContent = formatMs(answer.ms);
  const usage = answer.json.usage;
  $("usage").textContent =
    `${usage.documents} documents, ${usage.total_tokens} tokens, ${usage.windows} windows`;
  $("cost").textContent = "…";
  $("result").hidden = false;
}

async function showCost() {
  const answer = await call("/v1/usage");
  $("cost").textContent = answer.ok
    ? `$${answer.json.cost_usd.toFixed(6)} for this key so far (${answer.json.requests} requests)`
    : `unavailable (${answer.error.message})`;
}

async function rerank(event) {
  event.preventDefault();
  const button = $("rerank");
  button.disabled = true;
  const body = requestBody();
  try {
    const answer = await call("/v1/rerank", { method: "POST", body });
    if (!answer.ok) {
      $("result").hidden = true;
      showError($("error"), answer.error);
      return;
    }
    showError($("error"), null);
    showRanking(body, answer);
    await showCost();
  } finally {
    button.disabled = false;
  }
}

function showAutoFields() {
  $("auto-fields").hidden = $("model").value !== "auto";
}

$("rerank-form").addEventListener("submit", rerank);
$("model").addEventListener("change", showAutoFields);
showAutoFields();
const { authRequired } = await setUpKeyField(loadModels);
if (!authRequired || apiKey()) await loadModels();
document.body.dataset.ready = "true";
