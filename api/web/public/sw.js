/* Pantau public app's service worker: keeps the app shell (the page and
 * its fingerprinted assets) and the last public answers, so an installed
 * app opens offline and shows the last conditions, marked as such. The
 * list below is written by the build; a new build is a new worker. */
'use strict';

const SHELL = {{precache}};
// A new build names new assets, so a new cache.
const CACHE = 'pantau-shell-' + [...SHELL.join()].reduce((h, c) => (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0, 7).toString(16);
const DATA = 'pantau-data-v1';

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (e) => {
  e.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE && k !== DATA).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

/** The network's answer, kept with the time it was received; when the
 * network fails, the kept one marked `X-Pantau-Offline`. */
async function networkFirst(req) {
  const cache = await caches.open(DATA);
  const key = new URL(req.url).pathname;
  try {
    const resp = await fetch(req);
    if (resp.ok) {
      const headers = new Headers(resp.headers);
      headers.set('X-Pantau-Saved', new Date().toISOString());
      const body = await resp.clone().arrayBuffer();
      await cache.put(key, new Response(body, { status: 200, headers }));
    }
    return resp;
  } catch (err) {
    const kept = await cache.match(key);
    if (!kept) throw err;
    const headers = new Headers(kept.headers);
    headers.set('X-Pantau-Offline', '1');
    return new Response(await kept.arrayBuffer(), { status: 200, headers });
  }
}

async function shell(req) {
  const url = new URL(req.url);
  if (req.mode === 'navigate' || url.pathname === '/') {
    // The page: fresh when online, the kept one offline.
    try {
      const resp = await fetch(req);
      if (resp.ok && url.pathname === '/') (await caches.open(CACHE)).put('/', resp.clone());
      return resp;
    } catch (err) {
      const kept = await caches.match('/');
      if (kept) return kept;
      throw err;
    }
  }
  const kept = await caches.match(url.pathname);
  return kept || fetch(req);
}

self.addEventListener('fetch', (e) => {
  const req = e.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  const p = url.pathname;
  if (p === '/api/v1/public/conditions' || p === '/api/v1/public/sensors' || p === '/api/v1/public/warnings') {
    e.respondWith(networkFirst(req));
  } else if (p === '/' || p.startsWith('/assets/') || p === '/manifest.webmanifest') {
    e.respondWith(shell(req));
  }
  // Everything else (the live feed, history, the console, the API) goes
  // to the network untouched.
});
