// The page of `rnnlm serve`: plain JavaScript over the JSON API (see docs/serve.md).
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let controller = null;     // the running generation, to stop it
let passage = "";          // the text drawn in "Look inside"
let nextRequest = 0;       // answers to older next-word requests are dropped
let nextTimer = null;

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

// ---- Complete -------------------------------------------------------------------------

async function generate() {
  $("generate-error").textContent = "";
  clearTimeout(nextTimer);  // the table follows the completion now, not the typing before it
  const prompt = $("prompt").value;
  const body = {prompt};
  for (const key of ["temperature", "top_k", "top_p", "max_new_tokens", "seed"]) {
    const v = number(key);
    if (v !== null) body[key] = v;
  }
  document.querySelector(".prompt-echo").textContent = prompt;
  $("generated").textContent = "";
  controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  try {
    const response = await fetch("/api/generate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error((await response.json()).error);
    await readEvents(response, (event, data) => {
      if (event === "error") throw new Error(data.message);
      if (event === "message") $("generated").textContent += data.text;
    });
    updateNextWords(prompt + $("generated").textContent);
  } catch (e) {
    if (e.name !== "AbortError") $("generate-error").textContent = e.message;
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; controller = null;
  }
}

// Server-sent events from a fetch response: blocks of "event: x" / "data: {...}" lines.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(event, JSON.parse(data));
    }
  }
}

// ---- Next word ------------------------------------------------------------------------

async function updateNextWords(text) {
  const mine = ++nextRequest;
  $("next-for").textContent = JSON.stringify(text.length > 60 ? "…" + text.slice(-60) : text);
  if (!text) { $("next-words").tBodies[0].innerHTML = ""; return; }
  try {
    const data = await api("/api/next-words", {prompt: text, k: 10});
    if (mine !== nextRequest) return;
    $("next-error").textContent = "";
    const rows = data.words.map(({word, p}) => {
      const tr = document.createElement("tr");
      const w = document.createElement("td");
      w.className = "word"; w.textContent = JSON.stringify(word);
      w.onclick = () => { $("prompt").value = text + (/^\w/.test(word) && /\w$/.test(text) ? " " : "") + word; promptChanged(); };
      const prob = document.createElement("td"); prob.textContent = p.toFixed(4);
      const bar = document.createElement("td"); bar.className = "bar";
      bar.innerHTML = `<div style="width:${Math.round(200 * p)}px"></div>`;
      tr.append(w, prob, bar);
      return tr;
    });
    $("next-words").tBodies[0].replaceChildren(...rows);
    $("next-words").dataset.for = text;
  } catch (e) {
    if (mine === nextRequest) $("next-error").textContent = e.message;
  }
}

function promptChanged() {
  clearTimeout(nextTimer);
  nextTimer = setTimeout(() => updateNextWords($("prompt").value), 300);
}

// ---- Look inside ----------------------------------------------------------------------

async function newPassage() {
  $("inside-error").textContent = "";
  const source = $("source").value;
  $("pasted").hidden = source !== "pasted";
  if (source === "prompt") passage = $("prompt").value + $("generated").textContent;
  else if (source === "pasted") passage = $("pasted").value;
  else passage = null;  // the server picks a window of the validation text
  await show();
}

async function show() {
  $("inside-error").textContent = "";
  const body = {layer: number("layer"), kind: $("kind").value, unit: number("unit"), top: 5};
  if (passage === null) Object.assign(body, {source: "validation", chars: number("chars"),
                                            seed: Math.floor(Math.random() * 1e9)});
  else body.text = passage;
  try {
    const data = await api("/api/activations", body);
    passage = data.text;
    drawPassage(data);
    drawUnits(data.ranked);
  } catch (e) {
    $("inside-error").textContent = e.message;
  }
}

function colour(v, scale) {
  const a = Math.min(Math.abs(v) / scale, 1);
  const [r, g, b] = v >= 0 ? [220, 70, 50] : [60, 120, 216];
  return `rgba(${r}, ${g}, ${b}, ${a.toFixed(3)})`;
}

function drawPassage(data) {
  const out = document.createDocumentFragment();
  const chars = Array.from(data.text);  // offsets count code points, as Python does
  chars.forEach((ch, i) => {
    const span = document.createElement("span");
    span.textContent = ch;
    span.style.backgroundColor = colour(data.values[i], data.scale);
    span.title = data.values[i].toFixed(3);
    out.append(span);
  });
  $("passage").replaceChildren(out);
  $("shown-unit").textContent = `layer ${data.layer}, ${data.kind}, unit ${data.unit}: ` +
    `colour = value / ${data.scale} (the largest |value| in the passage)`;
}

function drawUnits(ranked) {
  const boxes = Object.entries(info.signals).map(([key, label]) => {
    const box = document.createElement("div");
    box.innerHTML = `<strong>${label}</strong><br>`;
    if (!ranked[key].length) box.append("not in this passage");
    for (const u of ranked[key]) {
      const b = document.createElement("button");
      b.textContent = `L${u.layer} ${u.kind}${u.unit} r=${u.r >= 0 ? "+" : ""}${u.r.toFixed(2)}`;
      b.onclick = () => { $("layer").value = u.layer; $("kind").value = u.kind; $("unit").value = u.unit; show(); };
      box.append(b);
    }
    return box;
  });
  $("units").replaceChildren(...boxes);
}

// ---- start ----------------------------------------------------------------------------

async function start() {
  info = await (await fetch("/api/info")).json();
  $("model").textContent = `${info.cell.toUpperCase()} ${info.layers}×${info.hidden_size}, ` +
    `${info.tokenizer} tokens, step ${info.step}`;
  for (const [key, v] of Object.entries(info.sample)) $(key).value = v;
  $("layer").replaceChildren(...Array.from({length: info.layers}, (_, i) => new Option(String(i), i)));
  $("kind").replaceChildren(...info.kinds.map((k) => new Option(k === "c" ? "c (cell state)" : "h (output)", k)));
  $("unit").max = info.hidden_size - 1;
  $("chars").max = info.limits.passage_chars;
  $("generate").onclick = generate;
  $("stop").onclick = () => controller && controller.abort();
  $("prompt").oninput = promptChanged;
  $("source").onchange = newPassage;
  $("passage-new").onclick = newPassage;
  $("show").onclick = show;
  $("pasted").oninput = () => { passage = $("pasted").value; };
  await updateNextWords($("prompt").value);
  await newPassage();
}

start();
