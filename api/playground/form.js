// The request form: filled from GET /v1/models, read into a POST /v1/images body, refilled
// from an earlier request ("use these settings"), and the API's errors shown by the field
// each one names (the error body's `param`).

const $ = (id) => document.getElementById(id);

const NUMBER_FIELDS = ["width", "height", "steps", "guidance_scale", "n"];

let catalogue = { data: [], schedulers: {}, limits: {} };

export function models() {
  return catalogue.data;
}

function currentModel() {
  return catalogue.data.find((m) => m.id === $("model").value) || catalogue.data[0];
}

/** Fill the model and sampler lists from GET /v1/models, then the chosen model's defaults. */
export function setCatalogue(body) {
  catalogue = body;
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(
    ...body.data.map((m) => new Option(m.id === m.family ? m.id : `${m.id} (${m.family})`, m.id, false, m.id === chosen)),
  );
  const samplers = $("scheduler");
  samplers.replaceChildren(
    ...Object.entries(body.schedulers).map(([name, shown]) => new Option(shown, name)),
  );
  const limits = body.limits || {};
  if (limits.max_steps) $("steps").max = limits.max_steps;
  if (limits.max_n) $("n").max = limits.max_n;
  if (limits.guidance_scale) [$("guidance_scale").min, $("guidance_scale").max] = limits.guidance_scale;
  applyModelDefaults();
}

/** The chosen model's defaults, sizes and LoRAs into the form. */
export function applyModelDefaults() {
  const model = currentModel();
  if (!model) return;
  $("width").value = model.default_width;
  $("height").value = model.default_height;
  $("steps").value = model.default_steps;
  $("guidance_scale").value = model.default_guidance;
  $("scheduler").value = model.default_scheduler;
  const minSize = model.min_size || catalogue.limits.min_size || 8;
  for (const id of ["width", "height"]) {
    $(id).min = minSize;
    $(id).max = model.max_size;
  }
  const sizes = (model.sizes || []).map(([w, h]) => `${w}×${h}`).join(", ");
  $("size-hint").textContent = sizes
    ? `This model draws only these sizes: ${sizes}.`
    : `Multiples of 8 from ${minSize} to ${model.max_size} px (at most ${catalogue.limits.max_pixels} pixels).`;
  $("model-hint").textContent =
    `Default ${model.default_width}×${model.default_height}, ${model.default_steps} steps; ` +
    `${model.workers} worker${model.workers === 1 ? "" : "s"} serving it.`;
  renderLoras(model.loras || []);
}

function renderLoras(names) {
  const [low, high] = catalogue.limits.lora_scale || [-2, 2];
  $("loras-none").hidden = names.length > 0;
  $("lora-list").replaceChildren(
    ...names.map((name, i) => {
      const row = document.createElement("div");
      row.className = "lora";
      const use = Object.assign(document.createElement("input"), { type: "checkbox", id: `lora-${i}` });
      use.dataset.lora = name;
      const useLabel = Object.assign(document.createElement("label"), { htmlFor: use.id, textContent: name });
      const scale = Object.assign(document.createElement("input"), {
        type: "number", id: `lora-${i}-scale`, value: "1", step: "0.1", min: String(low), max: String(high),
      });
      const scaleLabel = Object.assign(document.createElement("label"), {
        htmlFor: scale.id, textContent: `${name} scale`,
      });
      row.append(use, useLabel, scaleLabel, scale);
      return row;
    }),
  );
}

function numberOf(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

/** The POST /v1/images body the form describes (unset fields left out: the model's defaults). */
export function readRequest() {
  const body = { prompt: $("prompt").value };
  if ($("negative_prompt").value) body.negative_prompt = $("negative_prompt").value;
  if ($("model").value) body.model = $("model").value;
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  for (const id of NUMBER_FIELDS) {
    const value = numberOf(id);
    if (value !== undefined) body[id] = value;
  }
  if (!$("seed-random").checked && numberOf("seed") !== undefined) body.seed = numberOf("seed");
  const loras = [...document.querySelectorAll("#lora-list input[data-lora]")]
    .filter((box) => box.checked)
    .map((box) => ({ name: box.dataset.lora, scale: Number($(`${box.id}-scale`).value || 1) }));
  if (loras.length) body.loras = loras;
  if ($("preview").checked) body.preview = true;
  return body;
}

/** Put an earlier request (or what a job's view tells of it) back into the form. */
export function fillRequest(body) {
  if (body.model && [...$("model").options].some((o) => o.value === body.model)) {
    $("model").value = body.model;
    applyModelDefaults();
  }
  if (body.prompt !== undefined) $("prompt").value = body.prompt;
  if (body.negative_prompt !== undefined) $("negative_prompt").value = body.negative_prompt;
  if (body.scheduler) $("scheduler").value = body.scheduler;
  for (const id of NUMBER_FIELDS) if (body[id] !== undefined) $(id).value = body[id];
  const fixed = body.seed !== undefined && body.seed !== null;
  $("seed-random").checked = !fixed;
  $("seed").value = fixed ? body.seed : "";
  $("seed").disabled = !fixed;
  for (const box of document.querySelectorAll("#lora-list input[data-lora]")) {
    const lora = (body.loras || []).find((l) => l.name === box.dataset.lora);
    box.checked = Boolean(lora);
    if (lora) $(`${box.id}-scale`).value = lora.scale;
  }
  if (body.preview !== undefined) $("preview").checked = body.preview;
}

/** Remove every error message and invalid mark. */
export function clearErrors() {
  for (const p of document.querySelectorAll(".field-error")) p.textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Show `message` by the field `param` names (e.g. "width", "loras[0].scale"); else under the form. */
export function showError(param, message) {
  const field = (param || "").split(/[.[]/)[0];
  const slot = field && document.querySelector(`.field-error[data-param="${CSS.escape(field)}"]`);
  const target = slot || $("form-error");
  target.textContent = message;
  const input = field && $(field);
  if (slot && input) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}
