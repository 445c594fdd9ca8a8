/* Pantau agency console: sign in with an agency token (kept in this tab's
 * sessionStorage only), then an alerts inbox (filter, acknowledge,
 * assign, note, resolve), a live sensor table and map, gateway health, and
 * a sensor's history with a range picker and CSV export — everything
 * limited to what the token's scopes allow, as the API answers it. */
'use strict';

(function () {
  const P = window.Pantau;
  const { t, el } = P;
  const KEY = 'pantau.console.token';

  let token = null;
  let sensors = new Map(); // id → SensorView + latest/status
  let alerts = new Map(); // id → alert
  let map = null;
  const pins = new Map();
  const rows = new Map();
  let live = null; // AbortController of the live streams
  let view = 'alerts';
  let detail = null; // {id, range, field}
  let lastHistory = null;
  let gwTimer = null;
  const dirty = new Set();

  // ---- API ----------------------------------------------------------

  async function api(path, opts) {
    const o = Object.assign({ headers: {} }, opts || {});
    o.headers = Object.assign({ Accept: 'application/json', Authorization: 'Bearer ' + token }, o.headers);
    let r;
    try {
      r = await fetch(path, o);
    } catch (_) {
      return { ok: false, status: 0, body: null };
    }
    let body = null;
    try { body = await r.json(); } catch (_) { /* empty */ }
    if (r.status === 401) signOut(t('bad_token'));
    return { ok: r.ok, status: r.status, body };
  }

  function errorText(res) {
    if (res.status === 0) return t('no_server');
    if (res.status === 403) return t('act_forbidden');
    return t('act_failed', { msg: (res.body && (res.body.message || res.body.error)) || res.status });
  }

  // ---- sign in ------------------------------------------------------

  async function signIn(candidate) {
    const err = document.getElementById('signin-error');
    err.hidden = true;
    token = candidate;
    let r;
    try {
      r = await fetch('/api/v1/sensors', { headers: { Authorization: 'Bearer ' + candidate, Accept: 'application/json' } });
    } catch (_) {
      token = null;
      err.textContent = t('no_server'); err.hidden = false;
      return;
    }
    if (!r.ok) {
      token = null;
      sessionStorage.removeItem(KEY);
      err.textContent = r.status === 401 ? t('bad_token') : t('act_failed', { msg: r.status });
      err.hidden = false;
      document.getElementById('token').focus();
      return;
    }
    const list = await r.json();
    sessionStorage.setItem(KEY, candidate);
    document.getElementById('token').value = '';
    sensors = new Map(list.map((s) => [s.id, s]));
    document.getElementById('signin').hidden = true;
    document.getElementById('app').hidden = false;
    document.getElementById('sign-out').hidden = false;
    document.getElementById('conn').hidden = false;
    whoami();
    kindsFilter();
    await Promise.all([loadLatest(), loadAlerts()]);
    startLive();
    showView(view);
  }

  function signOut(message) {
    if (live) live.abort();
    live = null;
    token = null;
    sessionStorage.removeItem(KEY);
    clearInterval(gwTimer);
    document.getElementById('app').hidden = true;
    document.getElementById('sign-out').hidden = true;
    document.getElementById('conn').hidden = true;
    document.getElementById('signin').hidden = false;
    document.getElementById('whoami').textContent = '';
    const err = document.getElementById('signin-error');
    if (message) { err.textContent = message; err.hidden = false; } else err.hidden = true;
    for (const m of pins.values()) m.remove();
    pins.clear(); rows.clear(); alerts.clear();
    document.querySelector('#sensors tbody').replaceChildren();
    document.getElementById('alerts').replaceChildren();
  }

  function kinds() {
    return [...new Set([...sensors.values()].map((s) => s.kind))].sort();
  }

  function whoami() {
    const k = kinds();
    document.getElementById('whoami').textContent = t('signed_in', { kinds: k.length ? k.map((x) => t('kind_' + x)).join(', ') : '–' });
  }

  function kindsFilter() {
    const sel = document.getElementById('f-kind');
    const keep = sel.value;
    sel.replaceChildren(el('option', { value: '', 'data-i18n': 'kind_all', text: t('kind_all') }),
      ...kinds().map((k) => el('option', { value: k, text: t('kind_' + k) })));
    sel.value = keep;
  }

  // ---- sensors ------------------------------------------------------

  async function loadLatest() {
    const r = await api('/api/v1/latest');
    if (!r.ok || !Array.isArray(r.body)) return;
    for (const l of r.body) {
      const s = sensors.get(l.sensor);
      if (!s) continue;
      s.latest = l.ts ? { ts: l.ts, values: l.values } : null;
      s.status = l.status;
      dirty.add(s.id);
    }
    schedule();
  }

  const schedule = P.frame(paint);

  function paint() {
    const now = Date.now();
    const tbody = document.querySelector('#sensors tbody');
    let added = false;
    for (const id of dirty) {
      const s = sensors.get(id);
      if (!s) continue;
      const lk = P.look(s, now);
      let tr = rows.get(id);
      if (!tr) {
        tr = el('tr', { 'data-site': id },
          el('th', { scope: 'row' }, el('button', { type: 'button', class: 'linkish', onclick: () => openDetail(id) }),
            el('span', { class: 'meta' })),
          el('td', {}, el('span', { class: 'chip' }), ' ', el('span', { class: 'label' })),
          el('td', { class: 'value' }),
          el('td', { class: 'age' }));
        rows.set(id, tr);
        added = true;
      }
      tr.className = 'tone-' + lk.tone + (lk.stale ? ' stale' : '');
      tr.querySelector('.linkish').textContent = s.name;
      tr.querySelector('.meta').textContent = t('kind_' + s.kind) + ' · ' + s.district + ' · ' + s.id;
      const chip = tr.querySelector('.chip');
      chip.className = 'chip tone-' + lk.tone + (lk.stale ? ' stale' : '');
      chip.textContent = lk.glyph;
      chip.setAttribute('aria-hidden', 'true');
      tr.querySelector('.label').textContent = lk.label;
      tr.querySelector('.value').textContent = P.summary(s) || valuesLine(s);
      tr.querySelector('.age').textContent = s.latest
        ? (lk.stale ? t('stale') + ' · ' : '') + P.ageText(Math.max(0, now - Date.parse(s.latest.ts))) : t('no_data');
      if (map) {
        const m = pins.get(id);
        if (!m) pins.set(id, P.pin(s, lk, openDetail).addTo(map));
        else P.paintPin(m, s, lk);
      }
    }
    dirty.clear();
    if (added) {
      const order = [...sensors.values()].sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
      for (const s of order) { const tr = rows.get(s.id); if (tr) tbody.append(tr); }
    }
    document.getElementById('sensors-empty').hidden = sensors.size > 0;
  }

  function valuesLine(s) {
    const v = (s.latest && s.latest.values) || {};
    const units = new Map((s.fields || []).map((f) => [f.name, f.unit]));
    return Object.keys(v).slice(0, 3).map((k) => t('field_' + k) + ' ' + P.fmt(v[k], units.get(k))).join(' · ');
  }

  // ---- live ---------------------------------------------------------

  const setConn = P.setConn;

  function startLive() {
    if (live) live.abort();
    live = new AbortController();
    const signal = live.signal;
    const loop = async (url, onEvent, onOpen) => {
      let wait = 1000;
      while (!signal.aborted && token) {
        try {
          setConn('connecting');
          onOpen();
          await P.readSse(url, token, (type, data) => { wait = 1000; onEvent(type, data); }, signal, () => setConn('live'));
        } catch (e) {
          if (signal.aborted) return;
          if (e && e.status === 401) { signOut(t('bad_token')); return; }
        }
        if (signal.aborted) return;
        setConn('reconnecting');
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 15000);
      }
    };
    loop('/api/v1/live', (type, data) => {
      if (type === 'lagged') { loadLatest(); return; }
      if (type !== 'reading') return;
      let r; try { r = JSON.parse(data); } catch (_) { return; }
      const s = sensors.get(r.sensor);
      if (!s) return;
      if (s.latest && Date.parse(s.latest.ts) > Date.parse(r.ts)) return;
      s.latest = { ts: r.ts, values: r.values };
      s.status = r.status;
      dirty.add(s.id);
      schedule();
    }, () => {});
    loop('/api/v1/alerts/live', (type, data) => {
      if (type === 'lagged') { loadAlerts(); return; }
      if (type !== 'alert') return;
      let r; try { r = JSON.parse(data); } catch (_) { return; }
      if (r.alert) { alerts.set(r.alert.id, r.alert); renderAlerts(); }
    }, () => {});
  }

  // ---- alerts -------------------------------------------------------

  async function loadAlerts() {
    const state = document.getElementById('f-state').value;
    const kind = document.getElementById('f-kind').value;
    const q = new URLSearchParams({ state, limit: '500' });
    if (kind) q.set('kind', kind);
    const r = await api('/api/v1/alerts?' + q);
    const err = document.getElementById('alerts-error');
    if (!r.ok) { err.textContent = errorText(r); err.hidden = false; return; }
    err.hidden = true;
    alerts = new Map(r.body.alerts.map((a) => [a.id, a]));
    renderAlerts();
  }

  function shown(a) {
    const states = document.getElementById('f-state').value;
    if (states !== 'all' && !states.split(',').includes(a.state)) return false;
    const kind = document.getElementById('f-kind').value;
    if (kind && a.kind !== kind) return false;
    const q = document.getElementById('f-search').value.trim().toLowerCase();
    if (q) {
      const s = sensors.get(a.sensor);
      const hay = (a.sensor + ' ' + (s ? s.name : '') + ' ' + a.district + ' ' + a.rule_name).toLowerCase();
      if (!hay.includes(q)) return false;
    }
    return true;
  }

  function tone(a) {
    if (a.state === 'resolved') return 'grey';
    if (a.rule === 'siaga') return { 1: 'yellow', 2: 'orange', 3: 'red' }[a.level] || 'orange';
    return a.level >= 3 ? 'red' : a.level === 2 ? 'orange' : 'yellow';
  }

  function renderAlerts() {
    const ul = document.getElementById('alerts');
    const list = [...alerts.values()].filter(shown).sort((a, b) =>
      (a.state === 'resolved') - (b.state === 'resolved') || (b.level - a.level) || (Date.parse(b.changed) - Date.parse(a.changed)));
    const open = [...alerts.values()].filter((a) => a.state === 'open').length;
    document.getElementById('alert-count').textContent = open ? String(open) : '';
    const keepOpen = ul.querySelector('form.act-form');
    const keepId = keepOpen && keepOpen.dataset.alert;
    ul.replaceChildren(...list.map((a) => alertItem(a, keepId === String(a.id) ? keepOpen : null)));
    document.getElementById('alerts-empty').hidden = list.length > 0;
  }

  function alertItem(a, form) {
    const s = sensors.get(a.sensor);
    const meta = [t('alert_since', { time: P.clock(a.since) })];
    if (a.ack_by) meta.push(t('alert_ack_by', { who: a.ack_by }));
    if (a.assignee) meta.push(t('alert_assignee', { who: a.assignee }));
    if (a.late) meta.push(t('alert_late'));
    if (a.muted) meta.push(t('alert_muted'));
    const actions = a.state === 'resolved' ? [] : [
      a.state === 'open' ? el('button', { type: 'button', class: 'btn btn-primary', 'data-act': 'ack', onclick: () => act(a, 'ack') , text: t('act_ack') }) : null,
      el('button', { type: 'button', class: 'btn', 'data-act': 'assign', onclick: (e) => askFor(e, a, 'assign'), text: t('act_assign') }),
      el('button', { type: 'button', class: 'btn', 'data-act': 'notes', onclick: (e) => askFor(e, a, 'notes'), text: t('act_note') }),
      el('button', { type: 'button', class: 'btn btn-danger', 'data-act': 'resolve', onclick: (e) => askFor(e, a, 'resolve'), text: t('act_resolve') }),
    ];
    return el('li', { class: 'alert tone-' + tone(a), 'data-alert': a.id, 'data-state': a.state, 'data-sensor': a.sensor },
      el('div', { class: 'alert-head' },
        el('span', { class: 'chip tone-' + tone(a), 'aria-hidden': 'true', text: a.state === 'resolved' ? '✓' : String(a.rule === 'siaga' ? 4 - a.level : a.level) }),
        el('div', {},
          el('p', { class: 'alert-title' }, el('strong', { text: a.level_label || a.rule_name }), ' — ' + (s ? s.name : a.sensor)),
          el('p', { class: 'muted small', text: a.rule_name + ' · ' + t('kind_' + a.kind) + ' · ' + a.district + ' · ' + a.sensor }),
          el('p', { class: 'small', text: meta.join(' · ') })),
        el('span', { class: 'state state-' + a.state, text: t('state_' + a.state) })),
      el('div', { class: 'alert-actions' }, ...actions),
      form,
      el('p', { class: 'act-msg small', role: 'status' }));
  }

  function askFor(e, a, which) {
    const li = e.target.closest('li');
    const old = li.querySelector('form.act-form');
    if (old) old.remove();
    const id = 'act-' + a.id + '-' + which;
    const input = el('input', { id, type: 'text', maxlength: which === 'assign' ? '200' : '2000', value: which === 'assign' ? (a.assignee || '') : '' });
    const form = el('form', { class: 'act-form', 'data-alert': a.id },
      el('label', { for: id, text: which === 'assign' ? t('act_assignee') : t('act_note_text') }),
      input,
      el('button', { type: 'submit', class: 'btn btn-primary', text: t('act_submit') }),
      el('button', { type: 'button', class: 'btn', text: t('act_cancel'), onclick: () => form.remove() }));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      act(a, which, which === 'assign' ? { assignee: v } : (v ? { note: v } : {}));
    });
    li.insertBefore(form, li.querySelector('.act-msg'));
    input.focus();
  }

  async function act(a, which, body) {
    const r = await api('/api/v1/alerts/' + a.id + '/' + which, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body || {}),
    });
    const li = document.querySelector('#alerts li[data-alert="' + a.id + '"]');
    const msg = li && li.querySelector('.act-msg');
    if (!r.ok) { if (msg) { msg.textContent = errorText(r); msg.classList.add('error'); } return; }
    const updated = r.body && (r.body.alert || (r.body.id ? r.body : null));
    if (updated) alerts.set(updated.id, updated);
    else await loadAlerts();
    renderAlerts();
    const again = document.querySelector('#alerts li[data-alert="' + a.id + '"] .act-msg');
    if (again) again.textContent = t('act_done');
  }

  // ---- gateways -----------------------------------------------------

  async function loadGateways() {
    const r = await api('/api/v1/gateways');
    if (!r.ok || !Array.isArray(r.body)) return;
    const now = Date.now();
    const battery = new Map();
    for (const s of sensors.values()) {
      if (s.kind === 'gateway_health' && s.latest && typeof s.latest.values.battery_v === 'number') battery.set(s.gateway, s.latest.values.battery_v);
    }
    const tbody = document.querySelector('#gateways tbody');
    tbody.replaceChildren(...r.body.map((g) => {
      const spool = g.spool || {};
      const seen = g.last_seen ? Date.parse(g.last_seen) : null;
      const off = typeof g.clock_offset_ms === 'number' ? g.clock_offset_ms : null;
      return el('tr', { 'data-gateway': g.id, class: g.connected ? '' : 'gw-off' },
        el('th', { scope: 'row', text: g.id }),
        el('td', {}, el('span', { class: 'state ' + (g.connected ? 'state-online' : 'state-offline'), text: g.connected ? t('online') : t('offline_gw') }),
          g.connected || !g.last_disconnect_reason ? null : el('span', { class: 'small muted', text: ' ' + g.last_disconnect_reason })),
        el('td', { text: seen ? P.ageText(Math.max(0, now - seen)) : '–' }),
        el('td', { text: typeof spool.readings === 'number' ? P.num(spool.readings, 0) : '–' }),
        el('td', { class: spool.dropped > 0 ? 'warn-text' : '', text: typeof spool.dropped === 'number' ? P.num(spool.dropped, 0) : '–' }),
        el('td', { text: battery.has(g.id) ? P.num(battery.get(g.id), 2) + ' V' : '–' }),
        el('td', { class: off !== null && Math.abs(off) > 2000 ? 'warn-text' : '', text: off === null ? '–' : P.num(off, 0) + ' ms' }),
        el('td', { text: String(g.sensors) }));
    }));
  }

  // ---- detail: history and CSV ---------------------------------------

  const RANGES = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
  const EVERY = { '1h': null, '24h': null, '7d': '10m', '30d': '1h' };

  function openDetail(id) {
    const s = sensors.get(id);
    if (!s) return;
    if (view !== 'sensors') showView('sensors');
    detail = { id, range: (detail && detail.range) || '24h', field: null };
    const sel = document.getElementById('d-field');
    const numeric = (s.fields || []).filter((f) => f.name !== 'window_s' && f.name !== 'occupied');
    sel.replaceChildren(el('option', { value: '', text: t('state_all') }), ...numeric.map((f) => el('option', { value: f.name, text: t('field_' + f.name) + (f.unit ? ' (' + f.unit + ')' : '') })));
    document.getElementById('detail-title').textContent = t('history_of', { name: s.name });
    document.getElementById('detail').hidden = false;
    document.getElementById('detail').scrollIntoView({ block: 'nearest' });
    loadHistory();
  }

  async function loadHistory() {
    if (!detail) return;
    const s = sensors.get(detail.id);
    for (const b of document.querySelectorAll('#detail [data-range]')) b.setAttribute('aria-pressed', String(b.dataset.range === detail.range));
    const to = new Date();
    const from = new Date(to - RANGES[detail.range]);
    const q = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
    if (EVERY[detail.range]) q.set('every', EVERY[detail.range]);
    const field = document.getElementById('d-field').value;
    if (field) q.set('field', field);
    const want = JSON.stringify(detail) + field;
    const r = await api('/api/v1/sensors/' + encodeURIComponent(s.id) + '/readings?' + q);
    if (!detail || JSON.stringify(detail) + document.getElementById('d-field').value !== want) return;
    const note = document.getElementById('d-note');
    const node = document.getElementById('d-chart');
    if (!r.ok) { node.replaceChildren(); note.textContent = errorText(r); note.hidden = false; lastHistory = null; return; }
    lastHistory = r.body;
    const units = new Map((s.fields || []).map((f) => [f.name, f.unit]));
    const series = (r.body.series || []).filter((x) => x.field !== 'window_s').map((x) => ({
      field: x.field, label: t('field_' + x.field), unit: units.get(x.field) || '',
      points: (x.points || []).map((p) => Array.isArray(p) ? p : [p.ts, p.value]),
    }));
    const lines = s.thresholds && (!field || field === 'water_level_cm' || field === 'inundation_depth_cm') ? [
      { label: t('siaga3'), value: s.thresholds.siaga3, tone: 'yellow' },
      { label: t('siaga2'), value: s.thresholds.siaga2, tone: 'orange' },
      { label: t('siaga1'), value: s.thresholds.siaga1, tone: 'red' },
    ] : [];
    const u = P.chart(node, series.slice(0, 4), lines, [from.getTime(), to.getTime()]);
    note.hidden = !!u;
    if (!u) note.textContent = t('chart_none');
  }

  function exportCsv() {
    if (!lastHistory || !detail) return;
    const series = lastHistory.series || [];
    const byTs = new Map();
    series.forEach((x, i) => {
      for (const p of x.points || []) {
        const [ts, v] = Array.isArray(p) ? p : [p.ts, p.value];
        if (!byTs.has(ts)) byTs.set(ts, new Array(series.length).fill(''));
        byTs.get(ts)[i] = v;
      }
    });
    const lines = ['time,' + series.map((x) => x.field).join(',')];
    for (const ts of [...byTs.keys()].sort((a, b) => a - b)) lines.push(new Date(ts).toISOString() + ',' + byTs.get(ts).join(','));
    const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/csv' });
    const a = el('a', { href: URL.createObjectURL(blob), download: detail.id + '_' + detail.range + '.csv', hidden: true, text: t('export_csv') });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ---- views --------------------------------------------------------

  function showView(v) {
    view = v;
    for (const name of ['alerts', 'sensors', 'gateways']) {
      document.getElementById('tab-' + name).setAttribute('aria-selected', String(name === v));
      document.getElementById('view-' + name).hidden = name !== v;
    }
    clearInterval(gwTimer);
    if (v === 'sensors') {
      if (!map) {
        map = P.baseMap(document.getElementById('cmap'));
        const list = [...sensors.values()];
        if (list.length) {
          P.districtLabels(map, list);
          map.fitBounds(L.latLngBounds(list.map((s) => [s.lat, s.lon])).pad(0.05), { maxZoom: 15 });
        }
        for (const id of sensors.keys()) dirty.add(id);
        schedule();
      } else {
        setTimeout(() => map.invalidateSize(), 0);
      }
    }
    if (v === 'gateways') {
      loadGateways();
      gwTimer = setInterval(loadGateways, 10e3);
    }
  }

  function relabel() {
    whoami();
    kindsFilter();
    for (const id of sensors.keys()) dirty.add(id);
    schedule();
    renderAlerts();
    if (view === 'gateways') loadGateways();
    const c = document.getElementById('conn');
    if (c.dataset.i18n) c.textContent = t(c.dataset.i18n);
    if (detail) openDetail(detail.id);
  }

  function start() {
    P.langSwitch(relabel);
    document.getElementById('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const v = document.getElementById('token').value.trim();
      if (!v) {
        const err = document.getElementById('signin-error');
        err.textContent = t('bad_token'); err.hidden = false;
        return;
      }
      signIn(v);
    });
    document.getElementById('sign-out').addEventListener('click', () => signOut(null));
    for (const name of ['alerts', 'sensors', 'gateways']) document.getElementById('tab-' + name).addEventListener('click', () => showView(name));
    for (const id of ['f-state', 'f-kind']) document.getElementById(id).addEventListener('change', loadAlerts);
    document.getElementById('f-search').addEventListener('input', renderAlerts);
    document.getElementById('alert-filters').addEventListener('submit', (e) => e.preventDefault());
    for (const b of document.querySelectorAll('#detail [data-range]')) {
      b.addEventListener('click', () => { detail.range = b.dataset.range; loadHistory(); });
    }
    document.getElementById('d-field').addEventListener('change', loadHistory);
    document.getElementById('d-csv').addEventListener('click', exportCsv);
    document.getElementById('detail-close').addEventListener('click', () => { detail = null; document.getElementById('detail').hidden = true; });
    // Ages move on without new readings.
    setInterval(() => { if (token) { for (const id of sensors.keys()) dirty.add(id); schedule(); } }, 15e3);
    const saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved);
  }

  document.addEventListener('DOMContentLoaded', start);
})();
