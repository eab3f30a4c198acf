// The pages' one way to the service: the public JSON API on this origin, with the key (when
// the service asks for one) kept in this tab's session storage and sent as a Bearer header:
// never in a URL or a cookie. Shared by the playground (/) and the status page (/status).

const KEY_STORE = "rerank-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

// One API call. Resolves (never rejects) to {ok, status, json, headers, ms, error}: `error` is
// the API's own {type, message} when it sent one, else one made from what came back.
export async function call(path, { method = "GET", body, withKey = true } = {}) {
  const headers = { "x-client-name": "rerank-pages" };
  const key = apiKey();
  if (withKey && key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (e) {
    const message = `the service could not be reached (${e.message})`;
    return { ok: false, status: 0, error: { type: "network_error", message } };
  }
  const text = await response.text();
  const ms = performance.now() - started;
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null; // a proxy's plain-text answer: shown as it came
  }
  const out = { ok: response.ok, status: response.status, json, headers: response.headers, ms };
  if (!response.ok) {
    const apiError = json && json.error && typeof json.error.message === "string";
    out.error = apiError
      ? json.error
      : { type: `http_${response.status}`, message: text.trim() || `HTTP ${response.status}` };
  }
  return out;
}

// The "API key" field: hidden until the service answers a keyless call with 401 (keys off:
// it stays hidden). `onChange` runs when the key is changed.
export async function setUpKeyField(onChange) {
  const field = document.getElementById("key-field");
  const input = document.getElementById("api-key");
  input.value = apiKey();
  input.addEventListener("change", () => {
    setApiKey(input.value.trim());
    onChange();
  });
  const probe = await call("/v1/models", { withKey: false });
  field.hidden = probe.status !== 401;
  return { authRequired: probe.status === 401 };
}

export function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.textContent = "";
  const kind = document.createElement("strong");
  kind.textContent = `${error.type}: `;
  element.append(kind, error.message);
  element.hidden = false;
}

export function formatMs(ms) {
  return ms === null || ms === undefined ? "–" : `${ms.toFixed(1)} ms`;
}
