// The /voice page: microphone → GET /v1/voice (PCM16 at 16 kHz); events and speech back.
"use strict";

const $ = (id) => document.getElementById(id);
// What the page did, for people and for the browser test.
const state = (window.duet = {
  events: [], audioBytes: 0, chunksPlayed: 0, cleared: 0, ws: null, sampleRate: 22050,
});

let capture = null;   // AudioContext of the microphone (16 kHz)
let playback = null;  // AudioContext of the speech
let stream = null;
let playAt = 0;
let playing = [];
let replyLine = null;

function setStatus(text) { $("status").textContent = text; }

function addLine(parent, text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  parent.appendChild(p);
  return p;
}

function onEvent(ev) {
  state.events.push(ev);
  switch (ev.type) {
    case "audio_format":
      state.sampleRate = ev.sample_rate;
      break;
    case "session":
      setStatus("listening");
      break;
    case "transcript":
      if (ev.final) {
        $("interim").textContent = "";
        if (ev.text) addLine($("transcript"), ev.text);
      } else {
        $("interim").textContent = ev.text;
      }
      break;
    case "delta":
      if (!replyLine) replyLine = addLine($("reply"), "");
      if (ev.source === "ack") {
        const span = document.createElement("span");
        span.className = "ack";
        span.textContent = ev.text;
        replyLine.appendChild(span);
      } else {
        replyLine.appendChild(document.createTextNode(ev.text));
      }
      setStatus("speaking");
      break;
    case "done":
      if (ev.cancelled && replyLine) replyLine.classList.add("cut");
      replyLine = null;
      break;
    case "audio_clear":
      stopPlayback();
      state.cleared += 1;
      setStatus("listening");
      break;
    case "escalated":
      addLine($("reply"), "A person from the support team will join shortly.", "ack");
      break;
    case "error":
      addLine($("reply"), `(${ev.code}) ${ev.message}`, "ack");
      break;
  }
}

function stopPlayback() {
  for (const source of playing) {
    try { source.stop(); } catch (e) { /* already ended */ }
  }
  playing = [];
  playAt = 0;
}

function onAudio(buffer) {
  state.audioBytes += buffer.byteLength;
  $("audio-seconds").textContent = (state.audioBytes / 2 / state.sampleRate).toFixed(1);
  const pcm = new Int16Array(buffer);
  if (!playback || pcm.length === 0) return;
  const audio = playback.createBuffer(1, pcm.length, state.sampleRate);
  const channel = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const source = playback.createBufferSource();
  source.buffer = audio;
  source.connect(playback.destination);
  playAt = Math.max(playAt, playback.currentTime + 0.05);
  source.start(playAt);
  playAt += audio.duration;
  playing.push(source);
  source.onended = () => {
    state.chunksPlayed += 1;
    playing = playing.filter((s) => s !== source);
    if (playing.length === 0) setStatus("listening");
  };
}

async function start() {
  $("start").disabled = true;
  setStatus("starting");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    capture = new AudioContext({ sampleRate: 16000 });
    playback = new AudioContext();
    await capture.audioWorklet.addModule("/voice/capture-worklet.js");
  } catch (err) {
    setStatus(`no microphone: ${err.message}`);
    $("start").disabled = false;
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/voice`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "hello", sample_rate: capture.sampleRate }));
    const source = capture.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(capture, "duet-capture");
    node.port.onmessage = (msg) => { if (ws.readyState === 1) ws.send(msg.data); };
    source.connect(node);
    $("stop").disabled = false;
  };
  ws.onmessage = (msg) => {
    if (typeof msg.data === "string") onEvent(JSON.parse(msg.data));
    else onAudio(msg.data);
  };
  ws.onclose = () => { setStatus("call ended"); hangUp(false); };
}

function hangUp(closeSocket = true) {
  if (closeSocket && state.ws) state.ws.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (capture) capture.close();
  stream = capture = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => hangUp(true));
