// clipforge search page: plain JS, no build step. Talks to the same service's JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("info").textContent = `${info.items.toLocaleString()} images · ${info.kind} index · model ${info.model.split("/").pop()}`;
    for (const folder of info.folders) {
      const opt = document.createElement("option");
      opt.value = folder;
      opt.textContent = folder === "" ? "(root)" : folder;
      $("folder").append(opt);
    }
  } catch (err) {
    $("info").textContent = "could not read the index info";
  }
}

function filters() {
  const f = {};
  if ($("folder").selectedIndex > 0) f.folder = $("folder").value;
  const tag = $("tag").value.trim();
  if (tag) f.tags = [tag];
  if ($("added-from").value) f.added_from = $("added-from").value + "T00:00:00";
  if ($("added-to").value) f.added_to = $("added-to").value + "T23:59:59.999";
  return f;
}

function errorText(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return `request failed (${status})`;
}

async function search(extra = {}) {
  const text = $("query").value.trim();
  const k = Number($("k").value);
  const weight = Number($("image-weight").value);
  const hide = $("hide-flagged").checked;
  let response;
  if (state.file && extra.image_id === undefined) {
    const form = new FormData();
    form.append("file", state.file);
    if (text) form.append("text", text);
    form.append("k", String(k));
    form.append("image_weight", String(text ? weight : 1));
    form.append("text_weight", String(text ? 1 - weight : 1));
    form.append("filters", JSON.stringify(filters()));
    form.append("hide_flagged", String(hide));
    response = fetch("/api/search/upload", { method: "POST", body: form });
  } else {
    if (!text && extra.image_id === undefined) { setStatus("Type a description or add an image first."); return; }
    const body = { k, filters: filters(), hide_flagged: hide, ...extra };
    if (text && extra.image_id === undefined) body.text = text;
    response = fetch("/api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }
  setStatus("Searching…");
  try {
    const res = await response;
    const body = await res.json().catch(() => null);
    if (!res.ok) { setStatus(errorText(body, res.status), true); return; }
    render(body.results);
    setStatus(`${body.results.length} result${body.results.length === 1 ? "" : "s"} in ${body.took_ms} ms`);
  } catch (err) {
    setStatus(`The service did not answer: ${err}`, true);
  }
}

function badges(moderation) {
  const out = [];
  const flagged = Object.entries(moderation).filter(([, m]) => m.flagged);
  for (const [name, m] of flagged) {
    const b = document.createElement("span");
    b.className = "badge flag";
    b.textContent = `${name.replace("_", " ")} ${(m.score * 100).toFixed(0)}%`;
    b.title = `moderation score ${m.score} ≥ threshold ${m.threshold}`;
    out.push(b);
  }
  if (!flagged.length) {
    const b = document.createElement("span");
    b.className = "badge ok";
    const top = Object.entries(moderation).sort((a, b) => b[1].score - a[1].score)[0];
    b.textContent = "no flags";
    if (top) b.title = `highest: ${top[0]} ${top[1].score} (threshold ${top[1].threshold})`;
    out.push(b);
  }
  return out;
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren();
  const template = $("card-template");
  results.forEach((r, i) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = r.id;
    const flagged = Object.values(r.moderation).some((m) => m.flagged);
    card.classList.toggle("flagged", flagged);
    card.querySelector(".thumb-link").href = r.image_url;
    const img = card.querySelector(".thumb");
    img.src = r.thumbnail_url;
    img.alt = r.caption || r.filename;
    card.querySelector(".score").textContent = r.score.toFixed(3);
    card.querySelector(".rank").textContent = `#${i + 1}`;
    card.querySelector(".caption").textContent = r.caption || r.filename;
    card.querySelector(".folder").textContent = r.folder ? `folder: ${r.folder}` : "";
    card.querySelector(".badges").append(...badges(r.moderation));
    card.querySelector(".similar").addEventListener("click", () => search({ image_id: r.id }));
    grid.append(card);
  });
}

function setFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { setStatus(`${file.name} is not an image.`, true); return; }
  state.file = file;
  $("image-preview").src = URL.createObjectURL(file);
  $("image-name").textContent = file.name || "pasted image";
  $("image-chip").hidden = false;
  $("drop-text").hidden = true;
  search();
}

function clearFile() {
  state.file = null;
  $("image-input").value = "";
  $("image-chip").hidden = true;
  $("drop-text").hidden = false;
}

function wireDropZone() {
  const zone = $("drop-zone");
  $("choose-image").addEventListener("click", () => $("image-input").click());
  $("image-input").addEventListener("change", (e) => setFile(e.target.files[0]));
  $("clear-image").addEventListener("click", clearFile);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    setFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((it) => it.type.startsWith("image/"));
    if (item) setFile(item.getAsFile());
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  wireDropZone();
  loadInfo();
});
