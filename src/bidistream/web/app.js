// The demo page's logic: one WebSocket to the gateway's front door
// (wss://<this origin>/endpoints/{name}/ws[/<path>][?query]) for text frames, and a
// microphone mode that streams 16 kHz linear16 to a Deepgram-compatible /v1/listen.
// Plain ES modules, no build step: what you read here is what the browser runs.
import { Pcm16Downsampler } from "./pcm.js";

const TARGET_RATE = 16000; // what the speech query declares: sample_rate=16000
const CHUNK_MS = 50;
const MAX_LOG = 500; // entries kept in the frame log: a long session must not grow the DOM forever
const CLOSE_WAIT_MS = 10000; // after CloseStream, how long the server may take to say its last words

const $ = (id) => document.getElementById(id);

// What a close code means, in words a user can act on.  The gateway's codes come
// from one table (bidistream.errors): 1008 validation/not found, 1011 model error,
// 1013 no capacity; a model may also close with its own code (Deepgram: 1002 bad audio).
const CLOSE_MEANINGS = {
  1000: "the session ended normally",
  1001: "the server is going away (shutting down or restarting)",
  1002: "the endpoint could not decode the data it was sent",
  1005: "the session ended without a status code",
  1006: "the connection dropped without a close frame: the gateway is unreachable, or this browser does not trust its certificate",
  1007: "a frame was not valid (for example text that is not UTF-8)",
  1008: "the request was refused: unknown endpoint, invalid path or query, or a policy limit",
  1009: "a frame was larger than the gateway accepts",
  1011: "the model refused the session or failed while streaming (its reason is below)",
  1013: "no capacity right now: try again in a moment",
};

export function explainClose(code, reason) {
  const meaning = CLOSE_MEANINGS[code] || (code >= 4000 ? "the model closed the session with its own code" : "unexpected close code");
  const said = reason ? ` The server said: “${reason}”.` : "";
  return `Connection closed with code ${code}: ${meaning}.${said}`;
}

/** The front door URL for an endpoint, invocation path and query, on this page's own origin. */
export function frontDoorUrl(endpoint, path, query) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const segments = (path || "").split("/").filter((s) => s.length > 0).map(encodeURIComponent);
  const tail = segments.length ? "/" + segments.join("/") : "";
  const q = (query || "").replace(/^\?/, "");
  return `${scheme}//${location.host}/endpoints/${encodeURIComponent(endpoint)}/ws${tail}${q ? "?" + q : ""}`;
}

// ------------------------------------------------------------------ page furniture
function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(id, state, text) {
  const out = $(id);
  out.dataset.state = state;
  out.textContent = text;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

// When the log was last cleared, and when the last frame went out: each entry shows its time on the
// page's clock and, for frames that come back, how long after the last frame sent they arrived.
let logEpoch = performance.now();
let lastSentAt = null;

function clock(at) {
  return `${((at - logEpoch) / 1000).toFixed(3)} s`;
}

/** Append one line to the frame log: dir is in/out/info/error, kind text/binary/close/... */
function logFrame(dir, kind, content) {
  const now = performance.now();
  const log = $("log");
  const li = document.createElement("li");
  li.dataset.dir = dir;
  li.dataset.kind = kind;
  const arrow = { in: "←", out: "→", info: "·", error: "!" }[dir];
  if (dir === "out") lastSentAt = now;
  const at = document.createElement("span");
  at.className = "at";
  at.textContent = clock(now);
  li.append(at);
  for (const [cls, text] of [["dir", arrow + " "], ["kind", kind], ["content", " " + content]]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text; // textContent, never innerHTML: frames are untrusted
    li.append(span);
  }
  if (dir === "in" && lastSentAt !== null) {
    const latency = document.createElement("span");
    latency.className = "latency";
    const ms = now - lastSentAt;
    li.dataset.latencyMs = ms.toFixed(1);
    latency.textContent = ` (+${ms.toFixed(0)} ms after the last frame sent)`;
    li.append(latency);
  }
  log.append(li);
  while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function describeBinary(buffer) {
  const bytes = new Uint8Array(buffer);
  const head = hex(bytes.subarray(0, 24));
  return `${bytes.length} bytes${bytes.length ? ": " + head : ""}${bytes.length > 24 ? " …" : ""}`;
}

/**
 * Open a socket and wire the common reporting: every frame to the log, every
 * abnormal close to the error box.  Returns the WebSocket.
 */
function openSocket(url, { onOpen, onText, onClose }) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.addEventListener("open", () => {
    opened = true;
    logFrame("info", "open", url);
    onOpen();
  });
  ws.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      logFrame("in", "text", event.data);
      if (onText) onText(event.data);
    } else {
      logFrame("in", "binary", describeBinary(event.data));
    }
  });
  ws.addEventListener("close", (event) => {
    const { code, reason } = event;
    const normal = code === 1000 || code === 1005;
    let text = explainClose(code, reason);
    if (!opened && code === 1006) {
      text = `Could not open ${url} (code 1006): the gateway refused the request (check the endpoint, path and query), is unreachable, or this browser does not trust its certificate.`;
    }
    logFrame(normal ? "info" : "error", "close", `${code}${reason ? " " + reason : ""}`);
    if (!normal) showError(text);
    onClose(code, reason, normal);
  });
  return ws;
}

