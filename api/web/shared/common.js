/* Pantau web: what the public app and the console share — words in
 * Bahasa Indonesia and English, how a status looks, how old a value is,
 * the map's base layer, a chart, and a Server-Sent Events reader that can
 * send a bearer token (EventSource cannot). */
'use strict';

(function () {
  /** A value older than this is stale (the alert engine's default
   * `sensor_silent_after` is the same 15 minutes). */
  const STALE_MS = 15 * 60 * 1000;

  const WORDS = {
    id: {
      app_title: 'Pantau Dumai',
      app_sub: 'Kondisi kota secara langsung',
      time: 'Waktu',
      console_title: 'Pantau — Konsol OPD',
      lang_label: 'Bahasa',
      skip: 'Langsung ke daftar lokasi',
      tab_map: 'Peta',
      tab_list: 'Daftar',
      list_heading: 'Semua lokasi, paling parah di atas',
      map_label: 'Peta lokasi sensor di Dumai',
      live: 'Langsung',
      connecting: 'Menghubungkan…',
      reconnecting: 'Menyambung ulang…',
      offline: 'Offline',
      offline_note: 'Anda sedang offline. Ini kondisi terakhir yang diterima ({time}); nilainya bisa sudah berubah.',
      offline_never: 'Anda sedang offline dan belum ada kondisi tersimpan.',
      warnings: 'Peringatan aktif',
      warning_since: 'sejak {time}',
      reading_now: 'terbaca sekarang',
      no_data: 'Belum ada data',
      stale: 'Data lama',
      updated: 'Diperbarui {age}',
      age_now: 'baru saja',
      age_s: '{n} detik lalu',
      age_m: '{n} menit lalu',
      age_h: '{n} jam lalu',
      age_d: '{n} hari lalu',
      kind_flood_gauge: 'Tinggi air',
      kind_tide_gauge: 'Pasang surut',
      kind_traffic_counter: 'Lalu lintas',
      kind_metocean: 'Angin & gelombang',
      kind_berth: 'Dermaga',
      kind_gateway_health: 'Kesehatan gateway',
      siaga4: 'Siaga 4 · Normal',
      siaga3: 'Siaga 3 · Waspada',
      siaga2: 'Siaga 2 · Siaga',
      siaga1: 'Siaga 1 · Awas',
      los: 'LOS {g}',
      los_A: 'Lancar', los_B: 'Lancar', los_C: 'Ramai lancar', los_D: 'Padat', los_E: 'Sangat padat', los_F: 'Macet',
      glyph_tide_gauge: 'P', glyph_metocean: 'A', glyph_berth: 'D', glyph_gateway_health: 'G',
      berth_occupied: 'Terisi', berth_free: 'Kosong', berth_waiting: '{n} kapal menunggu',
      wind: 'Angin {v} m/d', gust: 'hembusan {v} m/d', waves: 'Gelombang {v} m', tide: 'Muka air {v} m',
      flow: '{v} kend/jam', speed: '{v} km/jam',
      back: '← Kembali',
      current: 'Sekarang',
      thresholds: 'Batas status',
      threshold_row: '{label}: mulai {v} {unit}',
      los_bands: 'Tingkat layanan dari rasio volume/kapasitas dan kecepatan rata-rata (A terbaik, F macet).',
      chart_heading: 'Riwayat',
      range_24h: '24 jam',
      range_7d: '7 hari',
      chart_none: 'Belum ada riwayat untuk rentang ini.',
      chart_error: 'Riwayat tidak dapat dimuat.',
      district: 'Kecamatan {d}',
      legend: 'Keterangan',
      footer_data: 'Data sensor milik OPD Kota Dumai. Nilai otomatis, belum diverifikasi.',
      install_hint: 'Pasang di layar utama untuk membuka tanpa sinyal.',
      open_site: 'Buka {name}',
      sites_count: '{n} lokasi',
      field_water_level_cm: 'Tinggi muka air', field_inundation_depth_cm: 'Kedalaman genangan',
      field_distance_to_water_cm: 'Jarak ke air', field_rain_mm: 'Hujan (10 menit)', field_flow_m3_s: 'Debit',
      field_tide_height_m: 'Pasang surut', field_count_total: 'Jumlah kendaraan', field_count_mc: 'Sepeda motor',
      field_count_lv: 'Kendaraan ringan', field_count_hv: 'Kendaraan berat', field_count_bus: 'Bus',
      field_mean_speed_kmh: 'Kecepatan rata-rata', field_occupancy_ratio: 'Okupansi', field_window_s: 'Jendela hitung',
      field_wind_speed_ms: 'Kecepatan angin', field_wind_gust_ms: 'Hembusan', field_wind_dir_deg: 'Arah angin',
      field_hs_m: 'Tinggi gelombang', field_wave_period_s: 'Periode gelombang', field_occupied: 'Terisi',
      field_vessels_waiting: 'Kapal menunggu', field_vessel_imo: 'IMO kapal', field_battery_v: 'Baterai',
      field_rssi_dbm: 'Sinyal', field_spool_depth: 'Antrean', field_clock_offset_ms: 'Selisih jam',
      yes: 'ya', no: 'tidak',
      // Console
      sign_in: 'Masuk',
      sign_in_heading: 'Masuk dengan token OPD',
      token_label: 'Token akses',
      token_help: 'Token disimpan hanya untuk tab ini dan hilang saat tab ditutup.',
      sign_out: 'Keluar',
      bad_token: 'Token tidak dikenal atau sudah dicabut. Periksa token dari administrator Pantau.',
      no_server: 'Server Pantau tidak dapat dihubungi. Coba lagi sebentar lagi.',
      signed_in: 'Membaca: {kinds}',
      tab_alerts: 'Peringatan',
      tab_sensors: 'Sensor',
      tab_gateways: 'Gateway',
      filter_state: 'Status',
      filter_kind: 'Jenis',
      filter_search: 'Cari sensor',
      state_active: 'Aktif (baru & diakui)',
      state_open: 'Baru',
      state_acknowledged: 'Diakui',
      state_resolved: 'Selesai',
      state_all: 'Semua',
      kind_all: 'Semua jenis',
      no_alerts: 'Tidak ada peringatan yang cocok.',
      alert_since: 'Sejak {time}',
      alert_ack_by: 'Diakui oleh {who}',
      alert_assignee: 'Ditugaskan ke {who}',
      alert_late: 'dievaluasi terlambat',
      alert_muted: 'notifikasi dibisukan',
      act_ack: 'Akui',
      act_assign: 'Tugaskan',
      act_note: 'Catatan',
      act_resolve: 'Selesaikan',
      act_submit: 'Kirim',
      act_cancel: 'Batal',
      act_assignee: 'Nama petugas',
      act_note_text: 'Catatan',
      act_forbidden: 'Token ini tidak boleh menindaklanjuti peringatan ini (perlu izin ack untuk jenisnya).',
      act_failed: 'Gagal: {msg}',
      act_done: 'Tersimpan.',
      col_sensor: 'Sensor', col_kind: 'Jenis', col_district: 'Kecamatan', col_status: 'Status',
      col_value: 'Nilai', col_age: 'Umur data', col_gateway: 'Gateway', col_online: 'Terhubung',
      col_last_seen: 'Terakhir terlihat', col_spool: 'Antrean', col_dropped: 'Dibuang', col_battery: 'Baterai',
      col_clock: 'Selisih jam', col_sensors: 'Sensor', col_reason: 'Alasan putus',
      online: 'Daring', offline_gw: 'Luring',
      history_of: 'Riwayat {name}',
      field: 'Data',
      range: 'Rentang',
      range_1h: '1 jam', range_30d: '30 hari',
      export_csv: 'Unduh CSV',
      no_sensors: 'Token ini tidak membaca sensor apa pun.',
      close: 'Tutup',
    },
    en: {
      app_title: 'Pantau Dumai',
      app_sub: 'Live city conditions',
      time: 'Time',
      console_title: 'Pantau — Agency console',
      lang_label: 'Language',
      skip: 'Skip to the list of sites',
      tab_map: 'Map',
      tab_list: 'List',
      list_heading: 'All sites, most severe first',
      map_label: 'Map of sensor sites in Dumai',
      live: 'Live',
      connecting: 'Connecting…',
      reconnecting: 'Reconnecting…',
      offline: 'Offline',
      offline_note: 'You are offline. These are the last conditions received ({time}); they may have changed.',
      offline_never: 'You are offline and no conditions were saved yet.',
      warnings: 'Active warnings',
      warning_since: 'since {time}',
      reading_now: 'reading now',
      no_data: 'No data yet',
      stale: 'Stale',
      updated: 'Updated {age}',
      age_now: 'just now',
      age_s: '{n} s ago',
      age_m: '{n} min ago',
      age_h: '{n} h ago',
      age_d: '{n} days ago',
      kind_flood_gauge: 'Water level',
      kind_tide_gauge: 'Tide',
      kind_traffic_counter: 'Traffic',
      kind_metocean: 'Wind & waves',
      kind_berth: 'Berth',
      kind_gateway_health: 'Gateway health',
      siaga4: 'Siaga 4 · Normal',
      siaga3: 'Siaga 3 · Alert',
      siaga2: 'Siaga 2 · Standby',
      siaga1: 'Siaga 1 · Evacuate',
      los: 'LOS {g}',
      los_A: 'Free flow', los_B: 'Free flow', los_C: 'Busy', los_D: 'Heavy', los_E: 'Very heavy', los_F: 'Jammed',
      glyph_tide_gauge: 'T', glyph_metocean: 'W', glyph_berth: 'B', glyph_gateway_health: 'G',
      berth_occupied: 'Occupied', berth_free: 'Free', berth_waiting: '{n} vessels waiting',
      wind: 'Wind {v} m/s', gust: 'gusts {v} m/s', waves: 'Waves {v} m', tide: 'Tide {v} m',
      flow: '{v} veh/h', speed: '{v} km/h',
      back: '← Back',
      current: 'Now',
      thresholds: 'Status thresholds',
      threshold_row: '{label}: from {v} {unit}',
      los_bands: 'Level of service from the volume/capacity ratio and the mean speed (A best, F jammed).',
      chart_heading: 'History',
      range_24h: '24 hours',
      range_7d: '7 days',
      chart_none: 'No history for this range yet.',
      chart_error: 'The history could not be loaded.',
      district: '{d} district',
      legend: 'Legend',
      footer_data: 'Sensor data of the City of Dumai agencies. Automatic values, not yet verified.',
      install_hint: 'Add to your home screen to open it without signal.',
      open_site: 'Open {name}',
      sites_count: '{n} sites',
      field_water_level_cm: 'Water level', field_inundation_depth_cm: 'Inundation depth',
      field_distance_to_water_cm: 'Distance to water', field_rain_mm: 'Rain (10 min)', field_flow_m3_s: 'Flow',
      field_tide_height_m: 'Tide height', field_count_total: 'Vehicles', field_count_mc: 'Motorcycles',
      field_count_lv: 'Light vehicles', field_count_hv: 'Heavy vehicles', field_count_bus: 'Buses',
      field_mean_speed_kmh: 'Mean speed', field_occupancy_ratio: 'Occupancy', field_window_s: 'Count window',
      field_wind_speed_ms: 'Wind speed', field_wind_gust_ms: 'Gusts', field_wind_dir_deg: 'Wind direction',
      field_hs_m: 'Wave height', field_wave_period_s: 'Wave period', field_occupied: 'Occupied',
      field_vessels_waiting: 'Vessels waiting', field_vessel_imo: 'Vessel IMO', field_battery_v: 'Battery',
      field_rssi_dbm: 'Signal', field_spool_depth: 'Spool', field_clock_offset_ms: 'Clock offset',
      yes: 'yes', no: 'no',
      sign_in: 'Sign in',
      sign_in_heading: 'Sign in with an agency token',
      token_label: 'Access token',
      token_help: 'The token is kept for this tab only and is forgotten when the tab closes.',
      sign_out: 'Sign out',
      bad_token: 'This token is unknown or was revoked. Check the token your Pantau administrator gave you.',
      no_server: 'The Pantau server cannot be reached. Try again in a moment.',
      signed_in: 'Reads: {kinds}',
      tab_alerts: 'Alerts',
      tab_sensors: 'Sensors',
      tab_gateways: 'Gateways',
      filter_state: 'State',
      filter_kind: 'Kind',
      filter_search: 'Find a sensor',
      state_active: 'Active (open & acknowledged)',
      state_open: 'Open',
      state_acknowledged: 'Acknowledged',
      state_resolved: 'Resolved',
      state_all: 'All',
      kind_all: 'All kinds',
      no_alerts: 'No alert matches.',
      alert_since: 'Since {time}',
      alert_ack_by: 'Acknowledged by {who}',
      alert_assignee: 'Assigned to {who}',
      alert_late: 'evaluated late',
      alert_muted: 'notifications muted',
      act_ack: 'Acknowledge',
      act_assign: 'Assign',
      act_note: 'Note',
      act_resolve: 'Resolve',
      act_submit: 'Send',
      act_cancel: 'Cancel',
      act_assignee: 'Assignee',
      act_note_text: 'Note',
      act_forbidden: 'This token may not act on this alert (it needs the ack scope of its kind).',
      act_failed: 'Failed: {msg}',
      act_done: 'Saved.',
      col_sensor: 'Sensor', col_kind: 'Kind', col_district: 'District', col_status: 'Status',
      col_value: 'Value', col_age: 'Age', col_gateway: 'Gateway', col_online: 'Connected',
      col_last_seen: 'Last seen', col_spool: 'Spool', col_dropped: 'Dropped', col_battery: 'Battery',
      col_clock: 'Clock offset', col_sensors: 'Sensors', col_reason: 'Disconnect reason',
      online: 'Online', offline_gw: 'Offline',
      history_of: 'History of {name}',
      field: 'Field',
      range: 'Range',
      range_1h: '1 hour', range_30d: '30 days',
      export_csv: 'Download CSV',
      no_sensors: 'This token reads no sensor.',
      close: 'Close',
    },
  };

  /** The language: the visitor's choice, else the browser's preference
   * between Indonesian and English, else Indonesian. */
  function pickLang() {
    try {
      const saved = localStorage.getItem('pantau.lang');
      if (saved === 'id' || saved === 'en') return saved;
    } catch (_) { /* storage off */ }
    for (const l of navigator.languages || [navigator.language || '']) {
      const p = String(l).toLowerCase();
      if (p.startsWith('id') || p.startsWith('ms')) return 'id';
      if (p.startsWith('en')) return 'en';
    }
    return 'id';
  }

  let lang = pickLang();

  function t(key, vars) {
    let s = (WORDS[lang] && WORDS[lang][key]) || WORDS.id[key] || key;
    if (vars) for (const k of Object.keys(vars)) s = s.split('{' + k + '}').join(String(vars[k]));
    return s;
  }

  /** Sets every `data-i18n` text and `data-i18n-attr` ("attr:key;…"). */
  function applyWords(root) {
    document.documentElement.lang = lang;
    for (const el of (root || document).querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    for (const el of (root || document).querySelectorAll('[data-i18n-attr]')) {
      for (const pair of el.dataset.i18nAttr.split(';')) {
        const [attr, key] = pair.split(':');
        el.setAttribute(attr, t(key));
      }
    }
  }

  function setLang(l, onChange) {
    lang = l;
    try { localStorage.setItem('pantau.lang', l); } catch (_) { /* storage off */ }
    applyWords();
    for (const b of document.querySelectorAll('[data-lang]')) b.setAttribute('aria-pressed', String(b.dataset.lang === l));
    if (onChange) onChange();
  }

  /** Wires the ID/EN buttons. */
  function langSwitch(onChange) {
    for (const b of document.querySelectorAll('[data-lang]')) {
      b.setAttribute('aria-pressed', String(b.dataset.lang === lang));
      b.addEventListener('click', () => setLang(b.dataset.lang, onChange));
    }
    applyWords();
  }

  const num = (v, digits) => {
    if (typeof v !== 'number' || !isFinite(v)) return '–';
    return v.toLocaleString(lang === 'id' ? 'id-ID' : 'en-GB', { maximumFractionDigits: digits === undefined ? 1 : digits });
  };

  function ageText(ms) {
    if (ms < 10e3) return t('age_now');
    if (ms < 60e3) return t('age_s', { n: Math.floor(ms / 1e3) });
    if (ms < 3600e3) return t('age_m', { n: Math.floor(ms / 60e3) });
    if (ms < 86400e3) return t('age_h', { n: Math.floor(ms / 3600e3) });
    return t('age_d', { n: Math.floor(ms / 86400e3) });
  }

  function clock(d) {
    return new Date(d).toLocaleString(lang === 'id' ? 'id-ID' : 'en-GB', {
      hour: '2-digit', minute: '2-digit', day: 'numeric', month: 'short',
    });
  }

  const FLOOD = {
    4: { tone: 'green', sev: 0, key: 'siaga4' },
    3: { tone: 'yellow', sev: 1, key: 'siaga3' },
    2: { tone: 'orange', sev: 2, key: 'siaga2' },
    1: { tone: 'red', sev: 3, key: 'siaga1' },
  };
  const LOS = {
    A: { tone: 'green', sev: 0 }, B: { tone: 'green', sev: 0 }, C: { tone: 'lime', sev: 0.5 },
    D: { tone: 'yellow', sev: 1 }, E: { tone: 'orange', sev: 2 }, F: { tone: 'red', sev: 3 },
  };

  /** How a site looks: `{tone, sev, glyph, label, cls, stale, nodata}`.
   * `site` holds `kind`, `latest` ({ts, values}) and `status`. */
  function look(site, now) {
    const latest = site.latest;
    if (!latest) {
      return { tone: 'grey', sev: -2, glyph: '?', label: t('no_data'), cls: 'st-nodata', stale: false, nodata: true };
    }
    const stale = now - Date.parse(latest.ts) > STALE_MS;
    const st = site.status;
    let out;
    if (site.kind === 'flood_gauge' && st && FLOOD[st.siaga_level]) {
      const f = FLOOD[st.siaga_level];
      out = { tone: f.tone, sev: f.sev, glyph: String(st.siaga_level), label: t(f.key), cls: 'st-siaga' + st.siaga_level };
    } else if (site.kind === 'traffic_counter' && st && LOS[st.level_of_service]) {
      const g = st.level_of_service;
      out = { tone: LOS[g].tone, sev: LOS[g].sev, glyph: g, label: t('los_' + g) + ' (' + t('los', { g }) + ')', cls: 'st-los' + g };
    } else {
      out = { tone: 'blue', sev: -1, glyph: t('glyph_' + site.kind), label: t('kind_' + site.kind), cls: 'st-info' };
    }
    out.stale = stale;
    out.nodata = false;
    return out;
  }

  /** The one line that says what a site reads now. */
  function summary(site) {
    const v = (site.latest && site.latest.values) || {};
    const st = site.status;
    switch (site.kind) {
      case 'flood_gauge':
        if (st && typeof st.value === 'number') return num(st.value, 0) + ' cm';
        if (typeof v.water_level_cm === 'number') return num(v.water_level_cm, 0) + ' cm';
        return '';
      case 'traffic_counter': {
        const parts = [];
        if (st && typeof st.flow_veh_h === 'number') parts.push(t('flow', { v: num(st.flow_veh_h, 0) }));
        if (typeof v.mean_speed_kmh === 'number') parts.push(t('speed', { v: num(v.mean_speed_kmh, 0) }));
        return parts.join(' · ');
      }
      case 'tide_gauge':
        return typeof v.tide_height_m === 'number' ? t('tide', { v: num(v.tide_height_m, 2) }) : '';
      case 'metocean': {
        const parts = [];
        if (typeof v.wind_speed_ms === 'number') parts.push(t('wind', { v: num(v.wind_speed_ms) }));
        if (typeof v.hs_m === 'number') parts.push(t('waves', { v: num(v.hs_m) }));
        return parts.join(' · ');
      }
      case 'berth': {
        const parts = [];
        if (typeof v.occupied === 'boolean') parts.push(v.occupied ? t('berth_occupied') : t('berth_free'));
        if (typeof v.vessels_waiting === 'number') parts.push(t('berth_waiting', { n: v.vessels_waiting }));
        return parts.join(' · ');
      }
      default:
        return Object.keys(v).slice(0, 2).map((k) => t('field_' + k) + ' ' + fmt(v[k])).join(' · ');
    }
  }

  function fmt(v, unit) {
    if (typeof v === 'boolean') return v ? t('yes') : t('no');
    if (typeof v === 'number') return num(v, 2) + (unit ? ' ' + unit : '');
    return v == null ? '–' : String(v);
  }

  /** `el('li', {class: 'x', 'data-site': id}, child, 'text', …)`. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v == null) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c != null && c !== false) e.append(c);
    return e;
  }

  /** A Leaflet map over Dumai: the shipped land outline (or configured
   * tiles) and a label per district. */
  function baseMap(node, opts) {
    const body = document.body.dataset;
    const map = L.map(node, { zoomControl: true, attributionControl: true, preferCanvas: false, keyboard: true });
    map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
    map.setView([1.665, 101.445], 13);
    // The shipped outline covers this box.
    map.setMaxBounds([[1.30, 101.0], [2.05, 101.9]]);
    map.setMinZoom(10);
    if (body.tiles) {
      L.tileLayer(body.tiles, { maxZoom: 18, attribution: body.tilesAttribution || '' }).addTo(map);
    } else {
      node.classList.add('outline-map');
      fetch(body.land)
        .then((r) => r.json())
        .then((geo) => {
          L.geoJSON(geo, {
            interactive: false,
            style: { color: '#9aa79b', weight: 1, fillColor: '#eef0e6', fillOpacity: 1 },
          }).addTo(map).bringToBack();
          map.attributionControl.addAttribution(geo.attribution || '© OpenStreetMap contributors');
        })
        .catch(() => { /* offline without a cached outline: markers still show */ });
    }
    if (opts && opts.onMove) map.on('moveend', opts.onMove);
    return map;
  }

  /** Labels each district at the middle of its sites. */
  function districtLabels(map, sites) {
    const by = new Map();
    for (const s of sites) {
      const d = by.get(s.district) || { lat: 0, lon: 0, n: 0 };
      d.lat += s.lat; d.lon += s.lon; d.n += 1;
      by.set(s.district, d);
    }
    const layer = L.layerGroup();
    for (const [name, d] of by) {
      L.marker([d.lat / d.n, d.lon / d.n], {
        interactive: false, keyboard: false, zIndexOffset: -1000,
        icon: L.divIcon({ className: 'district-label', html: '', iconSize: null }),
      }).addTo(layer).on('add', (e) => { e.target.getElement().textContent = name; });
    }
    layer.addTo(map);
    return layer;
  }

  /** A pin for a site: a round badge with its glyph, coloured by tone. */
  function pin(site, lk, onOpen) {
    const m = L.marker([site.lat, site.lon], {
      title: site.name,
      alt: site.name,
      riseOnHover: true,
      keyboard: true,
      icon: L.divIcon({ className: 'pin', html: '', iconSize: [30, 30], iconAnchor: [15, 15] }),
    });
    m.on('add', () => paintPin(m, site, lk));
    m.on('click', () => onOpen(site.id));
    m.on('keypress', (e) => { if (e.originalEvent.key === 'Enter') onOpen(site.id); });
    return m;
  }

  function paintPin(m, site, lk) {
    const e = m.getElement();
    if (!e) return;
    e.className = 'leaflet-marker-icon leaflet-interactive pin tone-' + lk.tone + ' ' + lk.cls + (lk.stale ? ' stale' : '');
    e.dataset.site = site.id;
    e.setAttribute('aria-label', site.name + ': ' + lk.label + (lk.stale ? ' (' + t('stale') + ')' : ''));
    e.setAttribute('title', site.name + ' — ' + lk.label);
    // The glyph (drawn by CSS) repeats the label, the accessible name, for
    // the eye.
    e.dataset.glyph = lk.glyph;
    // The most severe on top where pins overlap.
    m.setZIndexOffset(Math.round((lk.stale ? -1 : lk.sev + 2) * 1000));
  }

  /** A uPlot line chart of `series` ([{label, unit, points:[[ms, v]]}])
   * with optional horizontal `lines` ([{label, value, cls}]). */
  function chart(node, series, lines, range) {
    node.replaceChildren();
    const xs = new Set();
    for (const s of series) for (const p of s.points) xs.add(p[0]);
    if (!xs.size) return null;
    // The range's ends, so threshold lines span it.
    if (range) { xs.add(range[0]); xs.add(range[1]); }
    const x = [...xs].sort((a, b) => a - b);
    const idx = new Map(x.map((v, i) => [v, i]));
    const data = [x.map((ms) => ms / 1000)];
    const colours = ['#1864ab', '#2b8a3e', '#862e9c', '#e67700'];
    const locale = lang === 'id' ? 'id-ID' : 'en-GB';
    const days = (x[x.length - 1] - x[0]) > 2 * 86400e3;
    const useries = [{ label: t('time'), value: (u, v) => (v == null ? '–' : clock(v * 1000)) }];
    series.forEach((s, i) => {
      const ys = new Array(x.length).fill(null);
      for (const p of s.points) ys[idx.get(p[0])] = p[1];
      data.push(ys);
      useries.push({ label: s.label + (s.unit ? ' (' + s.unit + ')' : ''), stroke: colours[i % colours.length], width: 2, spanGaps: false });
    });
    const lineColours = { yellow: '#c29b00', orange: '#d9480f', red: '#c92a2a' };
    for (const l of lines || []) {
      data.push(new Array(x.length).fill(l.value));
      useries.push({ label: l.label, stroke: lineColours[l.tone] || '#666', width: 1, dash: [6, 4], points: { show: false } });
    }
    const width = Math.max(280, node.clientWidth || 600);
    const opts = {
      width,
      height: Math.round(Math.min(320, Math.max(200, width * 0.45))),
      series: useries,
      scales: { x: range ? { time: true, range: () => [range[0] / 1000, range[1] / 1000] } : { time: true } },
      axes: [
        {
          stroke: '#495057', grid: { stroke: '#e9ecef' },
          values: (u, splits) => splits.map((v) => new Date(v * 1000).toLocaleString(locale,
            days ? { day: 'numeric', month: 'short' } : { hour: '2-digit', minute: '2-digit' })),
        },
        { stroke: '#495057', grid: { stroke: '#e9ecef' } },
      ],
      legend: { live: true },
    };
    const u = new uPlot(opts, data, node);
    return u;
  }

  /** `fn` at the next frame, once however often this is called before. */
  function frame(fn) {
    let pending = false;
    return () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; fn(); });
    };
  }

  /** Shows the live feed's state (`live`, `connecting`, `reconnecting`,
   * `offline`) in the header's pill. */
  function setConn(state) {
    const c = document.getElementById('conn');
    c.className = 'conn conn-' + state;
    c.dataset.i18n = state;
    c.textContent = t(state);
  }

  /** Reads a Server-Sent Events stream with `fetch` (so it can carry a
   * bearer token), calling `onEvent(type, data)`; resolves when the
   * stream ends, rejects with `{status}` when refused. */
  async function readSse(url, token, onEvent, signal, onOpen) {
    const resp = await fetch(url, {
      headers: { Accept: 'text/event-stream', Authorization: 'Bearer ' + token },
      signal,
      cache: 'no-store',
    });
    if (!resp.ok) throw { status: resp.status };
    if (onOpen) onOpen();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let type = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) type = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length) onEvent(type, data.join('\n'));
      }
    }
  }

  window.Pantau = {
    STALE_MS, t, applyWords, langSwitch, lang: () => lang, num, ageText, clock, look, summary, fmt, el,
    baseMap, districtLabels, pin, paintPin, chart, readSse, setConn, frame,
  };
})();
