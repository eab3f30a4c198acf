// The status page: every few seconds, GET /v1/models (replicas, device, dtype, backend,
// weights), /v1/routing (the router's live queue) and /v1/traffic (totals; recent latency
// and throughput), one card per model.
import { apiKey, call, formatMs, setUpKeyField, showError } from "/pages/api.js";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
let timer = null;

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function show(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function modelCard(model, routing, traffic) {
  const card = document.createElement("article");
  card.className = "model";
  card.dataset.model = model.id;
  const title = document.createElement("h3");
  title.textContent = model.id;
  card.append(title);
  if (model.weights === "random") {
    const warning = document.createElement("p");
    warning.className = "warning";
    warning.textContent = "Random weights: a demo checkpoint, its scores are meaningless.";
    card.append(warning);
  }
  const facts = document.createElement("dl");
  facts.className = "facts";
  const running = model.replicas;
  const target = running === null ? null : running + (model.replicas_starting || 0);
  fact(facts, "Replicas (running / target)", `${show(running)} / ${show(target)}`);
  fact(facts, "Device", show(model.device));
  fact(facts, "Dtype", show(model.dtype));
  fact(facts, "Backend", `${show(model.backend)}${model.quantization && model.quantization !== "none" ? ` (${model.quantization})` : ""}`);
  fact(facts, "Weights", show(model.weights));
  fact(facts, "Queued tokens", show(routing && routing.queued_tokens));
  fact(facts, "p50 latency", formatMs(traffic && traffic.p50_ms));
  fact(facts, "p99 latency", formatMs(traffic && traffic.p99_ms));
  fact(facts, "Docs/s", traffic ? traffic.docs_per_s.toFixed(1) : "–");
  fact(facts, "Requests (window)", show(traffic && traffic.requests));
  card.append(facts);
  return card;
}

async function refresh() {
  const [models, routing, traffic] = await Promise.all([
    call("/v1/models"),
    call("/v1/routing"),
    call("/v1/traffic"),
  ]);
  const failed = [models, routing, traffic].find((answer) => !answer.ok);
  showError($("error"), failed ? failed.error : null);
  if (traffic.ok) {
    const t = traffic.json;
    $("total-requests").textContent = String(t.requests);
    const byType = Object.entries(t.errors_by_type).map(([k, n]) => `${k} ${n}`).join(", ");
    $("total-errors").textContent = byType ? `${t.errors} (${byType})` : String(t.errors);
    $("totals-hint").textContent =
      `Since the answering ingress replica started ${Math.round(t.uptime_s)} s ago; ` +
      `latency and docs/s over the last ${t.window_s} s, measured at the ingress.`;
  }
  if (models.ok) {
    const cards = models.json.data.map((model) =>
      modelCard(
        model,
        routing.ok ? routing.json.models[model.id] : null,
        traffic.ok ? traffic.json.models[model.id] : null,
      ),
    );
    $("models").replaceChildren(...cards);
  }
  if (!failed) $("updated").textContent = new Date().toLocaleTimeString();
  clearTimeout(timer); // a refresh the key field started: one timer stays
  timer = setTimeout(refresh, REFRESH_MS);
}

const { authRequired } = await setUpKeyField(refresh);
if (authRequired && !apiKey()) {
  showError($("error"), { type: "unauthorized", message: "enter an API key to see the cluster" });
} else {
  await refresh();
}
document.body.dataset.ready = "true";