// ------------------------------------------------------------------ text mode
let textSocket = null;

function setTextControls(open) {
  $("connect").disabled = open;
  $("disconnect").disabled = !open;
  $("message").disabled = !open;
  $("send").disabled = !open;
}

function connectText(event) {
  event.preventDefault();
  if (textSocket) return;
  clearError();
  const endpoint = $("endpoint").value.trim();
  if (!endpoint) {
    showError("Type an endpoint name first (for example echo or words).");
    return;
  }
  const url = frontDoorUrl(endpoint, $("path").value.trim(), $("query").value.trim());
  $("url").textContent = url;
  setStatus("status", "connecting", "connecting…");
  $("connect").disabled = true;
  textSocket = openSocket(url, {
    onOpen: () => {
      setStatus("status", "open", `open to ${endpoint}`);
      setTextControls(true);
      $("message").focus();
    },
    onClose: (code, reason, normal) => {
      textSocket = null;
      setTextControls(false);
      setStatus("status", normal ? "closed" : "error", normal ? `closed (${code})` : `closed with error ${code}`);
    },
  });
}

function sendText(event) {
  event.preventDefault();
  const input = $("message");
  if (!textSocket || textSocket.readyState !== WebSocket.OPEN || input.value === "") return;
  textSocket.send(input.value);
  logFrame("out", "text", input.value);
  input.value = "";
}

function disconnectText() {
  if (textSocket) {
    setStatus("status", "closing", "closing…");
    textSocket.close(1000, "closed by the user");
  }
}

// ------------------------------------------------------------------ endpoints from the control plane
/**
 * Ask the gateway's control plane (SageMaker ListEndpoints, JSON 1.1 on this origin) which endpoints
 * exist and their status. A gateway that checks credentials refuses an unsigned call: the page then
 * says so and the endpoint fields stay free text.
 */
async function refreshEndpoints() {
  setStatus("endpoints-status", "connecting", "asking the control plane…");
  let answer;
  try {
    const response = await fetch("/", {
      method: "POST",
      headers: { "X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": "application/x-amz-json-1.1" },
      body: JSON.stringify({ MaxResults: 100 }),
    });
    answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const why = answer.message || answer.Message || `HTTP ${response.status}`;
      setStatus("endpoints-status", "error", `the control plane did not list endpoints (${why}); type a name below`);
      return;
    }
  } catch (err) {
    setStatus("endpoints-status", "error", `the control plane is unreachable (${err.message}); type a name below`);
    return;
  }
  const endpoints = answer.Endpoints || [];
  const list = $("endpoints");
  const options = $("endpoint-list");
  list.replaceChildren();
  options.replaceChildren();
  for (const ep of endpoints) {
    const li = document.createElement("li");
    li.dataset.endpoint = ep.EndpointName;
    const name = document.createElement("code");
    name.textContent = ep.EndpointName;
    const state = document.createElement("span");
    state.className = "state";
    state.dataset.status = ep.EndpointStatus;
    state.textContent = ` ${ep.EndpointStatus}`;
    li.append(name, state);
    list.append(li);
    const option = document.createElement("option");
    option.value = ep.EndpointName;
    option.label = ep.EndpointStatus;
    options.append(option);
  }
  const n = endpoints.length;
  setStatus("endpoints-status", "open", n ? `${n} endpoint${n === 1 ? "" : "s"}` : "no endpoints yet (create one with boto3)");
}

