// The page: one image, a conversation about it through /v1/chat/completions, the answer's
// boxes drawn over the image. The SVG overlay's viewBox is the 0..1000 box grid, so a box
// (x1,y1),(x2,y2) is drawn as a rect at those numbers; the server reads the boxes of each
// answer (message.boxes), the page never parses box text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { config: null, image: null, messages: [], region: null, answers: [] };

function setStatus(text, busy = false) {
  $("status").textContent = text;
  $("status").className = busy ? "busy" : "";
}

function rect(box, cls) {
  const [x1, y1, x2, y2] = box;
  const r = document.createElementNS(SVG, "rect");
  r.setAttribute("class", cls);
  r.setAttribute("x", Math.min(x1, x2));
  r.setAttribute("y", Math.min(y1, y2));
  r.setAttribute("width", Math.abs(x2 - x1));
  r.setAttribute("height", Math.abs(y2 - y1));
  r.dataset.box = box.join(",");
  return r;
}

function draw(answerBoxes, region) {
  const svg = $("overlay");
  svg.replaceChildren();
  if (region) svg.appendChild(rect(region, "question"));
  for (const b of answerBoxes || []) {
    svg.appendChild(rect(b.box, "answer"));
    if (b.ref) {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", Math.min(b.box[0], b.box[2]) + 6);
      t.setAttribute("y", Math.max(Math.min(b.box[1], b.box[3]) - 8, 30));
      t.textContent = b.ref;
      svg.appendChild(t);
    }
  }
}

function showAnswer(i) {
  document.querySelectorAll("#history li.assistant").forEach((li) =>
    li.classList.toggle("shown", Number(li.dataset.turn) === i));
  const a = state.answers[i];
  draw(a.boxes, a.region);
}

function addTurn(role, text, turn) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "bird";
  li.append(who, document.createTextNode(text));
  if (turn !== undefined) {
    li.dataset.turn = turn;
    li.addEventListener("click", () => showAnswer(turn));
  }
  $("history").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
}

function reset() {
  state.messages = [];
  state.answers = [];
  state.region = null;
  $("history").replaceChildren();
  draw([], null);
  setStatus("");
}

// ---- the image -----------------------------------------------------------------------------

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const limit = state.config ? state.config.max_body_bytes : Infinity;
  if (file.size * 4 / 3 > limit) {  // base64 in the request body
    const mb = (n) => (n / 2 ** 20).toFixed(1);
    return setStatus(`${file.name} is ${mb(file.size)} MB; this server takes requests up to ` +
                     `${mb(limit)} MB (--max-body-mb)`);
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;
    $("image").src = reader.result;
    reset();
  };
  reader.onerror = () => setStatus(`cannot read ${file.name}`);
  reader.readAsDataURL(file);
});

$("image").addEventListener("load", () => {
  const img = $("image");
  const width = 480;
  const height = Math.min(720, Math.round(width * img.naturalHeight / img.naturalWidth));
  $("stage").style.width = `${width}px`;
  $("stage").style.height = `${height}px`;
  $("placeholder").hidden = true;
});

// ---- dragging a region ---------------------------------------------------------------------

function gridPoint(ev) {
  const r = $("overlay").getBoundingClientRect();
  const g = state.config ? state.config.grid : 1000;
  const clamp = (v) => Math.max(0, Math.min(g, Math.round(v)));
  return [clamp((ev.clientX - r.left) / r.width * g), clamp((ev.clientY - r.top) / r.height * g)];
}

let dragStart = null;
$("overlay").addEventListener("pointerdown", (ev) => {
  if (!state.image) return;
  dragStart = gridPoint(ev);
  $("overlay").setPointerCapture(ev.pointerId);
});
$("overlay").addEventListener("pointermove", (ev) => {
  if (!dragStart) return;
  const [x, y] = gridPoint(ev);
  draw([], [dragStart[0], dragStart[1], x, y]);
});
$("overlay").addEventListener("pointerup", (ev) => {
  if (!dragStart) return;
  const [x, y] = gridPoint(ev);
  const box = [Math.min(dragStart[0], x), Math.min(dragStart[1], y),
               Math.max(dragStart[0], x), Math.max(dragStart[1], y)];
  dragStart = null;
  if (box[2] - box[0] < 3 || box[3] - box[1] < 3) return;  // a click, not a region
  state.region = box;
  draw([], box);
  const span = `<box>(${box[0]},${box[1]}),(${box[2]},${box[3]})</box>`;
  const q = $("question");
  q.value = q.value.trim() ? `${q.value.trim()} ${span}` : `What is the object at ${span}?`;
  q.focus();
});

// ---- asking --------------------------------------------------------------------------------

async function ask(ev) {
  ev.preventDefault();
  const text = $("question").value.trim();
  if (!state.image) return setStatus("pick an image first");
  if (!text) return setStatus("type a question");
  const content = state.messages.length === 0
    ? [{ type: "image_url", image_url: { url: state.image } }, { type: "text", text }]
    : text;
  const messages = [...state.messages, { role: "user", content }];
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value;
  if (key) headers.Authorization = `Bearer ${key}`;
  const body = { model: state.config.model, messages,
                 temperature: Number($("temperature").value) || 0 };
  $("send").disabled = true;
  setStatus("thinking...", true);
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers,
                                                      body: JSON.stringify(body) });
    const data = await res.json();
    if (!res.ok) throw new Error(data.error ? data.error.message : `HTTP ${res.status}`);
    const msg = data.choices[0].message;
    state.messages = [...messages, { role: "assistant", content: msg.content }];
    state.answers.push({ boxes: msg.boxes, region: state.region });
    addTurn("user", text);
    addTurn("assistant", msg.content, state.answers.length - 1);
    showAnswer(state.answers.length - 1);
    state.region = null;
    $("question").value = "";
    setStatus("");
  } catch (e) {
    setStatus(String(e.message || e));
  } finally {
    $("send").disabled = false;
  }
}

$("ask").addEventListener("submit", ask);
$("reset").addEventListener("click", reset);
$("question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) ask(ev);
});

(async function init() {
  try {
    state.config = await (await fetch("/ui/config")).json();
  } catch (e) {
    return setStatus(`cannot reach the server: ${e}`);
  }
  $("model").textContent = state.config.model;
  document.documentElement.style.setProperty("--answer", state.config.colors.answer);
  document.documentElement.style.setProperty("--question", state.config.colors.question);
  $("key-row").hidden = !state.config.api_key_required;
  document.body.dataset.ready = "1";
})();
