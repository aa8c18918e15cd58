// Talking to the Sfumato API from the page: the key, JSON calls, and the job event stream.
//
// The key lives only in this tab's sessionStorage and in the Authorization header of our own
// calls: never in a URL, a cookie or localStorage. EventSource cannot send that header, so the
// event stream is read with fetch() and a ReadableStream.

const KEY_ITEM = "sfumato.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

/** An API error: the HTTP status and the body's {code, message, param}. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.param = error.param || null;
  }
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    error = { message: `${response.status} ${response.statusText}` };
  }
  return new ApiError(response.status, error);
}

/** One JSON call; resolves with the body, rejects with an ApiError. */
export async function call(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { code: "network", message: `cannot reach the API: ${err.message}` });
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * Read a job's Server-Sent Events, calling onEvent(name, data) for each, until the server ends
 * the stream or signal aborts. Returns the last event's name.
 */
export async function streamEvents(jobId, onEvent, signal) {
  const response = await fetch(`/v1/images/${encodeURIComponent(jobId)}/events`, {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) {
        last = event.name;
        onEvent(event.name, event.data);
      }
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments are keep-alives
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { name, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