// ------------------------------------------------------------------ microphone mode
/** The Deepgram query the microphone session opens with, from the options the user ticked. */
export function speechQuery() {
  const flag = (id) => ($(id).checked ? "true" : "false");
  return [
    "encoding=linear16",
    `sample_rate=${TARGET_RATE}`,
    `interim_results=${flag("opt-interim")}`,
    `punctuate=${flag("opt-punctuate")}`,
    `smart_format=${flag("opt-smart-format")}`,
  ].join("&");
}

let mic = null; // { ws, stream, ctx, node, source, stopped }

function micErrorText(err) {
  const name = err && err.name;
  if (name === "NotAllowedError") return "Microphone access was denied: allow it in the browser's site settings and try again.";
  if (name === "NotFoundError") return "No microphone was found on this device.";
  if (name === "NotReadableError") return "The microphone is in use by another application or could not be opened.";
  if (!window.isSecureContext) return "The microphone needs a secure page: open this page over https.";
  return `Could not start the microphone: ${name || "error"}: ${(err && err.message) || err}`;
}

function setMicControls(running) {
  $("mic-start").disabled = running;
  $("mic-stop").disabled = !running;
}

function showResults(message) {
  if (message.type === "Results") {
    const alt = message.channel && message.channel.alternatives && message.channel.alternatives[0];
    const text = (alt && alt.transcript) || "";
    if (message.is_final) {
      if (text) {
        const final = $("final");
        final.textContent = (final.textContent ? final.textContent + " " : "") + text;
      }
      $("interim").textContent = "";
    } else {
      $("interim").textContent = text ? " " + text : "";
    }
  } else if (message.type === "Error") {
    showError(`The speech endpoint reported an error: ${message.description || message.variant || "unknown error"}`);
  }
}

/** Start capture on `stream`, calling send(ArrayBuffer) per chunk; the worklet if the browser has one. */
async function startCapture(stream, send) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  if (ctx.audioWorklet) {
    await ctx.audioWorklet.addModule(new URL("pcm-worklet.js", import.meta.url));
    const node = new AudioWorkletNode(ctx, "linear16-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: "explicit", // downmix a stereo device to mono before it reaches us
      processorOptions: { targetRate: TARGET_RATE, chunkMs: CHUNK_MS },
    });
    let flushed = null;
    node.port.onmessage = (event) => {
      if (event.data === "flushed") {
        if (flushed) flushed();
      } else {
        send(event.data);
      }
    };
    source.connect(node);
    node.connect(ctx.destination); // renders silence; an unconnected node may never be pulled
    const flush = () => new Promise((resolve) => {
      flushed = resolve;
      node.port.postMessage("flush");
      setTimeout(resolve, 500); // a suspended context never answers: don't hang Stop
    });
    return { ctx, source, node, flush };
  }
  // Fallback for browsers without AudioWorklet: the deprecated ScriptProcessor on the main thread.
  const pcm = new Pcm16Downsampler(ctx.sampleRate, TARGET_RATE, CHUNK_MS);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  node.onaudioprocess = (event) => {
    for (const chunk of pcm.push(event.inputBuffer.getChannelData(0))) send(chunk);
    event.outputBuffer.getChannelData(0).fill(0);
  };
  source.connect(node);
  node.connect(ctx.destination);
  const flush = async () => {
    node.onaudioprocess = null;
    for (const chunk of pcm.flush()) send(chunk);
  };
  return { ctx, source, node, flush };
}

