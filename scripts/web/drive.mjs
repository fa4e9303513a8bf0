// Drives the page of examples/web in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core and the DevTools protocol), for tests/web.rs:
//
//   node scripts/web/drive.mjs ROOT SIZE EPOCHS BATCH [KERNELS]
//
// Serves ROOT (the repository, with examples/web/pkg built) on a loopback port, then
//  1. opens /examples/web/?auto=1&size=SIZE&epochs=EPOCHS&batch=BATCH in Chromium with WebGPU
//     (--enable-unsafe-webgpu: SwiftShader's adapter on a machine without a GPU) and waits for
//     the page to train, measure held-out accuracy and classify held-out digits drawn on its
//     canvas;
//  2. opens the page in Chromium without that flag, where no WebGPU adapter exists, and reads
//     the message it shows.
// Prints one JSON line for each ({"kind":"trained",...}, {"kind":"no_webgpu",...}). Exits 1 when
// Chromium cannot start.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const [root, size, epochs, batch, kernels = ''] = process.argv.slice(2);
const types = {
  '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.gz': 'application/octet-stream', '.css': 'text/css',
};
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  const file = join(root, path.endsWith('/') ? `${path}index.html` : path);
  if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}/examples/web/`;

// Flags that work on a machine with no network but loopback (see the README's browser test).
const flags = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic', '--disable-gpu-sandbox'];

async function run(kind, extra, query, timeoutMs) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: [...flags, ...extra] });
  try {
    const page = await browser.newPage();
    const console = [];
    page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));
    await page.goto(base + query);
    let waited = null;
    await page
      .waitForFunction(() => ['done', 'error', 'no-webgpu'].includes(window.kilnResult?.state),
        null, { timeout: timeoutMs, polling: 500 })
      .catch((e) => (waited = String(e.message ?? e).split('\n')[0]));
    const result = await page.evaluate(() => ({
      ...window.kilnResult,
      shown: document.getElementById('message').textContent,
    }));
    if (waited) result.wait_error = waited;
    console.length = Math.min(console.length, 40);
    process.stdout.write(`${JSON.stringify({ kind, ...result, console })}\n`);
  } finally {
    await browser.close();
  }
}

try {
  await run('trained', ['--enable-unsafe-webgpu'],
    `?auto=1&size=${size}&epochs=${epochs}&batch=${batch}&kernels=${encodeURIComponent(kernels)}`, 540_000);
  await run('no_webgpu', [], '', 60_000);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ kind: 'browser_error', message: String(e.message ?? e) })}\n`);
  process.exitCode = 1;
} finally {
  server.close();
}
