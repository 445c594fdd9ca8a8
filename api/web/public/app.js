/* Pantau public app: a map and a list of every public site, kept live by
 * the public SSE feed, a banner of active warnings, a page per site with
 * its thresholds and history, and the last conditions when offline (the
 * service worker keeps them). */
'use strict';

(function () {
  const P = window.Pantau;
  const { t, el } = P;

  /** id → {id, name, kind, district, lat, lon, latest, status, thresholds, fields} */
  const sites = new Map();
  /** Sites changed since the last paint. */
  const dirty = new Set();
  let warnings = [];
  let map = null;
  const pins = new Map();
  const items = new Map();
  let order = [];
  let offlineSince = null;
  let current = null; // the site page open, if any
  let range = '24h';
  let chartFor = null;
  let needSort = false;
  let userMoved = false;

  // ---- data ---------------------------------------------------------

  async function getJson(url) {
    // Revalidated (the answers carry an ETag): offline, the fetch fails and
    // the service worker answers with what it kept, marked.
    const r = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-cache' });
    if (!r.ok) throw new Error(url + ': ' + r.status);
    const saved = r.headers.get('X-Pantau-Saved');
    if (r.headers.get('X-Pantau-Offline')) offlineSince = saved || offlineSince || '';
    return r.json();
  }

  async function loadSensors() {
    const list = await getJson('/api/v1/public/sensors');
    for (const s of list) {
      const have = sites.get(s.id) || {};
      sites.set(s.id, Object.assign(have, s));
    }
  }

  async function loadConditions() {
    const list = await getJson('/api/v1/public/conditions');
    const seen = new Set();
    for (const c of list) {
      seen.add(c.id);
      const s = sites.get(c.id) || {};
      // A live event may be newer than the cached answer.
      const newer = s.latest && c.latest && Date.parse(s.latest.ts) > Date.parse(c.latest.ts);
      Object.assign(s, { id: c.id, name: c.name, kind: c.kind, district: c.district, lat: c.lat, lon: c.lon });
      if (!newer) { s.latest = c.latest; s.status = c.status; }
      sites.set(c.id, s);
      dirty.add(c.id);
    }
    // A site taken off the public view goes.
    for (const id of [...sites.keys()]) if (!seen.has(id)) { sites.delete(id); dirty.add(id); }
    schedule();
  }

  async function loadWarnings() {
    try {
      const w = await getJson('/api/v1/public/warnings');
      warnings = w.warnings || [];
    } catch (_) {
      warnings = [];
    }
    renderBanner();
  }

  // ---- last conditions, for offline ---------------------------------

  const SNAP = 'pantau.public.snapshot';
  let saveTimer = null;
  let lastSave = 0;

  /** Keeps the conditions the page shows (at most once a second). */
  function saveSoon() {
    if (offlineSince !== null || saveTimer) return;
    const wait = Math.max(0, 1000 - (Date.now() - lastSave));
    saveTimer = setTimeout(() => {
      saveTimer = null;
      lastSave = Date.now();
      try {
        localStorage.setItem(SNAP, JSON.stringify({ saved: new Date().toISOString(), sites: [...sites.values()] }));
      } catch (_) { /* storage full or off: the service worker's copy remains */ }
    }, wait);
  }

  /** The kept conditions, where newer than what the page has. */
  function restore() {
    let snap;
    try { snap = JSON.parse(localStorage.getItem(SNAP) || 'null'); } catch (_) { snap = null; }
    if (!snap || !Array.isArray(snap.sites)) return false;
    for (const k of snap.sites) {
      const s = sites.get(k.id);
      if (!s) { sites.set(k.id, k); dirty.add(k.id); continue; }
      if (k.latest && (!s.latest || Date.parse(k.latest.ts) > Date.parse(s.latest.ts))) {
        s.latest = k.latest; s.status = k.status; dirty.add(k.id);
      }
      if (!s.fields && k.fields) s.fields = k.fields;
    }
    offlineSince = snap.saved || offlineSince || '';
    needSort = true;
    schedule();
    return true;
  }

  // ---- live ---------------------------------------------------------

  let source = null;
  function connect() {
    if (source) source.close();
    setConn('connecting');
    source = new EventSource('/api/v1/public/live');
    source.addEventListener('open', () => {
      setConn('live');
      // Catch up on what changed while the feed was down.
      if (offlineSince !== null) { offlineSince = null; renderOffline(); }
      loadConditions().catch(() => {});
    });
    source.addEventListener('reading', (e) => {
      let r;
      try { r = JSON.parse(e.data); } catch (_) { return; }
      const s = sites.get(r.sensor);
      if (!s) { loadConditions().catch(() => {}); return; }
      if (s.latest && Date.parse(s.latest.ts) > Date.parse(r.ts)) return;
      const before = s.status && s.status.siaga_level;
      s.latest = { ts: r.ts, values: r.values };
      s.status = r.status;
      s.seenAt = performance.now();
      dirty.add(s.id);
      if ((r.status && r.status.siaga_level) !== before) warningsSoon();
      schedule();
    });
    source.addEventListener('lagged', () => { loadConditions().catch(() => {}); });
    source.addEventListener('error', () => {
      setConn(offlineSince !== null || navigator.onLine === false ? 'offline' : 'reconnecting');
    });
  }

  let warnTimer = null;
  function warningsSoon() {
    renderBanner();
    clearTimeout(warnTimer);
    warnTimer = setTimeout(loadWarnings, 1500);
  }

  const setConn = P.setConn;

  // ---- painting -----------------------------------------------------

  const schedule = P.frame(paint);

  function paint() {
    const now = Date.now();
    let reorder = false;
    for (const id of dirty) {
      const s = sites.get(id);
      if (!s) {
        const m = pins.get(id); if (m) { m.remove(); pins.delete(id); }
        const li = items.get(id); if (li) { li.remove(); items.delete(id); }
        reorder = true;
        continue;
      }
      const lk = P.look(s, now);
      // Publish-to-paint lag, for `pantau-bench web` (off unless it asks).
      if (window.__pantauLag && s.seenAt && s.latest && s.lagTs !== s.latest.ts) {
        s.lagTs = s.latest.ts;
        window.__pantauLag.push(now - Date.parse(s.latest.ts));
      }
      if (s.sev !== lk.sev) reorder = true;
      s.sev = lk.sev;
      paintItem(s, lk, now);
      if (map) {
        let m = pins.get(id);
        if (!m) { m = P.pin(s, lk, openSite).addTo(map); pins.set(id, m); }
        else P.paintPin(m, s, lk);
      }
      if (current === id) renderSite();
    }
    dirty.clear();
    if (reorder || needSort) { needSort = false; sortList(); }
    renderBanner();
    saveSoon();
    document.getElementById('count').textContent = t('sites_count', { n: sites.size });
    document.body.dataset.painted = String(sites.size);
    if (map && sites.size && pins.size === sites.size && !performance.getEntriesByName('pantau-map-ready').length) {
      performance.mark('pantau-map-ready');
    }
  }

  function paintItem(s, lk, now) {
    let li = items.get(s.id);
    if (!li) {
      li = el('li', { class: 'site', 'data-site': s.id });
      const b = el('button', { type: 'button', class: 'site-open', onclick: () => openSite(s.id) });
      b.append(
        el('span', { class: 'chip' }),
        el('span', { class: 'site-main' },
          el('span', { class: 'site-name' }),
          el('span', { class: 'site-meta' })),
        el('span', { class: 'site-side' },
          el('span', { class: 'site-status' }),
          el('span', { class: 'site-value' }),
          el('span', { class: 'site-age' })),
      );
      li.append(b);
      items.set(s.id, li);
      document.getElementById('list').append(li);
      needSort = true;
    }
    li.className = 'site tone-' + lk.tone + ' ' + lk.cls + (lk.stale ? ' stale' : '') + (lk.nodata ? ' nodata' : '');
    const chip = li.querySelector('.chip');
    chip.className = 'chip tone-' + lk.tone + (lk.stale ? ' stale' : '');
    chip.textContent = lk.glyph;
    chip.setAttribute('aria-hidden', 'true');
    li.querySelector('.site-name').textContent = s.name;
    li.querySelector('.site-meta').textContent = t('kind_' + s.kind) + ' · ' + s.district;
    li.querySelector('.site-status').textContent = lk.label;
    li.querySelector('.site-value').textContent = P.summary(s);
    paintAge(s, li, now);
  }

  function paintAge(s, li, now) {
    const age = li.querySelector('.site-age');
    if (!s.latest) { age.textContent = ''; return; }
    const ms = now - Date.parse(s.latest.ts);
    const stale = ms > P.STALE_MS;
    age.textContent = (stale ? t('stale') + ' · ' : '') + t('updated', { age: P.ageText(Math.max(0, ms)) });
    age.dateTime = s.latest.ts;
  }

  function sortList() {
    const list = [...sites.values()].sort((a, b) => (b.sev - a.sev) || a.name.localeCompare(b.name));
    const ids = list.map((s) => s.id);
    if (ids.join() === order.join()) return;
    order = ids;
    const ul = document.getElementById('list');
    for (const id of ids) { const li = items.get(id); if (li) ul.append(li); }
  }

  /** Official warnings, and flood sites reading Siaga 2 or 1 now that no
   * warning names yet (the alert engine may hold a condition for a while
   * before it opens one). */
  function renderBanner() {
    const banner = document.getElementById('banner');
    const ul = document.getElementById('banner-list');
    const rows = [];
    const named = new Set();
    for (const w of warnings) {
      named.add(w.sensor);
      const s = sites.get(w.sensor);
      const lk = s ? P.look(s, Date.now()) : null;
      rows.push({
        sensor: w.sensor,
        tone: lk && lk.sev >= 0 ? lk.tone : 'orange',
        text: (lk && lk.sev > 0 ? lk.label : w.level_label) + ' — ' + w.name + ', ' + w.district,
        when: t('warning_since', { time: P.clock(w.since) }),
        sev: lk ? lk.sev : 1,
      });
    }
    for (const s of sites.values()) {
      if (named.has(s.id) || s.kind !== 'flood_gauge' || !s.status) continue;
      const lk = P.look(s, Date.now());
      if (lk.stale || lk.sev < 2) continue;
      rows.push({ sensor: s.id, tone: lk.tone, text: lk.label + ' — ' + s.name + ', ' + s.district, when: t('reading_now'), sev: lk.sev });
    }
    rows.sort((a, b) => b.sev - a.sev);
    const key = JSON.stringify(rows);
    if (ul.dataset.key === key) return;
    ul.dataset.key = key;
    ul.replaceChildren(...rows.map((r) => el('li', { class: 'warn tone-' + r.tone, 'data-site': r.sensor },
      el('button', { type: 'button', class: 'linkish', onclick: () => openSite(r.sensor), text: r.text }),
      el('span', { class: 'when', text: ' · ' + r.when }))));
    banner.hidden = rows.length === 0;
  }

  function renderOffline() {
    const note = document.getElementById('offline');
    document.body.classList.toggle('is-offline', offlineSince !== null);
    if (offlineSince === null) { note.hidden = true; return; }
    note.hidden = false;
    note.textContent = offlineSince ? t('offline_note', { time: P.clock(offlineSince) }) : t('offline_never');
    setConn('offline');
  }

  // ---- site page ----------------------------------------------------

  function openSite(id) {
    if (location.hash !== '#/site/' + id) location.hash = '#/site/' + id;
    else route();
  }

  function route() {
    const m = /^#\/site\/(.+)$/.exec(location.hash);
    const id = m && decodeURIComponent(m[1]);
    current = id && sites.has(id) ? id : null;
    document.getElementById('home').hidden = current !== null;
    document.getElementById('site').hidden = current === null;
    if (current) {
      renderSite();
      loadChart();
      document.getElementById('back').focus();
      window.scrollTo(0, 0);
    } else {
      chartFor = null;
      if (map) setTimeout(() => (userMoved ? map.invalidateSize() : fit()), 0);
    }
  }

  function renderSite() {
    const s = sites.get(current);
    if (!s) return;
    const now = Date.now();
    const lk = P.look(s, now);
    const body = document.getElementById('site-body');
    const fields = (s.fields || []).filter((f) => s.latest && s.latest.values && f.name in s.latest.values);
    const rows = fields.map((f) => el('tr', {},
      el('th', { scope: 'row', text: t('field_' + f.name) }),
      el('td', { text: P.fmt(s.latest.values[f.name], f.unit) })));
    const limits = [];
    if (s.thresholds) {
      const unit = 'cm';
      limits.push(
        el('li', { class: 'tone-yellow-text', text: t('threshold_row', { label: t('siaga3'), v: P.num(s.thresholds.siaga3, 0), unit }) }),
        el('li', { class: 'tone-orange-text', text: t('threshold_row', { label: t('siaga2'), v: P.num(s.thresholds.siaga2, 0), unit }) }),
        el('li', { class: 'tone-red-text', text: t('threshold_row', { label: t('siaga1'), v: P.num(s.thresholds.siaga1, 0), unit }) }));
    } else if (s.kind === 'traffic_counter') {
      limits.push(el('li', { text: t('los_bands') }));
    }
    const age = s.latest ? now - Date.parse(s.latest.ts) : null;
    body.replaceChildren(
      el('h2', { class: 'site-title', text: s.name }),
      el('p', { class: 'muted', text: t('kind_' + s.kind) + ' · ' + t('district', { d: s.district }) }),
      el('div', { class: 'site-now tone-' + lk.tone + (lk.stale ? ' stale' : ''), 'data-site': s.id },
        el('span', { class: 'chip tone-' + lk.tone, 'aria-hidden': 'true', text: lk.glyph }),
        el('div', {},
          el('p', { class: 'now-label', text: lk.label }),
          el('p', { class: 'now-value', text: P.summary(s) }),
          el('p', { class: 'now-age' + (lk.stale ? ' is-stale' : ''), text: age === null ? t('no_data')
            : (lk.stale ? t('stale') + ' · ' : '') + t('updated', { age: P.ageText(Math.max(0, age)) }) }))),
      rows.length ? el('table', { class: 'values' }, el('caption', { text: t('current') }), el('tbody', {}, ...rows)) : null,
      limits.length ? el('section', { class: 'limits' }, el('h3', { text: t('thresholds') }), el('ul', {}, ...limits)) : null,
    );
  }

  async function loadChart() {
    const s = sites.get(current);
    if (!s) return;
    const key = s.id + '/' + range;
    chartFor = key;
    const node = document.getElementById('chart');
    const note = document.getElementById('chart-note');
    const to = new Date();
    const from = new Date(to - (range === '7d' ? 7 * 86400e3 : 86400e3));
    const every = range === '7d' ? '1h' : '10m';
    const field = primaryField(s);
    let h;
    try {
      h = await getJson('/api/v1/public/sensors/' + encodeURIComponent(s.id) + '/history?from=' + from.toISOString()
        + '&to=' + to.toISOString() + '&every=' + every + (field ? '&field=' + field : ''));
    } catch (_) {
      if (chartFor !== key) return;
      node.replaceChildren();
      note.hidden = false; note.textContent = t('chart_error');
      return;
    }
    if (chartFor !== key) return;
    const units = new Map((s.fields || []).map((f) => [f.name, f.unit]));
    const series = (h.series || []).map((x) => ({
      label: t('field_' + x.field), unit: units.get(x.field) || '',
      points: (x.points || []).map((p) => Array.isArray(p) ? p : [p.ts, p.value]),
    }));
    const lines = s.thresholds && field !== 'rain_mm' ? [
      { label: t('siaga3'), value: s.thresholds.siaga3, tone: 'yellow' },
      { label: t('siaga2'), value: s.thresholds.siaga2, tone: 'orange' },
      { label: t('siaga1'), value: s.thresholds.siaga1, tone: 'red' },
    ] : [];
    const u = P.chart(node, series, lines, [from.getTime(), to.getTime()]);
    note.hidden = !!u;
    if (!u) note.textContent = t('chart_none');
  }

  function primaryField(s) {
    switch (s.kind) {
      case 'flood_gauge': return (s.status && s.status.field) || 'water_level_cm';
      case 'tide_gauge': return 'tide_height_m';
      case 'traffic_counter': return 'count_total';
      case 'metocean': return 'wind_speed_ms';
      case 'berth': return 'vessels_waiting';
      default: return null;
    }
  }

  // ---- start --------------------------------------------------------

  function tabs() {
    const pick = (which) => {
      document.body.dataset.view = which;
      document.getElementById('tab-map').setAttribute('aria-selected', String(which === 'map'));
      document.getElementById('tab-list').setAttribute('aria-selected', String(which === 'list'));
      if (which === 'map' && map) setTimeout(() => (userMoved ? map.invalidateSize() : fit()), 0);
    };
    document.getElementById('tab-map').addEventListener('click', () => pick('map'));
    document.getElementById('tab-list').addEventListener('click', () => pick('list'));
    pick('map');
    for (const b of document.querySelectorAll('[data-range]')) {
      b.addEventListener('click', () => {
        range = b.dataset.range;
        for (const o of document.querySelectorAll('[data-range]')) o.setAttribute('aria-pressed', String(o === b));
        loadChart();
      });
    }
    document.getElementById('back').addEventListener('click', () => { location.hash = ''; });
  }

  function relabel() {
    for (const id of sites.keys()) dirty.add(id);
    document.getElementById('banner-list').dataset.key = '';
    renderOffline();
    if (source && document.getElementById('conn').dataset.i18n) setConn(document.getElementById('conn').dataset.i18n);
    schedule();
    if (current) { renderSite(); loadChart(); }
  }

  let fitting = false;
  function fit() {
    if (!sites.size || !map) return;
    fitting = true;
    map.invalidateSize();
    map.fitBounds(L.latLngBounds([...sites.values()].map((s) => [s.lat, s.lon])).pad(0.05), { maxZoom: 15, animate: false });
    fitting = false;
  }

  async function start() {
    P.langSwitch(relabel);
    tabs();
    map = P.baseMap(document.getElementById('map'));
    if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(() => {});
    try {
      await Promise.all([loadSensors(), loadConditions()]);
    } catch (_) {
      offlineSince = offlineSince || '';
    }
    // Offline (no answer, or the service worker's kept one): the page's own
    // last conditions, which include live readings, where newer.
    if (offlineSince !== null) restore();
    P.districtLabels(map, [...sites.values()]);
    fit();
    // Until the visitor moves the map, it keeps every site in view.
    map.on('dragstart zoomstart', (e) => { if (e.hard !== true && !fitting) userMoved = true; });
    window.addEventListener('resize', () => { if (!userMoved) setTimeout(fit, 50); });
    renderOffline();
    route();
    window.addEventListener('hashchange', route);
    loadWarnings();
    setInterval(loadWarnings, 30e3);
    // Ages move on without new readings.
    setInterval(() => { for (const id of sites.keys()) dirty.add(id); schedule(); }, 15e3);
    connect();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
