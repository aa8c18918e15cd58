// The playground page: key, models, Generate / Cancel with live progress, results, gallery,
// and the request as code. Everything goes through the public API (api.js); no inline script.

import { ApiError, call, getKey, setKey, streamEvents } from "./api.js";
import { applyModelDefaults, clearErrors, fillRequest, readRequest, setCatalogue, showError } from "./form.js";
import { curlFor, pythonFor } from "./snippets.js";

const $ = (id) => document.getElementById(id);
const FINAL = new Set(["succeeded", "failed", "canceled"]);
let current = null; // { id, abort, waitingFor }
let keysOff = false;

function say(id, text) {
  $(id).textContent = text;
}

function pageError(err) {
  $("page-error").hidden = !err;
  $("page-error").textContent = err ? err.message : "";
}

// --- the key ------------------------------------------------------------------------------
function describeKey() {
  if (getKey()) say("key-status", "Key in use: kept in this tab only (session storage), never sent elsewhere.");
  else if (keysOff) say("key-status", "Keys are off on this server: no key needed.");
  else say("key-status", "This server needs an API key: type it above and press Use key.");
}

async function loadModels() {
  try {
    const body = await call("GET", "/v1/models");
    keysOff = !getKey();
    setCatalogue(body);
    pageError(null);
    describeKey();
    await loadGallery();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      keysOff = false;
      say("key-status", getKey() ? `The key was refused: ${err.message}` : "This server needs an API key: type it above and press Use key.");
      $("api-key").setAttribute("aria-invalid", "true");
      $("api-key").focus();
    } else {
      pageError(err);
    }
  }
}

// --- one job: submit, watch, cancel --------------------------------------------------------
async function generate(event) {
  event.preventDefault();
  clearErrors();
  const body = readRequest();
  $("generate").disabled = true;
  try {
    const job = await call("POST", "/v1/images", body);
    $("results").replaceChildren();
    $("preview-image").hidden = true;
    $("progress").value = 0;
    watch(job);
  } catch (err) {
    $("generate").disabled = false;
    if (err instanceof ApiError) showError(err.param, err.message);
    else showError(null, String(err));
  }
}

function showQueued(position) {
  const waitingFor = current && current.waitingFor; // the job view says it; queue events do not
  const where = position === null || position === undefined ? "" : position === 0 ? ": next in line" : `: ${position} ahead`;
  const why = waitingFor === "no_worker" ? " (no worker serves this model yet)" : "";
  say("job-status", `Queued${where}${why}.`);
}

function onEvent(name, data) {
  if (name === "queued") showQueued(data.queue_position);
  else if (name === "position") showQueued(data.queue_position);
  else if (name === "running") {
    if (current) current.waitingFor = null;
    say("job-status", "Running…");
  }
  else if (name === "progress") {
    $("progress").max = data.total;
    $("progress").value = data.step;
    const eta = data.eta_s === undefined ? "" : `, about ${Math.ceil(data.eta_s)} s left`;
    say("job-status", `Running: step ${data.step} of ${data.total}${eta}.`);
    if (data.preview) {
      $("preview-image").src = data.preview;
      $("preview-image").hidden = false;
    }
  } else if (FINAL.has(name)) finish(data);
}

async function watch(job) {
  const abort = new AbortController();
  current = { id: job.id, abort, waitingFor: job.waiting_for };
  $("cancel").disabled = false;
  $("generate").disabled = true;
  if (FINAL.has(job.status)) return finish(job);
  if (job.status === "queued") showQueued(job.queue_position);
  let failures = 0;
  while (current && current.id === job.id) {
    try {
      const last = await streamEvents(job.id, onEvent, abort.signal);
      if (FINAL.has(last)) return;
      // The stream ended early (its time limit): see where the job is, then listen again.
      const now = await call("GET", `/v1/images/${encodeURIComponent(job.id)}`);
      if (FINAL.has(now.status)) return finish(now);
      if (current && current.id === job.id) current.waitingFor = now.waiting_for;
    } catch (err) {
      if (abort.signal.aborted) return;
      if (++failures > 5) return finishWithError(err);
      await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
    }
  }
}

function finishWithError(err) {
  say("job-status", `Lost the job's events: ${err.message}`);
  endJob();
}

function endJob() {
  if (current) current.abort.abort();
  current = null;
  $("cancel").disabled = true;
  $("generate").disabled = false;
}

function finish(job) {
  if (!current || current.id !== job.id) return;
  endJob();
  $("preview-image").hidden = true;
  if (job.status === "succeeded") {
    $("progress").value = $("progress").max;
    const took = job.timings && job.timings.total_s ? ` in ${job.timings.total_s.toFixed(1)} s` : "";
    say("job-status", `Done: ${job.images.length} image${job.images.length === 1 ? "" : "s"}${took}.`);
    $("results").replaceChildren(...job.images.map((image) => resultItem(image, job.images.length)));
  } else if (job.status === "canceled") {
    say("job-status", "Canceled.");
  } else {
    const error = job.error || {};
    say("job-status", `Failed: ${error.message || "unknown error"}`);
    if (error.param) showError(error.param, error.message);
  }
  loadGallery();
}

