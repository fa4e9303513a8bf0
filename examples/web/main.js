// The page around kiln_web (pkg/, made by build.sh): fetches the MNIST subset, trains LeNet-5 on
// the browser's WebGPU with a live loss plot, reports held-out accuracy, and classifies digits
// drawn on the canvas. `?auto=1` trains and checks at once (the browser test drives it so):
// `?auto=1&size=4096&epochs=1&batch=64`; `&kernels=matmul=gemm_64x64` forces kernel variants. The outcome is in `window.kilnResult` and in
// `document.body.dataset.state` ("no-webgpu", "error" or "done").
import init, { Trainer } from './pkg/kiln_web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const result = (window.kilnResult = { state: 'loading' });
for (const k of ['size', 'epochs', 'batch']) if (params.has(k)) $(k).value = params.get(k);

function finish(state, message, isError) {
  result.state = state;
  if (message !== undefined) result.message = message;
  document.body.dataset.state = state;
  if (message !== undefined) say(message, isError);
}

function say(text, isError = false) {
  $('message').textContent = text;
  $('message').className = isError ? 'error' : '';
}

// The loss plot: every loss read back, on a log scale.
const losses = [];
function plot() {
  const c = $('plot');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  g.strokeStyle = '#ccc';
  g.strokeRect(0.5, 0.5, c.width - 1, c.height - 1);
  if (losses.length < 2) return;
  const last = losses[losses.length - 1][0];
  const lo = Math.log(0.01), hi = Math.log(3);
  const x = (s) => 30 + ((c.width - 40) * s) / Math.max(last, 1);
  const y = (l) => 10 + ((c.height - 30) * (hi - Math.log(Math.max(l, 0.01)))) / (hi - lo);
  g.fillStyle = '#666';
  g.font = '11px sans-serif';
  for (const v of [2, 1, 0.3, 0.1, 0.03]) {
    g.fillText(String(v), 2, y(v) + 4);
    g.fillRect(26, y(v), 4, 1);
  }
  g.fillText(`step ${last}`, c.width - 70, c.height - 4);
  g.strokeStyle = '#c33';
  g.beginPath();
  losses.forEach(([s, l], i) => (i ? g.lineTo(x(s), y(l)) : g.moveTo(x(s), y(l))));
  g.stroke();
}

// Drawing: white strokes on black, as MNIST's digits are light on dark.
const draw = $('draw');
const pen = draw.getContext('2d', { willReadFrequently: true });
function clear() {
  pen.fillStyle = '#000';
  pen.fillRect(0, 0, draw.width, draw.height);
  $('prediction').textContent = '–';
  $('probs').textContent = '';
}
clear();
let drawing = false;
draw.addEventListener('pointerdown', (e) => {
  drawing = true;
  pen.beginPath();
  pen.moveTo(e.offsetX, e.offsetY);
});
draw.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  pen.strokeStyle = '#fff';
  pen.lineWidth = 20;
  pen.lineCap = pen.lineJoin = 'round';
  pen.lineTo(e.offsetX, e.offsetY);
  pen.stroke();
});
for (const end of ['pointerup', 'pointerleave']) draw.addEventListener(end, () => (drawing = false));
$('clear').addEventListener('click', clear);

// The drawing as MNIST prepares its digits: the ink's bounding box scaled into 20 x 20, placed
// in 28 x 28 with its centre of mass at the centre. Intensities 0 (background) to 1 (ink).
function canvasPixels() {
  const { data, width, height } = pen.getImageData(0, 0, draw.width, draw.height);
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      if (data[4 * (y * width + x)] > 32) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
  if (x1 < 0) return null;
  const w = x1 - x0 + 1, h = y1 - y0 + 1, scale = 20 / Math.max(w, h);
  const small = document.createElement('canvas');
  small.width = small.height = 28;
  const g = small.getContext('2d');
  g.fillStyle = '#000';
  g.fillRect(0, 0, 28, 28);
  g.imageSmoothingQuality = 'high';
  g.drawImage(draw, x0, y0, w, h, (28 - w * scale) / 2, (28 - h * scale) / 2, w * scale, h * scale);
  const px = g.getImageData(0, 0, 28, 28).data;
  const v = new Float32Array(784);
  let [m, mx, my] = [0, 0, 0];
  for (let i = 0; i < 784; i++) {
    v[i] = px[4 * i] / 255;
    m += v[i]; mx += v[i] * (i % 28); my += v[i] * Math.floor(i / 28);
  }
  const dx = Math.round(13.5 - mx / m), dy = Math.round(13.5 - my / m);
  const out = new Float32Array(784);
  for (let y = 0; y < 28; y++)
    for (let x = 0; x < 28; x++) {
      const sx = x - dx, sy = y - dy;
      if (sx >= 0 && sx < 28 && sy >= 0 && sy < 28) out[y * 28 + x] = v[sy * 28 + sx];
    }
  return out;
}

