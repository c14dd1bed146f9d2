"use strict";
// The pad, the upload, and every model's answer. The server does all the image work
// (the preprocessing of `mnist-mlp predict`); this only draws, posts and shows.

const DEBOUNCE_MS = 150; // while drawing: one request per pause this long, not one per pointer move
const INK_WIDTH = 18; // pad pixels: about the stroke of an MNIST digit once scaled to 28x28

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen");
const statusLine = document.getElementById("status");
const lineupLine = document.getElementById("lineup");
const modelsBox = document.getElementById("models");
const upload = document.getElementById("upload");
const sweep = new URLSearchParams(location.search).get("sweep");
const query = sweep ? `?sweep=${encodeURIComponent(sweep)}` : "";

const cards = new Map(); // model name -> its card
let maxUploadBytes = Infinity;
let drawing = null; // the id of the pointer drawing now
let last = null; // where it was
let hasInk = false;
let timer = null;
let busy = false; // one request at a time; the newest image waits for it
let waiting = null;
let generation = 0; // bumped by Clear: answers to an earlier drawing are dropped

function say(text, problem = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("problem", problem);
}

// --- drawing -------------------------------------------------------------------------

function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
  generation += 1;
  clearTimeout(timer);
  showPixels(null);
  for (const card of cards.values()) showAnswer(card, null);
  say("Draw a digit on the pad.");
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: ((event.clientX - box.left) * pad.width) / box.width, y: ((event.clientY - box.top) * pad.height) / box.height };
}

function line(from, to) {
  ink.strokeStyle = "#000";
  ink.lineWidth = INK_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
  hasInk = true;
}

pad.addEventListener("pointerdown", (event) => {
  if (drawing !== null) return; // a second finger does not draw
  event.preventDefault();
  drawing = event.pointerId;
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  line(last, last);
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== drawing) return;
  // the points the browser merged into this event since the last one: smooth fast strokes
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) {
    const here = point(move);
    line(last, here);
    last = here;
  }
  schedule(DEBOUNCE_MS);
});

for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, (event) => {
    if (event.pointerId !== drawing) return;
    drawing = null;
    schedule(0);
  });
}

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (!hasInk) return say("Draw a digit on the pad first.", true);
    const drawn = generation; // toBlob answers later: a Clear in between wins
    pad.toBlob((blob) => send(blob, "pad.png", drawn), "image/png");
  }, delay);
}

document.getElementById("clear").addEventListener("click", clearPad);

upload.addEventListener("change", () => {
  const file = upload.files[0];
  upload.value = ""; // choosing the same file again is a new upload
  if (!file) return;
  clearPad();
  if (file.size > maxUploadBytes) {
    return say(`${file.name}: ${(file.size / 2 ** 20).toFixed(1)} MiB; at most ${maxUploadBytes / 2 ** 20} MiB`, true);
  }
  say(`Uploaded ${file.name}.`);
  send(file, file.name, generation);
});

// --- the server ----------------------------------------------------------------------

async function send(blob, name, sent) {
  if (sent !== generation) return; // the pad was cleared since
  if (busy) {
    waiting = [blob, name, sent];
    return;
  }
  busy = true;
  const form = new FormData();
  form.append("image", blob, name);
  try {
    const response = await fetch(`api/predict${query}`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status} without an explanation` }));
    if (sent !== generation) return; // the pad was cleared meanwhile
    if (!response.ok) {
      for (const card of cards.values()) showAnswer(card, null);
      showPixels(null);
      const blank = body.error && body.error.includes("no digit found");
      return say(blank ? "No digit found: draw a digit on the pad." : body.error, true);
    }
    showPixels(body.pixels);
    for (const model of body.models) showAnswer(cardFor(model), model);
    if (name === "pad.png") say("Keep drawing to see the answers change, or Clear.");
  } catch (error) {
    say(`The server does not answer (${error.message}); is \`mnist-mlp app\` still running?`, true);
  } finally {
    busy = false;
    if (waiting) {
      const next = waiting;
      waiting = null;
      send(...next);
    }
  }
}

async function loadModels() {
  try {
    const response = await fetch(`api/models${query}`);
    const body = await response.json();
    if (!response.ok) return (lineupLine.textContent = body.error);
    maxUploadBytes = body.max_upload_bytes;
    for (const model of body.models) cardFor(model);
    const others = body.models.length - 1;
    if (body.sweep) lineupLine.textContent = `The current model and the ${others} model(s) of sweep ${body.sweep}.`;
    else if (others > 0) lineupLine.textContent = `The current model and ${others} model(s) from the command line.`;
    else lineupLine.textContent = `The current model only: ${body.notice || "no sweep found"}`;
  } catch (error) {
    lineupLine.textContent = `The server does not answer (${error.message}); is \`mnist-mlp app\` still running?`;
  }
}

// --- the answers ---------------------------------------------------------------------

function cardFor(model) {
  let card = cards.get(model.name);
  if (!card) {
    card = document.getElementById("card").content.firstElementChild.cloneNode(true);
    card.dataset.model = model.name;
    const bars = card.querySelector(".bars");
    for (let digit = 0; digit < 10; digit += 1) {
      const row = document.createElement("li");
      row.innerHTML = `<span>${digit}</span><span class="bar"><span></span></span><span class="percent"></span>`;
      bars.append(row);
    }
    cards.set(model.name, card);
    modelsBox.append(card);
  }
  // headed by what tells it apart (a sweep run's params), then the name the API and the tests use
  const current = model.name === "current";
  card.querySelector(".name").textContent = current ? "current model" : model.title;
  card.querySelector(".title").textContent = current ? model.title : model.title === model.name ? model.source : model.name;
  card.querySelector(".name").title = card.querySelector(".title").title = model.source;
  card.querySelector(".error").textContent = model.error || "";
  return card;
}

function showAnswer(card, model) {
  const answered = model && model.probabilities;
  if (answered) card.dataset.label = String(model.label);
  else delete card.dataset.label;
  card.querySelector(".digit").textContent = answered ? model.label : "";
  card.title = answered ? `${model.milliseconds.toFixed(2)} ms on the server` : "";
  card.querySelectorAll(".bars li").forEach((row, digit) => {
    const p = answered ? model.probabilities[digit] : 0;
    row.classList.toggle("top", answered && digit === model.label);
    row.querySelector(".bar span").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".percent").textContent = answered ? `${(100 * p).toFixed(1)}%` : "";
  });
}

function showPixels(pixels) {
  const context = seen.getContext("2d");
  const image = context.createImageData(28, 28);
  for (let i = 0; i < 28 * 28; i += 1) {
    const value = pixels ? Math.round(255 * pixels[Math.floor(i / 28)][i % 28]) : 0;
    image.data.set([value, value, value, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
}

clearPad();
loadModels();
