// The page at /: upload an image to POST /v1/panoptic?png=1, draw the COCO panoptic PNG it
// returns as an overlay (id = R + 256 G + 256^2 B), list the segments, show the segment under
// the pointer, and offer the PNG and the JSON for download. Plain JS, no dependencies.
"use strict";

const state = { categories: {}, segments: {}, ids: null, width: 0, height: 0, pinned: null,
                scale: 1, colors: null };
const $ = (id) => document.getElementById(id);

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadMetadata() {
  const r = await fetch("/v1/metadata");
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  for (const c of body.categories) state.categories[c.id] = c;
  setStatus(`Model ready (${body.dataset}, ${body.categories.length} classes, ` +
            `runtime ${body.runtime}). Drop an image.`);
}

function describe(seg) {
  const cat = state.categories[seg.category_id] || { name: seg.category_name };
  const score = seg.score === undefined ? "" : `, score ${seg.score.toFixed(3)}`;
  return `${cat.name} (${seg.isthing ? "thing" : "stuff"}${score}, area ${seg.area} px)`;
}

function colorOf(seg) {
  const cat = state.categories[seg.category_id];
  return cat ? cat.color : [200, 200, 200];
}

function drawOverlay(highlight) {
  const { width, height, ids } = state;
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  const alpha = Math.round(parseFloat($("alpha").value) * 255);
  for (let i = 0; i < ids.length; i++) {
    const seg = state.segments[ids[i]];
    if (!seg) continue;
    const c = colorOf(seg);
    const on = highlight === undefined || highlight === null || highlight === ids[i];
    img.data[4 * i] = c[0];
    img.data[4 * i + 1] = c[1];
    img.data[4 * i + 2] = c[2];
    img.data[4 * i + 3] = on ? alpha : Math.round(alpha / 4);
  }
  ctx.putImageData(img, 0, 0);
}

function select(id, pin) {
  if (pin) state.pinned = state.pinned === id ? null : id;
  const shown = pin ? state.pinned : (id ?? state.pinned);
  for (const li of $("segments").children) {
    li.classList.toggle("active", Number(li.dataset.id) === shown);
  }
  $("info").textContent = shown && state.segments[shown] ? describe(state.segments[shown]) : "";
  drawOverlay(shown);
}

function segmentAt(event) {
  const rect = $("overlay").getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / state.scale);
  const y = Math.floor((event.clientY - rect.top) / state.scale);
  if (x < 0 || y < 0 || x >= state.width || y >= state.height) return null;
  const id = state.ids[y * state.width + x];
  return state.segments[id] ? id : null;
}

function decodeIds(pngBase64) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => {
      const c = document.createElement("canvas");
      c.width = image.width;
      c.height = image.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(image, 0, 0);
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      const ids = new Uint32Array(c.width * c.height);
      for (let i = 0; i < ids.length; i++) {
        ids[i] = px[4 * i] + 256 * px[4 * i + 1] + 65536 * px[4 * i + 2];
      }
      resolve(ids);
    };
    image.onerror = () => reject(new Error("cannot decode the panoptic PNG"));
    image.src = "data:image/png;base64," + pngBase64;
  });
}

function showPhoto(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = url;
  });
}

function setLinks(stem, body) {
  const links = $("links");
  links.innerHTML = "";
  const png = document.createElement("a");
  png.id = "download-png";
  png.href = "data:image/png;base64," + body.png;
  png.download = stem + "_panoptic.png";
  png.textContent = "Download PNG";
  const json = document.createElement("a");
  json.id = "download-json";
  const plain = Object.assign({}, body);
  delete plain.png;
  plain.file_name = stem + "_panoptic.png";
  json.href = URL.createObjectURL(new Blob([JSON.stringify(plain, null, 1)],
                                            { type: "application/json" }));
  json.download = stem + "_panoptic.json";
  json.textContent = "Download JSON";
  links.append(png, json);
}

function listSegments(segments) {
  const list = $("segments");
  list.innerHTML = "";
  for (const seg of segments) {
    const li = document.createElement("li");
    li.dataset.id = seg.id;
    const sw = document.createElement("span");
    sw.className = "swatch";
    const c = colorOf(seg);
    sw.style.background = `rgb(${c[0]},${c[1]},${c[2]})`;
    li.append(sw, document.createTextNode(describe(seg)));
    li.addEventListener("mouseenter", () => select(seg.id, false));
    li.addEventListener("mouseleave", () => select(null, false));
    li.addEventListener("click", () => select(seg.id, true));
    list.append(li);
  }
}

async function run(file) {
  if (!file) return;
  setStatus(`Running on ${file.name}...`);
  const form = new FormData();
  form.append("file", file);
  const t0 = performance.now();
  let body;
  try {
    const r = await fetch("/v1/panoptic?png=1", { method: "POST", body: form });
    body = await r.json();
    if (!r.ok) throw new Error(`${r.status}: ${body.error || r.statusText}`);
  } catch (e) {
    setStatus(`Error: ${e.message}`, true);
    return;
  }
  const ms = performance.now() - t0;
  const [photo, ids] = await Promise.all([showPhoto(file), decodeIds(body.png)]);
  Object.assign(state, { ids, width: body.width, height: body.height, pinned: null,
                         segments: {} });
  for (const seg of body.segments_info) state.segments[seg.id] = seg;
  state.scale = Math.max(1, Math.min(4, 512 / Math.max(body.width, body.height)));
  for (const id of ["photo", "overlay"]) {
    const c = $(id);
    c.width = body.width;
    c.height = body.height;
    c.style.width = body.width * state.scale + "px";
    c.style.height = body.height * state.scale + "px";
  }
  $("photo").getContext("2d").drawImage(photo, 0, 0, body.width, body.height);
  $("stage").style.display = "block";
  drawOverlay(null);
  listSegments(body.segments_info);
  const stem = file.name.replace(/\.[^.]*$/, "");
  setLinks(stem, body);
  setStatus(`${file.name}: ${body.segments_info.length} segments, ${body.width}x${body.height}, ` +
            `${ms.toFixed(0)} ms`);
  document.body.dataset.done = "1";
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  run(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => run(e.target.files[0]));
$("overlay").addEventListener("mousemove", (e) => select(segmentAt(e), false));
$("overlay").addEventListener("mouseleave", () => select(null, false));
$("overlay").addEventListener("click", (e) => select(segmentAt(e), true));
$("alpha").addEventListener("input", () => state.ids && drawOverlay(state.pinned));
loadMetadata().catch((e) => setStatus(`Model not ready: ${e.message}`, true));
