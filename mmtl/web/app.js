// mmtl web page: posts the form to /v1/predict and shows tags, caption and summary.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("predict-form");
const imageInput = $("image");

// "—": the task did not run (e.g. no image for the caption); "(empty)": it ran and produced nothing
function setText(id, value) {
  $(id).textContent = value === undefined || value === null ? "—" : value === "" ? "(empty)" : value;
}

function showTags(tags) {
  const body = $("tags").querySelector("tbody");
  body.replaceChildren();
  const list = Array.isArray(tags) ? tags : [];
  $("tags-empty").hidden = list.length > 0;
  $("tags-empty").textContent = tags === undefined ? "—" : "no tag above the threshold";
  for (const tag of list) {
    const row = document.createElement("tr");
    const label = document.createElement("td");
    label.className = "label";
    label.textContent = tag.label;
    const barCell = document.createElement("td");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = Math.round(Math.max(0, Math.min(1, tag.score)) * 100) + "%";
    barCell.appendChild(bar);
    const score = document.createElement("td");
    score.className = "score";
    score.textContent = tag.score.toFixed(3);
    row.append(label, barCell, score);
    body.appendChild(row);
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showPreview(file) {
  const img = $("preview");
  if (!file) { img.hidden = true; img.removeAttribute("src"); $("drop-label").hidden = false; return; }
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("drop-label").hidden = true;
}

imageInput.addEventListener("change", () => showPreview(imageInput.files[0]));

const drop = document.querySelector(".drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) {
    imageInput.files = e.dataTransfer.files;
    showPreview(imageInput.files[0]);
  }
});

$("clear").addEventListener("click", () => {
  form.reset();
  showPreview(null);
  showError("");
  showTags(undefined);
  setText("caption");
  setText("summary");
  $("status").textContent = "";
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData();
  if (imageInput.files.length) data.append("image", imageInput.files[0]);
  const text = $("text").value;
  if (text.trim()) data.append("text", text);
  for (const name of ["threshold", "top_k_tags", "max_length", "num_beams"]) {
    const value = $(name).value.trim();
    if (value) data.append(name, value);
  }
  if (!data.has("image") && !data.has("text")) {
    showError("Choose an image, type a text, or both.");
    return;
  }
  showError("");
  $("submit").disabled = true;
  $("status").textContent = "predicting…";
  try {
    const response = await fetch("/v1/predict", { method: "POST", body: data });
    const body = await response.json().catch(() => ({ error: "the server answered " + response.status }));
    if (!response.ok) throw new Error(body.error || "the server answered " + response.status);
    const out = body.predictions;
    showTags(out.recognition);
    setText("caption", out.captioning);
    setText("summary", out.summarization);
    $("status").textContent = "done in " + Math.round(body.time_ms) + " ms";
    document.body.dataset.state = "done";
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
    document.body.dataset.state = "error";
  } finally {
    $("submit").disabled = false;
  }
});

fetch("/v1/info").then((r) => r.json()).then((info) => {
  const tasks = Object.keys(info.tasks || {}).join(", ");
  const params = info.parameters && info.parameters.total ? (info.parameters.total / 1e6).toFixed(2) + "M parameters" : "";
  $("model-info").textContent = [tasks, (info.classes || []).length + " classes", params, "step " + info.step]
    .filter(Boolean).join(" · ");
}).catch(() => { $("model-info").textContent = "model information unavailable"; });