// A held-out image, drawn large on the canvas.
function show(pixels) {
  clear();
  const cell = draw.width / 28;
  for (let i = 0; i < 784; i++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, pixels[i])));
    pen.fillStyle = `rgb(${v},${v},${v})`;
    pen.fillRect((i % 28) * cell, Math.floor(i / 28) * cell, cell, cell);
  }
}

async function classify(trainer) {
  const px = canvasPixels();
  if (!px) return null;
  const p = await trainer.classify(px);
  let best = 0;
  p.forEach((v, i) => (v > p[best] ? (best = i) : 0));
  $('prediction').textContent = `${best} (${(100 * p[best]).toFixed(1)}%)`;
  $('probs').innerHTML = Array.from(p, (v, i) =>
    `<div>${i} <span class="bar" style="width:${(150 * v).toFixed(0)}px"></span> ${(100 * v).toFixed(1)}%</div>`).join('');
  return best;
}

async function main() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    finish('no-webgpu', 'WebGPU is not available in this browser, and kiln trains through it. ' +
      'Use a browser with WebGPU enabled (Chrome or Edge 113 or later, Safari 26, Firefox 141 ' +
      'on Windows), or start Chromium with --enable-unsafe-webgpu.', true);
    return;
  }
  say('Fetching MNIST and starting WebGPU…');
  await init();
  const fetchBytes = async (name) => {
    const r = await fetch(new URL(`../../data/mnist/${name}`, import.meta.url));
    if (!r.ok) throw new Error(`fetching ${name}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  };
  const [images, labels] = await Promise.all([
    fetchBytes('t10k-images-idx3-ubyte.gz'),
    fetchBytes('t10k-labels-idx1-ubyte.gz'),
  ]);
  let trainer;
  try {
    trainer = await Trainer.create(images, labels, 0, params.get('kernels') ?? '');
  } catch (e) {
    const text = String(e.message ?? e);
    const missing = /no WebGPU adapter|WebGPU/.test(text);
    finish(missing ? 'no-webgpu' : 'error', missing
      ? `WebGPU is not available here: ${text}` : `kiln could not start: ${text}`, true);
    return;
  }
  result.adapter = trainer.adapter();
  $('adapter').textContent = `adapter: ${result.adapter}`;
  say('Ready: press Train.');
  $('train').disabled = false;

  let trained = false;
  async function train() {
    $('train').disabled = $('classify').disabled = $('example').disabled = true;
    losses.length = 0;
    const [size, epochs, batch] = ['size', 'epochs', 'batch'].map((k) => +$(k).value);
    say(`Training on ${size} images, ${epochs} epoch(s), batch ${batch}…`);
    const t = JSON.parse(await trainer.train(size, epochs, batch, 0.05, 5, (step, loss) => {
      losses.push([step, loss]);
      plot();
      $('speed').textContent = `step ${step}, loss ${loss.toFixed(4)}`;
    }));
    Object.assign(result, t, { losses: losses.length, last_loss: losses.at(-1)?.[1] });
    $('speed').textContent = `${t.steps} steps in ${t.seconds.toFixed(1)} s (${t.steps_per_second.toFixed(1)} steps/s)`;
    say('Measuring held-out accuracy…');
    result.accuracy = await trainer.evaluate();
    $('accuracy').textContent = `${(100 * result.accuracy).toFixed(2)}%`;
    say('Trained: draw a digit and press Classify.');
    trained = true;
    $('train').disabled = $('classify').disabled = $('example').disabled = false;
  }
  $('train').addEventListener('click', () => train().catch(fail));
  $('classify').addEventListener('click', () => classify(trainer).catch(fail));
  let next = 0;
  $('example').addEventListener('click', () => {
    show(trainer.held_out_image(next));
    next = (next + 1) % 2000;
  });

  if (params.get('auto') === '1') {
    await train();
    // The canvas path end to end: held-out digits drawn on the canvas, read back from it as a
    // drawing is, and classified.
    let correct = 0;
    const n = 20;
    for (let i = 0; i < n; i++) {
      show(trainer.held_out_image(i));
      if ((await classify(trainer)) === trainer.held_out_label(i)) correct++;
    }
    Object.assign(result, { canvas_correct: correct, canvas_total: n });
    finish('done');
  } else if (trained === false) {
    finish('ready');
  }
}

function fail(e) {
  console.error(e);
  finish('error', `kiln failed: ${e.message ?? e}`, true);
}

main().catch(fail);
