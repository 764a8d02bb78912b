// Hallo node pack: what ComfyUI does not show by itself.
// - DiTDenoise: "clip i of n" and the time left while it renders (from the node's progress text);
// - DiTDenoise and AudioEncodeWav2Vec: the frame and clip counts the connected speech will give, before running;
// - DiTDenoise: after a run, its finished video plays with sound in the node (ComfyUI's own video preview).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const FPS = 25;
const NEW_FRAMES_PER_CLIP = 47; // 49-frame clips, 2 of them continue the previous clip
const STATUS = "hallo_status";
const durations = new Map(); // audio file name -> seconds (or a pending promise)

function statusElement(node) {
  const widget = node.widgets?.find((w) => w.name === STATUS);
  return widget?.element;
}

function addStatus(node) {
  const element = document.createElement("div");
  element.className = "hallo-status";
  element.style.cssText =
    "font: 12px monospace; color: var(--input-text, #ddd); padding: 2px 6px; white-space: pre-wrap; opacity: 0.85";
  element.textContent = "";
  const widget = node.addDOMWidget(STATUS, "div", element, { serialize: false, hideOnZoom: false });
  widget.serialize = false; // not a setting: never saved in widgets_values
}

function setStatus(node, text) {
  const element = statusElement(node);
  if (element && element.textContent !== text) {
    element.textContent = text;
    node.setDirtyCanvas?.(true, true);
  }
}

function upstream(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (!input || input.link == null) return null;
  const link = app.graph.links[input.link] ?? app.graph.links.get?.(input.link);
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

function speechFileOf(node) {
  // DiTDenoise.speech <- AudioEncodeWav2Vec.audio <- LoadAudio(audio widget)
  const encoder = node.type === "HalloAudioEncodeWav2Vec" ? node : upstream(node, "speech");
  const loader = encoder && upstream(encoder, "audio");
  const widget = loader?.widgets?.find((w) => w.name === "audio");
  return typeof widget?.value === "string" ? widget.value : null;
}

function audioSeconds(name) {
  if (durations.has(name)) return durations.get(name);
  const [subfolder, filename] = name.includes("/") ? [name.slice(0, name.lastIndexOf("/")), name.slice(name.lastIndexOf("/") + 1)] : ["", name];
  const audio = new Audio();
  audio.preload = "metadata";
  durations.set(name, null);
  audio.addEventListener("loadedmetadata", () => durations.set(name, audio.duration));
  audio.src = api.apiURL(`/view?filename=${encodeURIComponent(filename)}&subfolder=${encodeURIComponent(subfolder)}&type=input`);
  return null;
}

export function plan(seconds, start = 0, duration = 0) {
  const frames = Math.ceil(seconds * FPS);
  const clips = Math.ceil(frames / NEW_FRAMES_PER_CLIP);
  const firstClip = Math.floor(Math.floor(start * FPS) / NEW_FRAMES_PER_CLIP);
  const stopFrame = duration > 0 ? Math.min(frames, Math.ceil((start + duration) * FPS)) : frames;
  const lastClip = Math.max(firstClip + 1, Math.ceil(stopFrame / NEW_FRAMES_PER_CLIP));
  return { frames, clips, firstClip, lastClip };
}

function describe(node) {
  const name = speechFileOf(node);
  if (!name) return "connect a speech (LoadAudio -> AudioEncodeWav2Vec)";
  const seconds = audioSeconds(name);
  if (!seconds) return `${name}: reading length...`;
  const widget = (n) => node.widgets?.find((w) => w.name === n)?.value ?? 0;
  const p = plan(seconds, widget("start_seconds"), widget("duration_seconds"));
  const whole = `${seconds.toFixed(2)} s -> ${p.frames} frames, ${p.clips} clips`;
  if (node.type !== "HalloDiTDenoise") return whole;
  const segment = p.lastClip - p.firstClip;
  return segment === p.clips ? whole : `${whole}\nthis segment: clips ${p.firstClip + 1}-${p.lastClip} (${segment})`;
}

const rendering = new Map(); // node id -> latest progress text

app.registerExtension({
  name: "hallo.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "HalloDiTDenoise" && nodeData.name !== "HalloAudioEncodeWav2Vec") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      addStatus(this);
      return result;
    };
  },
  setup() {
    api.addEventListener("progress_text", ({ detail }) => {
      const node = app.graph.getNodeById(Number(detail?.nodeId ?? detail?.node));
      if (node?.type === "HalloDiTDenoise") {
        rendering.set(node.id, detail.text);
        setStatus(node, detail.text);
      }
    });
    api.addEventListener("executed", ({ detail }) => {
      const node = app.graph.getNodeById(Number(detail?.node));
      if (node?.type?.startsWith("Hallo")) rendering.delete(node.id);
    });
    api.addEventListener("execution_interrupted", () => rendering.clear());
    api.addEventListener("execution_error", () => rendering.clear());
    setInterval(() => {
      for (const node of app.graph?._nodes ?? []) {
        if (node.type !== "HalloDiTDenoise" && node.type !== "HalloAudioEncodeWav2Vec") continue;
        setStatus(node, rendering.get(node.id) ?? describe(node));
      }
    }, 1000);
  },
});
