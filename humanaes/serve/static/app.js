// humanaes web page: pick or drop photos, POST them to /v1/score, show each result.
// No external assets: everything here ships in the package.
"use strict";

const state = { model: null, needsKey: false };
const $ = (id) => document.getElementById(id);

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function loadModel() {
  const response = await fetch("v1/models", { headers: authHeaders() });
  if (response.status === 401) {
    state.needsKey = true;
    $("key-label").hidden = false;
    $("model-line").textContent = "this service needs an API key: enter it, then pick photos";
    return;
  }
  if (response.status === 503) {
    $("model-line").textContent = "the model is still loading…";
    setTimeout(loadModel, 2000);
    return;
  }
  const body = await response.json();
  const model = body.models[0];
  state.model = model;
  $("model-line").textContent = `model: ${model.name} — modes: ${model.modes.join(", ")} — licence: ${model.licence}`;
  const select = $("mode");
  select.innerHTML = "";
  for (const m of model.modes) {
    const option = el("option", { value: m }, m);
    if (m === model.default_mode) option.selected = true;
    select.append(option);
  }
  const note = $("model-note");
  if (!model.dimensions.length) {
    note.hidden = false;
    note.textContent = `${model.name} gives an overall score only: no twelve-dimension radar chart and no ` +
      "annotation (those need a HumanAesExpert checkpoint).";
  } else {
    note.hidden = true;
  }
}

function radar(expert, dimensions) {
  const size = 300, c = size / 2, r = 95, n = dimensions.length;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `-75 0 ${size + 150} ${size}`);  // room for the labels
  svg.setAttribute("class", "radar");
  const point = (i, v) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return [c + Math.cos(a) * r * v, c + Math.sin(a) * r * v];
  };
  for (const ring of [0.2, 0.4, 0.6, 0.8, 1.0]) {
    const poly = document.createElementNS(ns, "polygon");
    poly.setAttribute("points", dimensions.map((_, i) => point(i, ring).join(",")).join(" "));
    poly.setAttribute("fill", "none");
    poly.setAttribute("stroke", "#d5dae6");
    svg.append(poly);
  }
  dimensions.forEach((d, i) => {
    const [x, y] = point(i, 1.12);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y);
    t.setAttribute("text-anchor", x < c - 5 ? "end" : x > c + 5 ? "start" : "middle");
    t.textContent = d.replace(" Aesthetic Score", "").replace("Facial ", "Face ");
    svg.append(t);
  });
  const shape = document.createElementNS(ns, "polygon");
  shape.setAttribute("points", dimensions.map((d, i) => point(i, expert[d] ?? 0).join(",")).join(" "));
  shape.setAttribute("fill", "rgba(47,111,222,.25)");
  shape.setAttribute("stroke", "#2f6fde");
  svg.append(shape);
  return svg;
}

function card(file, result) {
  const box = el("div", { class: "card" });
  box.append(el("img", { class: "thumb", alt: result.image, src: URL.createObjectURL(file) }));
  box.append(el("div", { class: "name" }, result.image));
  if (result.error) {
    box.classList.add("failed");
    box.append(el("p", { class: "error" }, result.error));
    return box;
  }
  const score = el("span", { class: "score", "data-score": String(result.overall) }, result.overall.toFixed(4));
  box.append(el("div", {}, score, el("span", { class: "level" }, result.level)));
  if (result.person_found === false) {
    box.append(el("p", { class: "note" }, "no face found: this score is not meaningful for this image"));
  }
  if (result.expert) {
    box.append(radar(result.expert, Object.keys(result.expert)));
  }
  if (result.annotation) {
    box.append(el("pre", { class: "annotation" }, result.annotation));
  }
  return box;
}

async function scoreFiles(files) {
  if (!files.length) return;
  if (state.needsKey && !state.model) await loadModel();
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("mode", $("mode").value || "");
  $("status").textContent = `scoring ${files.length} photo(s)…`;
  let response;
  try {
    response = await fetch("v1/score", { method: "POST", body: form, headers: authHeaders() });
  } catch (err) {
    $("status").textContent = "the server could not be reached: " + err;
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok && !body.results) {
    const wait = response.headers.get("Retry-After");
    $("status").textContent = `error ${response.status}: ${body.detail || response.statusText}` +
      (wait ? ` (retry in ${wait} s)` : "");
    return;
  }
  const list = $("results");
  body.results.forEach((result, i) => list.prepend(card(files[i], result)));
  $("status").textContent = body.detail ? body.detail : `scored ${files.length} photo(s) with ${body.model}`;
  $("status").dataset.done = String(Number($("status").dataset.done || 0) + 1);
}

function setup() {
  const drop = $("drop"), input = $("file-input");
  input.addEventListener("change", () => { scoreFiles([...input.files]); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => scoreFiles([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/"))));
  $("api-key").addEventListener("change", loadModel);
  loadModel();
}

setup();