function resultItem(image, count) {
  const li = document.createElement("li");
  const figure = document.createElement("figure");
  const img = Object.assign(document.createElement("img"), {
    src: image.url,
    alt: `Generated image ${image.index + 1} of ${count}, seed ${image.seed}`,
    width: image.width,
    height: image.height,
  });
  const caption = document.createElement("figcaption");
  const link = Object.assign(document.createElement("a"), {
    href: image.url,
    textContent: `Download (seed ${image.seed})`,
    download: `sfumato-${image.seed}.${image.format}`, // honoured for same-origin (local disk) URLs
    target: "_blank", // a storage URL opens in a new tab instead: the page keeps its state
    rel: "noopener noreferrer",
  });
  caption.append(`Seed ${image.seed} · ${image.width}×${image.height} · `, link);
  figure.append(img, caption);
  li.append(figure);
  return li;
}

async function cancel() {
  if (!current) return;
  const id = current.id;
  $("cancel").disabled = true;
  try {
    const job = await call("DELETE", `/v1/images/${encodeURIComponent(id)}`);
    if (FINAL.has(job.status)) finish(job);
    else say("job-status", "Canceling: it stops at the next step…");
  } catch (err) {
    say("job-status", `Cancel failed: ${err.message}`);
    $("cancel").disabled = !current;
  }
}

// --- gallery -------------------------------------------------------------------------------
async function loadGallery() {
  try {
    const { data } = await call("GET", "/v1/images?limit=12");
    say("gallery-status", data.length ? "" : "No recent jobs.");
    $("gallery").replaceChildren(...data.map(galleryItem));
  } catch (err) {
    say("gallery-status", `Cannot list recent jobs: ${err.message}`);
  }
}

function galleryItem(job) {
  const li = document.createElement("li");
  li.dataset.job = job.id;
  const first = job.images[0];
  if (first) {
    li.append(Object.assign(document.createElement("img"), {
      src: first.url,
      alt: `Image of job ${job.id.slice(0, 8)}, seed ${first.seed}`,
      width: first.width,
      height: first.height,
    }));
  }
  const size = first ? ` · ${first.width}×${first.height}` : "";
  const when = new Date(job.created_at * 1000).toLocaleTimeString();
  const text = document.createElement("p");
  text.id = `job-${job.id}-text`;
  const prompt = job.params ? job.params.prompt : "";
  const shown = prompt.length > 80 ? `${prompt.slice(0, 79)}…` : prompt;
  text.textContent = `${shown ? `“${shown}” · ` : ""}${job.status} · ${job.model}${size} · ` +
    `${job.n} image${job.n === 1 ? "" : "s"} · ${when}`;
  const use = Object.assign(document.createElement("button"), { type: "button", textContent: "Use these settings" });
  use.setAttribute("aria-describedby", text.id); // which job's settings, for screen readers
  use.addEventListener("click", () => useSettings(job));
  li.append(text, use);
  return li;
}

function useSettings(job) {
  // The job view's params: what it was asked for, defaults filled and the seed resolved, so the
  // same settings draw the same image again, whichever tab or client submitted it.
  const body = { ...(job.params || { model: job.model, n: job.n }) };
  const first = job.images[0];
  if (!job.params && first) Object.assign(body, { width: first.width, height: first.height, seed: first.seed });
  fillRequest(body);
  say("gallery-status", `The settings of job ${job.id.slice(0, 8)} are in the form.`);
  $("prompt").focus();
}

// --- code ----------------------------------------------------------------------------------
async function copyAs(kind) {
  const body = readRequest();
  const keyed = Boolean(getKey()) || !keysOff;
  const code = kind === "curl" ? curlFor(location.origin, body, keyed) : pythonFor(location.origin, body, keyed);
  $("code-box").hidden = false;
  $("code").value = code;
  $("code").dataset.kind = kind;
  try {
    await navigator.clipboard.writeText(code);
    say("code-status", `Copied as ${kind === "curl" ? "curl" : "Python"} to the clipboard.`);
  } catch {
    say("code-status", "Select the text above and copy it (the clipboard is not available here).");
  }
}

// --- wiring --------------------------------------------------------------------------------
function init() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value.trim());
    $("api-key").value = "";
    $("api-key").removeAttribute("aria-invalid");
    loadModels();
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    $("gallery").replaceChildren();
    loadModels();
  });
  $("generate-form").addEventListener("submit", generate);
  $("generate-form").addEventListener("keydown", (event) => {
    // Ctrl/Cmd+Enter submits from anywhere in the form, the prompt box included.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("generate").disabled) {
      event.preventDefault();
      $("generate-form").requestSubmit($("generate"));
    }
  });
  $("cancel").addEventListener("click", cancel);
  $("model").addEventListener("change", applyModelDefaults);
  $("seed-random").addEventListener("change", () => {
    $("seed").disabled = $("seed-random").checked;
    if (!$("seed-random").checked) $("seed").focus();
  });
  $("seed").disabled = true;
  $("gallery-refresh").addEventListener("click", loadGallery);
  $("copy-curl").addEventListener("click", () => copyAs("curl"));
  $("copy-python").addEventListener("click", () => copyAs("python"));
  loadModels();
}

init();