function releaseAudio(state) {
  if (state.stream) for (const track of state.stream.getTracks()) track.stop();
  if (state.capture) {
    state.capture.source.disconnect();
    state.capture.node.disconnect();
    state.capture.ctx.close().catch(() => {});
  }
  state.stream = null;
  state.capture = null;
}

async function startMic() {
  if (mic) return;
  clearError();
  const endpoint = $("mic-endpoint").value.trim() || "speech";
  const state = { ws: null, stream: null, capture: null, stopped: false };
  mic = state;
  setMicControls(true);
  $("final").textContent = "";
  $("interim").textContent = "";
  setStatus("mic-status", "connecting", "asking for the microphone…");
  try {
    // Ask first: a permission prompt left open would otherwise idle the session out.
    // Voice processing is off: it is tuned for calls and clips word onsets the model needs.
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    mic = null;
    setMicControls(false);
    setStatus("mic-status", "error", "off");
    showError(micErrorText(err));
    return;
  }
  if (state.stopped) {
    // Stop was pressed while the permission prompt was open.
    releaseAudio(state);
    mic = null;
    setMicControls(false);
    setStatus("mic-status", "closed", "off");
    return;
  }
  const query = speechQuery();
  const url = frontDoorUrl(endpoint, "v1/listen", query);
  setStatus("mic-status", "connecting", "connecting…");
  const send = (chunk) => {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(chunk);
  };
  state.ws = openSocket(url, {
    onOpen: async () => {
      try {
        state.capture = await startCapture(state.stream, send);
        if (state.stopped) return releaseAudio(state);
        setStatus("mic-status", "open", `listening (${state.capture.ctx.sampleRate} Hz → ${TARGET_RATE} Hz)`);
      } catch (err) {
        showError(micErrorText(err));
        stopMic();
      }
    },
    onText: (data) => {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        return; // not JSON: already in the log, nothing to draw
      }
      showResults(message);
    },
    onClose: (code, reason, normal) => {
      clearTimeout(state.closeTimer);
      releaseAudio(state);
      if (mic === state) mic = null;
      setMicControls(false);
      $("interim").textContent = "";
      setStatus("mic-status", normal ? "closed" : "error", normal ? "off (session ended)" : `off (error ${code})`);
    },
  });
}

async function stopMic() {
  const state = mic;
  if (!state || state.stopped) return;
  state.stopped = true;
  $("mic-stop").disabled = true;
  setStatus("mic-status", "closing", "finishing the transcript…");
  if (state.capture) await state.capture.flush(); // the last partial chunk, then nothing more
  releaseAudio(state);
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) {
    // Deepgram's way to end: the server sends its last finals and Metadata, then closes 1000.
    const close = JSON.stringify({ type: "CloseStream" });
    ws.send(close);
    logFrame("out", "text", close);
    state.closeTimer = setTimeout(() => ws.close(1000, "no answer to CloseStream"), CLOSE_WAIT_MS);
  } else if (ws && ws.readyState === WebSocket.CONNECTING) {
    ws.close(1000, "stopped before the session opened");
  }
}

// ------------------------------------------------------------------ wiring
function main() {
  $("connect-form").addEventListener("submit", connectText);
  $("disconnect").addEventListener("click", disconnectText);
  $("send-form").addEventListener("submit", sendText);
  $("mic-start").addEventListener("click", startMic);
  $("mic-stop").addEventListener("click", stopMic);
  $("clear-log").addEventListener("click", () => {
    $("log").replaceChildren();
    logEpoch = performance.now();
    lastSentAt = null;
  });
  $("refresh-endpoints").addEventListener("click", refreshEndpoints);
  $("mic-form").addEventListener("submit", (event) => event.preventDefault());
  refreshEndpoints();
  if (!navigator.mediaDevices || !window.AudioContext) {
    $("mic-start").disabled = true;
    setStatus("mic-status", "error", "unavailable in this browser (or the page is not on https)");
  }
  document.body.dataset.ready = "true"; // the page is wired: tests and users can start
}

main();
