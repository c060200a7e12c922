// The inspector's page (docs/INSPECTOR.md): sign in with an inspector key,
// choose a checkpoint, read a code three ways (a handheld scanner that types
// the code and Enter into the focused input, the camera, or pasting), send
// the scan with the temperature where the checkpoint measures one, and show
// the decision so that it reads at a glance: pass or deny, the colour as a
// word and a shape as well as a colour, the reason in words, the masked
// holder hint and the state epoch.
//
// It talks only to the gateway that served it, through the public API and
// by URLs relative to the page. The key is kept in sessionStorage (this tab
// only) and sent only in the Authorization header, never in a URL. All text
// goes into the page with textContent: nothing from the network is parsed
// as HTML.
'use strict';

(function () {
  const API = '../v1/';
  const KEY_SLOT = 'healthgate.inspector.key';
  const CHECKPOINT_SLOT = 'healthgate.inspector.checkpoint';
  const LANG_SLOT = 'healthgate.inspector.lang';
  // A request that has not answered by then is reported as a network
  // failure: an inspector must not stand waiting.
  const TIMEOUT_MS = 8000;
  // Plausible body temperatures. The gateway accepts 30 to 45; the page is
  // stricter so that a slip of the finger (3.66, 366) is caught before it
  // counts as a reading.
  const TEMP_MIN = 34.0;
  const TEMP_MAX = 43.0;
  // Camera frames are scaled to at most this many pixels a side and sent
  // as one grey byte a pixel (under the gateway's 1 MiB frame limit).
  const FRAME_SIDE = 960;
  const FRAME_EVERY_MS = 250;

  const TEXT = {
    en: {
      title: 'Checkpoint inspection',
      other_lang: '中文',
      signin_title: 'Sign in',
      key_label: 'Inspector key',
      key_hint: 'Kept in this browser tab only, and sent only to this gateway.',
      signin: 'Sign in',
      signout: 'Sign out',
      checkpoint: 'Checkpoint',
      measures: 'measures temperature',
      no_measure: 'no temperature check',
      admits: 'admits',
      direction: 'Direction',
      dir_in: 'Entering',
      dir_out: 'Leaving',
      temperature: 'Temperature',
      temp_hint: 'Required at this checkpoint: measure, type the reading (like 36.6), then scan.',
      code_label: 'Health code',
      code_hint: 'Scan with the handheld scanner, or paste the code, then Enter.',
      check: 'Check',
      camera: 'Camera',
      camera_stop: 'Stop camera',
      camera_looking: 'Looking for a code: hold it inside the picture.',
      camera_busy: 'The gateway is busy reading other frames; trying again.',
      camera_unavailable: 'No camera available here. The camera needs HTTPS (or this machine) and your permission.',
      idle: 'Waiting for a code.',
      pass: 'PASS',
      deny: 'DENY',
      color: { green: 'Green code', yellow: 'Yellow code', red: 'Red code', pending: 'Pending review', unknown: 'Colour unknown' },
      color_short: { green: 'green', yellow: 'yellow', red: 'red', pending: 'pending', unknown: 'unknown' },
      color_now: { green: 'GREEN', yellow: 'YELLOW', red: 'RED', pending: 'PENDING', unknown: 'UNKNOWN' },
      reason: {
        ok: 'Green code with a recent health record: may pass.',
        fever: 'Fever: the reading is at or above the threshold.',
        not_green: 'Not a green code: may not pass here.',
        pending: 'Application under review: may not pass.',
        unknown_holder: 'The gateway has no record of this holder.',
        revoked: 'This code has been revoked.',
        expired: 'The code has expired: ask the holder to refresh it.',
        not_yet_valid: 'The code is not valid yet: the phone clock may be wrong.',
        bad_signature: 'Forged or damaged code: the signature does not verify.',
        unknown_issuer: 'Issuer not recognised in this region.',
        malformed: 'Not a health code: the text cannot be read.',
        no_health_record: 'No recent temperature record: counts as yellow until a normal reading.',
        anti_passback: 'Already entered here with no exit: someone else may be using this code.',
      },
      reason_pass_yellow: 'Admitted here with this colour.',
      fever_note: 'Fever {t} °C (threshold {th} °C): the holder’s code is now {c}. Report the reading at once.',
      holder: 'Holder',
      epoch: 'State epoch',
      time: 'Time',
      not_measured: 'not measured',
      status_button: 'Holder status',
      status_title: 'Holder status',
      since: 'Since',
      steps: 'Scheduled',
      step: 'until {t}, then {c}',
      no_steps: 'none',
      last_record: 'Last health record',
      fresh_in: 'Record valid in',
      none: 'none',
      code_empty: 'Scan or paste a code first.',
      temp_required: 'This checkpoint measures temperature: type the reading and press Enter.',
      temp_bad: 'The temperature must be a reading between 34.0 and 43.0 °C, like 36.6.',
      no_holder: 'This code names no holder to look up.',
      err_401: 'The gateway does not accept this key. Sign in again with an inspector key.',
      err_403: 'This key may not do this: the page needs an inspector key.',
      err_400: 'The gateway refused the request: {m}',
      err_unknown_checkpoint: 'This checkpoint is no longer configured. The list has been reloaded: choose again.',
      err_404_holder: 'The gateway has no record of this holder.',
      err_413: 'Too large for the gateway: this is not a health code.',
      err_503: 'The gateway is busy or not ready. Try again in a moment; until then apply the checkpoint’s fallback rule.',
      err_network: 'No answer from the gateway: check the network, then scan again.',
      err_other: 'Unexpected answer from the gateway (HTTP {s}).',
      no_checkpoints: 'No checkpoint is configured on this gateway.',
    },
    'zh-CN': {
      title: '卡口检查',
      other_lang: 'English',
      signin_title: '登录',
      key_label: '检查员密钥',
      key_hint: '密钥仅保存在本浏览器标签页中，只发送给本网关。',
      signin: '登录',
      signout: '退出',
      checkpoint: '卡口',
      measures: '需测体温',
      no_measure: '不测体温',
      admits: '放行',
      direction: '方向',
      dir_in: '进入',
      dir_out: '离开',
      temperature: '体温',
      temp_hint: '本卡口必须测温：先测温并输入读数（如 36.6），再扫码。',
      code_label: '健康码',
      code_hint: '用扫码枪扫码，或粘贴码文本，然后按回车。',
      check: '核验',
      camera: '摄像头扫码',
      camera_stop: '关闭摄像头',
      camera_looking: '正在识别：请将健康码置于画面中。',
      camera_busy: '网关正忙于识别其他画面，稍后重试。',
      camera_unavailable: '此处无法使用摄像头：需要 HTTPS（或本机地址）并允许访问摄像头。',
      idle: '等待扫码。',
      pass: '通行',
      deny: '禁止通行',
      color: { green: '绿码', yellow: '黄码', red: '红码', pending: '审核中', unknown: '颜色未知' },
      color_short: { green: '绿码', yellow: '黄码', red: '红码', pending: '审核中', unknown: '未知' },
      color_now: { green: '绿码', yellow: '黄码', red: '红码', pending: '审核中', unknown: '颜色未知' },
      reason: {
        ok: '绿码且近期有健康记录，可以通行。',
        fever: '体温异常：读数达到或超过发热标准。',
        not_green: '非绿码，此处不得通行。',
        pending: '申请审核中，不得通行。',
        unknown_holder: '网关无此持码人记录。',
        revoked: '该健康码已被撤销。',
        expired: '健康码已过期：请持码人刷新。',
        not_yet_valid: '健康码尚未生效：手机时间可能有误。',
        bad_signature: '伪造或损坏的码：签名验证失败。',
        unknown_issuer: '签发机构不被本地区认可。',
        malformed: '不是健康码：无法识别码文本。',
        no_health_record: '近期无体温记录：在正常测温前按黄码处理。',
        anti_passback: '已进入且无离开记录：该码可能被他人使用。',
      },
      reason_pass_yellow: '此处允许该颜色通行。',
      fever_note: '体温 {t} °C 异常（标准 {th} °C）。该持码人现为{c}，请立即上报。',
      holder: '持码人',
      epoch: '状态版本',
      time: '时间',
      not_measured: '未测',
      status_button: '持码人状态',
      status_title: '持码人状态',
      since: '起始时间',
      steps: '预定变更',
      step: '{t} 后转为{c}',
      no_steps: '无',
      last_record: '最近健康记录',
      fresh_in: '记录有效地区',
      none: '无',
      code_empty: '请先扫码或粘贴码文本。',
      temp_required: '本卡口需测体温：请输入读数并按回车。',
      temp_bad: '体温须为 34.0 至 43.0 °C 之间的读数，例如 36.6。',
      no_holder: '该码未含可查询的持码人。',
      err_401: '网关不接受此密钥，请使用检查员密钥重新登录。',
      err_403: '此密钥无权执行该操作：本页面需要检查员密钥。',
      err_400: '请求被网关拒绝：{m}',
      err_unknown_checkpoint: '该卡口已不在配置中。卡口列表已重新载入，请重新选择。',
      err_404_holder: '网关无此持码人记录。',
      err_413: '内容过大，网关拒收：这不是健康码。',
      err_503: '网关繁忙或未就绪，请稍后重试；在此之前按本卡口应急规则处理。',
      err_network: '网关无响应：请检查网络后重新扫码。',
      err_other: '网关返回了意外的结果（HTTP {s}）。',
      no_checkpoints: '本网关未配置任何卡口。',
    },
  };

  // Names from the configuration that have a usual Chinese name; any other
  // name is shown as configured.
  const PLACE_NAMES = {
    'zh-CN': {
      metro: '地铁', rail: '铁路', road: '公路', clinic: '发热门诊', campus: '校园', compound: '小区',
      wuhan: '武汉', ningbo: '宁波', hangzhou: '杭州', hubei: '湖北',
    },
    en: {
      metro: 'Metro', rail: 'Rail', road: 'Road', clinic: 'Fever clinic', campus: 'Campus', compound: 'Compound',
      wuhan: 'Wuhan', ningbo: 'Ningbo', hangzhou: 'Hangzhou', hubei: 'Hubei',
    },
  };

  // A shape for each colour, so that the colour never rests on hue alone.
  const GLYPH = { green: '●', yellow: '▲', red: '■', pending: '◆', unknown: '?' };

  const $ = (id) => document.getElementById(id);

  const state = {
    lang: 'en',
    checkpoints: [],
    // The last answer and the last holder status, kept to render them again
    // in the other language.
    last: null,
    status: null,
    busy: false,
    camera: null,
  };

  // ---- language -----------------------------------------------------------

  function initialLang() {
    const saved = localStorage.getItem(LANG_SLOT);
    if (saved && TEXT[saved]) return saved;
    const wanted = (navigator.languages && navigator.languages[0]) || navigator.language || 'en';
    return wanted.toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
  }

  function t(key, vars) {
    let s = TEXT[state.lang][key];
    if (s === undefined) s = TEXT.en[key];
    if (vars) for (const k of Object.keys(vars)) s = s.split('{' + k + '}').join(String(vars[k]));
    return s;
  }

  function place(name) {
    return PLACE_NAMES[state.lang][name] || name;
  }

  function applyLang() {
    document.documentElement.lang = state.lang;
    document.title = 'healthgate · ' + t('title');
    for (const el of document.querySelectorAll('[data-t]')) el.textContent = t(el.dataset.t);
    $('lang').textContent = t('other_lang');
    $('lang').lang = state.lang === 'en' ? 'zh-CN' : 'en';
    fillCheckpoints();
    if (state.last) renderResult();
    if (state.status) renderStatus();
  }

  // ---- messages -----------------------------------------------------------

  function notice(text, kind) {
    const n = $('notice');
    n.textContent = text;
    n.className = 'notice ' + (kind || 'error');
    n.hidden = !text;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message || '');
      this.status = status; // 0: no answer (network, timeout)
    }
  }

  function errorText(e, what) {
    if (!(e instanceof ApiError)) return t('err_other', { s: '?' });
    switch (e.status) {
      case 0: return t('err_network');
      case 400:
        if (/unknown checkpoint/.test(e.message)) return t('err_unknown_checkpoint');
        return t('err_400', { m: e.message || '' });
      case 401: return t('err_401');
      case 403: return t('err_403');
      case 404: return what === 'holder' ? t('err_404_holder') : t('err_other', { s: 404 });
      case 413: return t('err_413');
      case 503: return t('err_503');
      default: return t('err_other', { s: e.status });
    }
  }

  // ---- the API --------------------------------------------------------------

  async function api(method, path, body, contentType) {
    const key = sessionStorage.getItem(KEY_SLOT) || '';
    const headers = { Authorization: 'Bearer ' + key };
    if (body !== undefined) headers['Content-Type'] = contentType || 'application/json';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    let res;
    try {
      res = await fetch(API + path, {
        method, headers, body, signal: abort.signal,
        cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
      });
    } catch (_) {
      throw new ApiError(0);
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try { data = await res.json(); } catch (_) { /* an empty or non-JSON body */ }
    if (!res.ok) throw new ApiError(res.status, data && data.error);
    return data;
  }

  // A 401 means the key is no good any more (revoked, or a new
  // configuration): back to sign-in, saying why.
  function handleError(e, what) {
    const text = errorText(e, what);
    if (e instanceof ApiError && e.status === 401) {
      signOut();
    }
    notice(text);
    return text;
  }

  // ---- sign-in and checkpoints --------------------------------------------

  async function loadCheckpoints() {
    const data = await api('GET', 'checkpoints');
    state.checkpoints = (data && data.checkpoints) || [];
    fillCheckpoints();
  }

  function fillCheckpoints() {
    const select = $('checkpoint');
    const keep = select.value || sessionStorage.getItem(CHECKPOINT_SLOT) || '';
    select.replaceChildren();
    const groups = new Map();
    for (const c of state.checkpoints) {
      const label = place(c.region) + ' · ' + place(c.class);
      if (!groups.has(label)) {
        const g = document.createElement('optgroup');
        g.label = label;
        groups.set(label, g);
        select.append(g);
      }
      const o = document.createElement('option');
      o.value = c.id;
      o.textContent = c.id + (c.measures_temperature ? '  (' + t('measures') + ')' : '');
      groups.get(label).append(o);
    }
    if (state.checkpoints.some((c) => c.id === keep)) select.value = keep;
    checkpointChanged();
  }

  function checkpoint() {
    return state.checkpoints.find((c) => c.id === $('checkpoint').value) || null;
  }

  function checkpointChanged() {
    const c = checkpoint();
    $('temp-row').hidden = !(c && c.measures_temperature);
    $('temp').required = !!(c && c.measures_temperature);
    if (!c) {
      $('checkpoint-info').textContent = state.checkpoints.length ? '' : t('no_checkpoints');
      return;
    }
    sessionStorage.setItem(CHECKPOINT_SLOT, c.id);
    const admits = c.admits.map((x) => t('color_short')[x] || x).join(', ');
    $('checkpoint-info').textContent = [
      place(c.class), place(c.region),
      c.measures_temperature ? t('measures') : t('no_measure'),
      t('admits') + ': ' + admits,
    ].join(' · ');
  }

  function showSignIn() {
    $('signin').hidden = false;
    $('work').hidden = true;
    $('signout').hidden = true;
    $('key').value = '';
    $('key').focus();
  }

  function showWork() {
    $('signin').hidden = true;
    $('work').hidden = false;
    $('signout').hidden = false;
    focusCode();
  }

  function signOut() {
    stopCamera();
    sessionStorage.removeItem(KEY_SLOT);
    clearResult();
    showSignIn();
  }

  async function signIn(key) {
    sessionStorage.setItem(KEY_SLOT, key);
    try {
      await loadCheckpoints();
    } catch (e) {
      sessionStorage.removeItem(KEY_SLOT);
      notice(errorText(e));
      $('key').select();
      return;
    }
    notice('');
    showWork();
  }

  // ---- reading a code -----------------------------------------------------

  // Keep the code input focused so that a handheld scanner, which types
  // like a keyboard, always lands there. Not on touch screens: there the
  // focus would keep the on-screen keyboard over the answer.
  const keepFocus = !window.matchMedia('(pointer: coarse)').matches;

  function focusCode() {
    // Without scrolling: the answer, not the input, must stay in view.
    if (keepFocus && !$('work').hidden) $('code').focus({ preventScroll: true });
  }

  // A scanner firing while the temperature field has the focus types the
  // code there: move it to where it belongs.
  function looksLikeCode(s) {
    return /^HG\d:/i.test(s) || s.length > 8;
  }

  function readTemperature() {
    const raw = $('temp').value.trim().replace(',', '.');
    if (raw === '') return { empty: true };
    if (!/^\d{2}(\.\d)?$/.test(raw)) return { bad: true };
    const v = Number(raw);
    if (!(v >= TEMP_MIN && v <= TEMP_MAX)) return { bad: true };
    return { value: v };
  }

  async function submitScan() {
    if (state.busy) return;
    const code = $('code').value.trim();
    const c = checkpoint();
    if (!c) { notice(t('no_checkpoints')); return; }
    if (!code) { notice(t('code_empty'), 'info'); focusCode(); return; }
    // A new code is on its way: the last answer must not be mistaken for
    // its answer, whatever happens next.
    clearResult();
    const temp = readTemperature();
    if (temp.bad) { notice(t('temp_bad')); $('temp').focus(); $('temp').select(); return; }
    if (temp.empty && c.measures_temperature) {
      // The code waits in its field while the inspector types the reading.
      notice(t('temp_required'), 'info');
      $('temp').focus();
      return;
    }
    const direction = document.querySelector('input[name="direction"]:checked').value;
    const body = { code, checkpoint: c.id, direction };
    if (temp.value !== undefined) body.temperature_c = temp.value;
    state.busy = true;
    try {
      const answer = await api('POST', 'scan', JSON.stringify(body));
      notice('');
      state.last = { answer, code, checkpoint: c, temperature: temp.value, at: new Date() };
      state.status = null;
      $('code').value = '';
      $('temp').value = '';
      renderResult();
    } catch (e) {
      handleError(e, 'scan');
      if (e instanceof ApiError && e.status === 400 && /unknown checkpoint/.test(e.message)) {
        try { await loadCheckpoints(); } catch (_) { /* the notice already says what to do */ }
      }
      // A refused code is cleared; after a network failure or a busy
      // gateway it stays, so that Check sends it again.
      if (e instanceof ApiError && (e.status === 400 || e.status === 413)) $('code').value = '';
    } finally {
      state.busy = false;
      focusCode();
    }
  }

  // ---- the answer ---------------------------------------------------------

  function clearResult() {
    state.last = null;
    state.status = null;
    $('result').hidden = true;
    $('status').hidden = true;
    $('idle').hidden = false;
  }

  function setColor(swatch, text, color) {
    const c = GLYPH[color] ? color : 'unknown';
    swatch.className = 'swatch swatch-' + c;
    swatch.textContent = GLYPH[c];
    text.textContent = t('color')[c];
    text.dataset.color = c;
  }

  function formatTime(d) {
    const locale = state.lang === 'zh-CN' ? 'zh-CN' : 'en-GB';
    return d.toLocaleString(locale, { dateStyle: 'medium', timeStyle: 'medium' });
  }

  function formatTemp(v) {
    return v === undefined ? t('not_measured') : v.toFixed(1) + ' °C';
  }

  function renderResult() {
    const { answer, checkpoint: c, temperature, at } = state.last;
    const pass = answer.decision === 'pass';
    const result = $('result');
    result.className = 'card result ' + (pass ? 'is-pass' : 'is-deny');
    result.dataset.decision = answer.decision;
    result.dataset.reason = answer.reason;
    $('verdict-icon').textContent = pass ? '✓' : '✕';
    $('verdict-text').textContent = pass ? t('pass') : t('deny');
    setColor($('swatch'), $('color-text'), answer.color);
    let reason = t('reason')[answer.reason] || answer.reason;
    if (pass && answer.reason === 'ok' && answer.color !== 'green') reason = t('reason_pass_yellow');
    $('reason').textContent = reason;
    const fever = temperature !== undefined && (answer.reason === 'fever' || temperature >= c.fever_threshold_c);
    const feverNote = $('fever');
    feverNote.hidden = !fever;
    if (fever) {
      feverNote.textContent = '⚠ ' + t('fever_note', {
        t: temperature.toFixed(1), th: c.fever_threshold_c.toFixed(1), c: t('color_now')[answer.color] || answer.color,
      });
    }
    $('r-holder').textContent = answer.holder || '—';
    $('r-temp').textContent = formatTemp(temperature);
    $('r-checkpoint').textContent = c.id;
    $('r-epoch').textContent = String(answer.epoch);
    $('r-time').textContent = formatTime(at);
    $('status-button').hidden = !answer.holder || !holderOf(state.last.code);
    $('idle').hidden = true;
    result.hidden = false;
    $('status').hidden = !state.status;
    result.scrollIntoView({ block: 'start' });
    if (!pass && navigator.vibrate) navigator.vibrate([120, 60, 120]);
  }

  // ---- holder status ------------------------------------------------------

  const B45 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:';

  // The holder id inside a v1 code (docs/TOKEN.md: base45 of 102 bytes, the
  // holder at bytes 5 to 20), to ask for the holder's status. Nothing is
  // decided from it here: the gateway verifies the code.
  function holderOf(code) {
    if (!code.startsWith('HG1:')) return null;
    const s = code.slice(4);
    if (s.length !== 153) return null;
    const bytes = [];
    for (let i = 0; i < s.length; i += 3) {
      const a = B45.indexOf(s[i]);
      const b = B45.indexOf(s[i + 1]);
      const c = B45.indexOf(s[i + 2]);
      if (a < 0 || b < 0 || c < 0) return null;
      const v = a + b * 45 + c * 2025;
      if (v > 0xffff) return null;
      bytes.push(v >> 8, v & 0xff);
    }
    if (bytes.length !== 102 || bytes[0] !== 1) return null;
    return bytes.slice(5, 21).map((x) => x.toString(16).padStart(2, '0')).join('');
  }

  function masked(hex) {
    return hex.slice(0, 4) + '…' + hex.slice(-4);
  }

  async function showStatus() {
    const hex = state.last && holderOf(state.last.code);
    if (!hex) { notice(t('no_holder')); return; }
    try {
      state.status = await api('GET', 'holders/' + hex);
      notice('');
      renderStatus();
    } catch (e) {
      handleError(e, 'holder');
    } finally {
      focusCode();
    }
  }

  function renderStatus() {
    const s = state.status;
    $('s-holder').textContent = masked(s.holder);
    setColor($('s-swatch'), $('s-color'), s.color);
    $('s-reason').textContent = t('reason')[s.reason] || s.reason;
    $('s-since').textContent = formatTime(new Date(s.since));
    $('s-steps').textContent = s.steps.length
      ? s.steps.map((x) => t('step', { t: formatTime(new Date(x.until)), c: t('color')[x.then] || x.then })).join('; ')
      : t('no_steps');
    $('s-record').textContent = s.last_health_record ? formatTime(new Date(s.last_health_record)) : t('none');
    $('s-fresh').textContent = s.health_record_fresh_in.length
      ? s.health_record_fresh_in.map(place).join(', ')
      : t('none');
    $('s-epoch').textContent = String(s.epoch);
    $('status').hidden = false;
    $('status').scrollIntoView({ block: 'nearest' });
  }

  // ---- camera -------------------------------------------------------------

  async function startCamera() {
    if (state.camera) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      notice(t('camera_unavailable'));
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { facingMode: 'environment', width: { ideal: 1280 }, height: { ideal: 720 } },
      });
    } catch (_) {
      notice(t('camera_unavailable'));
      return;
    }
    const video = $('video');
    video.srcObject = stream;
    state.camera = { stream, timer: 0 };
    $('camera-box').hidden = false;
    $('camera-status').textContent = t('camera_looking');
    notice('');
    $('camera-box').scrollIntoView({ block: 'nearest' });
    try { await video.play(); } catch (_) { /* frames still arrive on muted inline video */ }
    nextFrame(FRAME_EVERY_MS);
  }

  function stopCamera() {
    const cam = state.camera;
    if (!cam) return;
    state.camera = null;
    clearTimeout(cam.timer);
    for (const track of cam.stream.getTracks()) track.stop();
    $('video').srcObject = null;
    $('camera-box').hidden = true;
  }

  function nextFrame(ms) {
    if (state.camera) state.camera.timer = setTimeout(readFrame, ms);
  }

  // One frame at a time: the next is taken only once the gateway answered
  // for this one.
  async function readFrame() {
    const video = $('video');
    if (!state.camera) return;
    const vw = video.videoWidth;
    const vh = video.videoHeight;
    if (!vw || !vh) { nextFrame(FRAME_EVERY_MS); return; }
    const scale = Math.min(1, FRAME_SIDE / Math.max(vw, vh));
    const w = Math.max(1, Math.round(vw * scale));
    const h = Math.max(1, Math.round(vh * scale));
    const canvas = $('frame');
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, w, h);
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const grey = new Uint8Array(w * h);
    for (let i = 0, j = 0; j < grey.length; i += 4, j += 1) {
      grey[j] = (rgba[i] * 77 + rgba[i + 1] * 150 + rgba[i + 2] * 29) >> 8;
    }
    let answer;
    try {
      answer = await api('POST', 'inspect/decode?width=' + w + '&height=' + h, grey, 'application/octet-stream');
    } catch (e) {
      if (e instanceof ApiError && e.status === 503) {
        $('camera-status').textContent = t('camera_busy');
        nextFrame(1000);
        return;
      }
      stopCamera();
      handleError(e, 'decode');
      return;
    }
    if (!state.camera) return;
    if (answer && answer.code) {
      stopCamera();
      $('code').value = answer.code;
      await submitScan();
      return;
    }
    $('camera-status').textContent = t('camera_looking');
    nextFrame(FRAME_EVERY_MS);
  }

  // ---- wiring -------------------------------------------------------------

  function init() {
    state.lang = initialLang();
    applyLang();

    $('lang').addEventListener('click', () => {
      state.lang = state.lang === 'en' ? 'zh-CN' : 'en';
      localStorage.setItem(LANG_SLOT, state.lang);
      applyLang();
      notice('');
      focusCode();
    });

    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('key').value.trim();
      if (key) signIn(key);
    });
    $('signout').addEventListener('click', () => { notice(''); signOut(); });

    $('checkpoint').addEventListener('change', () => { checkpointChanged(); focusCode(); });

    $('scan-form').addEventListener('submit', (ev) => { ev.preventDefault(); submitScan(); });

    // Enter in the temperature field: a reading goes on to the code (or
    // completes the scan waiting for it); a code typed there by a scanner
    // is moved to the code field.
    $('temp').addEventListener('keydown', (ev) => {
      if (ev.key !== 'Enter') return;
      ev.preventDefault();
      const v = $('temp').value.trim();
      if (looksLikeCode(v)) {
        $('code').value = v;
        $('temp').value = '';
      }
      if ($('code').value.trim()) submitScan();
      else focusCode();
    });

    // Pasting a whole code checks it at once.
    $('code').addEventListener('paste', (ev) => {
      const text = ev.clipboardData && ev.clipboardData.getData('text');
      if (!text) return;
      ev.preventDefault();
      $('code').value = text.trim();
      submitScan();
    });

    // Clicking on an empty part of the page must not leave the scanner
    // typing into nothing.
    $('code').addEventListener('blur', () => {
      setTimeout(() => {
        const a = document.activeElement;
        if (!a || a === document.body) focusCode();
      }, 0);
    });

    $('camera').addEventListener('click', startCamera);
    $('camera-stop').addEventListener('click', () => { stopCamera(); focusCode(); });
    $('status-button').addEventListener('click', showStatus);

    if (sessionStorage.getItem(KEY_SLOT)) {
      loadCheckpoints().then(showWork, (e) => {
        handleError(e);
        if (!(e instanceof ApiError) || e.status !== 0) signOut();
        else showWork();
      });
    } else {
      showSignIn();
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
}());
