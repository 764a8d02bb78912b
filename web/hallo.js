// Hallo node pack: what ComfyUI does not show by itself.
// - the denoise nodes and AudioEncodeWav2Vec: the frames and clips the connected speech will give, before running
//   (Hallo3 clips add 47 frames, Hallo/Hallo2 clips 16);
// - after a run, the denoise and upscale nodes play their finished video (ComfyUI's own video preview) instead of the
//   last latent preview, and the denoise nodes keep their result text under the status (progress is ComfyUI's own
//   node text, which newer frontends clear when the run ends).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const FPS = 25;
const NEW_FRAMES = { HalloDiTDenoise: 47, HalloUNetDenoise: 16 }; // frames each clip adds
const DENOISE = Object.keys(NEW_FRAMES);
const STATUS_NODES = [...DENOISE, "HalloAudioEncodeWav2Vec"];
const VIDEO_NODES = [...DENOISE, "HalloVQTemporalUpscale4K"];
const STATUS = "hallo_status";
const durations = new Map(); // audio file name -> seconds, null while reading, or an error text
const results = new Map(); // node id -> the text of its last run (kept: newer frontends clear progress texts)

function statusElement(node) {
  return node.widgets?.find((w) => w.name === STATUS)?.element;
}

function addStatus(node) {
  const element = document.createElement("div");
  element.className = "hallo-status";
  element.style.cssText =
    "font: 12px monospace; color: var(--input-text, #ddd); padding: 2px 6px; white-space: pre-wrap; opacity: 0.85";
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

function linkOf(id) {
  return app.graph.links[id] ?? app.graph.links.get?.(id);
}

function upstream(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (!input || input.link == null) return null;
  const link = linkOf(input.link);
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

function downstream(node) {
  const found = [];
  for (const output of node.outputs ?? []) {
    for (const id of output.links ?? []) {
      const link = linkOf(id);
      const target = link && app.graph.getNodeById(link.target_id);
      if (target) found.push(target);
    }
  }
  return found;
}

function speechFileOf(node) {
  // denoise.speech <- AudioEncodeWav2Vec.audio <- LoadAudio(audio widget)
  const encoder = node.type === "HalloAudioEncodeWav2Vec" ? node : upstream(node, "speech");
  const loader = encoder && upstream(encoder, "audio");
  const widget = loader?.widgets?.find((w) => w.name === "audio");
  return typeof widget?.value === "string" && widget.value ? widget.value : null;
}

function audioSeconds(name) {
  if (durations.has(name)) return durations.get(name);
  const slash = name.lastIndexOf("/");
  const [subfolder, filename] = slash >= 0 ? [name.slice(0, slash), name.slice(slash + 1)] : ["", name];
  const audio = new Audio();
  audio.preload = "metadata";
  durations.set(name, null);
  audio.addEventListener("loadedmetadata", () =>
    durations.set(name, Number.isFinite(audio.duration) && audio.duration > 0 ? audio.duration : "not readable"));
  audio.addEventListener("error", () => durations.set(name, "not found or not readable"));
  audio.src = api.apiURL(`/view?filename=${encodeURIComponent(filename)}&subfolder=${encodeURIComponent(subfolder)}&type=input`);
  return null;
}

export function plan(seconds, newFrames, start = 0, duration = 0) {
  const frames = Math.ceil(seconds * FPS);
  const clips = Math.ceil(frames / newFrames);
  const firstClip = Math.floor(Math.floor(start * FPS) / newFrames);
  const stopFrame = duration > 0 ? Math.min(frames, Math.ceil((start + duration) * FPS)) : frames;
  const lastClip = Math.max(firstClip + 1, Math.ceil(stopFrame / newFrames));
  return { frames, clips, firstClip, lastClip };
}

function clipFrames(node) {
  if (NEW_FRAMES[node.type]) return NEW_FRAMES[node.type];
  const denoiser = downstream(node).find((n) => NEW_FRAMES[n.type]);
  return denoiser ? NEW_FRAMES[denoiser.type] : null;
}

function describe(node) {
  const name = speechFileOf(node);
  if (!name) return "connect a speech (LoadAudio -> AudioEncodeWav2Vec)";
  const seconds = audioSeconds(name);
  if (seconds === null) return `${name}: reading length...`;
  if (typeof seconds === "string") return `${name}: ${seconds}; pick another file in LoadAudio`;
  const newFrames = clipFrames(node);
  const frames = Math.ceil(seconds * FPS);
  if (!newFrames) return `${seconds.toFixed(2)} s -> ${frames} frames`;
  const widget = (n) => node.widgets?.find((w) => w.name === n)?.value ?? 0;
  const p = plan(seconds, newFrames, widget("start_seconds"), widget("duration_seconds"));
  const whole = `${seconds.toFixed(2)} s -> ${p.frames} frames, ${p.clips} clips of ${newFrames}`;
  if (!DENOISE.includes(node.type)) return whole;
  const segment = p.lastClip - p.firstClip;
  return segment === p.clips ? whole : `${whole}\nthis segment: clips ${p.firstClip + 1}-${p.lastClip} (${segment})`;
}

function nodeOutputStore() {
  // Frontends after 1.27 keep latent previews in their nodeOutput store and draw them over the node's outputs until
  // the node runs again; there is no extension API to drop them, so reach the store through the Vue app.
  try {
    return document.querySelector("#vue-app")?.__vue_app__?.config?.globalProperties?.$pinia?._s?.get("nodeOutput");
  } catch {
    return undefined;
  }
}

function showFinishedVideo(node) {
  // The last latent preview would stay over the node's finished video: drop it, so ComfyUI shows the video.
  const locator = String(node.id);
  const store = nodeOutputStore();
  if (store?.revokePreviewsByLocatorId) {
    store.revokePreviewsByLocatorId(locator);
    node.images = undefined; // the frontend re-reads the outputs: the video
    node.imgs = undefined;
    for (const name of ["$$comfy_animation_preview", "$$canvas-image-preview"]) {
      const stale = node.widgets?.find((w) => w.name === name);
      if (stale) node.removeWidget?.(stale);
    }
  } else {
    const previews = app.nodePreviewImages?.[locator];
    if (previews) {
      for (const url of previews) URL.revokeObjectURL?.(url);
      delete app.nodePreviewImages[locator];
    }
  }
  node.previewMediaType = "video";
  node.setDirtyCanvas?.(true, true);
}

if (!window.__halloNodesExtension) {
  window.__halloNodesExtension = true; // once, even if ComfyUI serves this folder under two names
  app.registerExtension({
    name: "hallo.nodes",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!STATUS_NODES.includes(nodeData.name)) return;
      const created = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = created?.apply(this, arguments);
        addStatus(this);
        return result;
      };
    },
    setup() {
      api.addEventListener("executed", ({ detail }) => {
        const node = app.graph.getNodeById(Number(detail?.display_node ?? detail?.node));
        if (!node) return;
        if (VIDEO_NODES.includes(node.type) && detail?.output?.animated) showFinishedVideo(node);
        if (STATUS_NODES.includes(node.type) && detail?.output?.text) results.set(node.id, detail.output.text.join("\n"));
      });
      setInterval(() => {
        for (const node of app.graph?._nodes ?? []) {
          if (!STATUS_NODES.includes(node.type)) continue;
          const result = results.get(node.id);
          setStatus(node, result ? `${describe(node)}\nlast run: ${result}` : describe(node));
        }
      }, 1000);
    },
  });
}
