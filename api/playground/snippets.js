// A request as code to copy: curl against /v1/images, and the Python SDK (`pip install
// sfumato`: Client.generate takes the prompt and the other fields as keyword arguments). The
// key is never written into the code: both read it from $SFUMATO_API_KEY.

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

export function curlFor(origin, body, keyed) {
  const lines = [`curl -sS -X POST ${shellQuote(`${origin}/v1/images?wait=60`)}`];
  if (keyed) lines.push(`-H "Authorization: Bearer $SFUMATO_API_KEY"`);
  lines.push(`-H 'Content-Type: application/json'`);
  lines.push(`-d ${shellQuote(JSON.stringify(body))}`);
  return lines.join(" \\\n  ");
}

function pyValue(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value); // a JSON string is a valid Python literal
  if (Array.isArray(value)) return `[${value.map(pyValue).join(", ")}]`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyValue(v)}`).join(", ")}}`;
}

export function pythonFor(origin, body, keyed) {
  const { prompt, preview, ...fields } = body; // previews are for watching, not for scripts
  const args = [pyValue(prompt), ...Object.entries(fields).map(([k, v]) => `${k}=${pyValue(v)}`)];
  const key = keyed ? `, api_key=os.environ["SFUMATO_API_KEY"]` : "";
  return [
    ...(keyed ? ["import os", ""] : []),
    "from sfumato import Client",
    "",
    `with Client(${pyValue(origin)}${key}) as client:`,
    `    result = client.generate(`,
    ...args.map((a) => `        ${a},`),
    "    )",
    "    for path in result.save(\"out\"):",
    "        print(path)",
  ].join("\n");
}
