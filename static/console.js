/* The serial console page: an xterm.js terminal on the console websocket.
 *
 * The page is served at the console URL itself (http://proxy:6083/?token=T),
 * so the websocket is this page's own URL with ws: or wss:, same path and
 * query (token and mode carry over). VM output arrives as binary frames and
 * is written to the terminal as bytes; keystrokes and pastes go back as
 * UTF-8 binary frames. Every close code of docs/close-codes.md is explained
 * in words, with Reconnect (and "watch read-only" for a busy console) where
 * that can help. window.serialproxyConsole exposes the terminal for tests.
 */
(function () {
  "use strict";

  // The proxy takes frames of at most 64 KiB; a browser sends a message as one frame.
  const CHUNK = 16 * 1024;
  const BAR_STATES = { connecting: "connecting…", connected: "connected", closed: "disconnected" };
  const EXPIRED = {
    title: "This console link expired",
    text: "This console link expired or is not valid; get a new one (ask the API for a new " +
      "console URL, or go back to where you got this link).",
    reconnect: "if-token",
  };
  // What each close code means to the person at the console (docs/close-codes.md).
  const CLOSES = {
    1000: { title: "Session ended", text: "The console session was closed.", reconnect: true },
    1001: { title: "The proxy is going away", reconnect: true,
      text: "The console proxy is shutting down or restarting. Reconnect in a moment " +
        "(behind a load balancer, you reach another node)." },
    1002: { title: "Protocol error", text: "The proxy and this page disagreed on the websocket protocol.", reconnect: true },
    1006: { title: "Connection lost", reconnect: true,
      text: "The connection to the console proxy dropped without a goodbye: the network went away, " +
        "or the proxy stopped or could not be reached." },
    1007: { title: "Protocol error", text: "The proxy received text that is not UTF-8.", reconnect: true },
    1009: { title: "Message too big", text: "A message was larger than the proxy accepts.", reconnect: true },
    1011: { title: "Proxy error", reconnect: true,
      text: "The console proxy hit an internal error (its log has the details). Reconnecting may work; " +
        "if it keeps happening, report it." },
    1013: { title: "The console proxy is full", reconnect: true,
      text: "The proxy holds as many sessions as it can right now. Try again in a moment." },
    4000: { title: "Bad console URL", reconnect: false,
      text: "This console URL is malformed (no token, or an unknown mode). Get a new console URL." },
    4001: EXPIRED,
    4002: EXPIRED,
    4003: { title: "Opened from another site", reconnect: false,
      text: "The proxy refused the web page this console was opened from. Open the console from the " +
        "proxy's own page, or ask the operator to add this site to allowed_origins." },
    4004: { title: "The server is gone", reconnect: false,
      text: "This VM was deleted while its console was open." },
    4008: { title: "Closed for inactivity", reconnect: true,
      text: "Nothing was typed for the proxy's idle timeout, so it closed this session." },
    4009: { title: "This console is busy", reconnect: true, watch: true,
      text: "Another session is writing to this serial port, and a port has one writer at a time. " +
        "Ask them to leave (or the VM's owner or an admin to disconnect them), or watch read-only meanwhile." },
    4010: { title: "You were disconnected", reconnect: true,
      text: "The VM's owner or an admin disconnected this session." },
    4011: { title: "Too slow to keep up", reconnect: true,
      text: "This read-only view fell too far behind the VM's output (a slow network or a busy browser), " +
        "so the proxy dropped it; the writer was not affected. Reconnect: the recent output is replayed." },
    4501: { title: "The VM closed its serial port", reconnect: true,
      text: "The VM stopped or rebooted, or closed its serial port. Reconnect when it is up again." },
    4502: { title: "The VM cannot be reached", reconnect: true,
      text: "The proxy could not connect to the VM's serial port: the VM may be stopped, or a firewall " +
        "between the proxy and the hypervisor blocks it." },
  };

  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder();
  const api = {
    term: null, socket: null, state: "connecting", mode: "write", info: null, lastClose: null,
    connect: connect, copySelection: copySelection,
  };
  window.serialproxyConsole = api;

  function pageUrl() {
    return new URL(window.location.href);
  }

  function token() {
    return pageUrl().searchParams.get("token") || "";
  }

  function modeOf(url) {
    return url.searchParams.get("mode") === "read" ? "read" : "write";
  }

  function socketUrl() {
    const url = pageUrl();
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    return url.toString();
  }

  // The terminal

  function makeTerminal() {
    const term = new window.Terminal({
      convertEol: false,
      cursorBlink: true,
      scrollback: 5000,
      fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace',
      fontSize: 14,
      lineHeight: 1.2, // at 1.0 the DOM renderer clips underscores
      rightClickSelectsWord: true,
      theme: { background: "#101317", foreground: "#d8dee9", cursor: "#d8dee9", selectionBackground: "#3b4b61" },
    });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("terminal"));
    term.onData((text) => send(encoder.encode(text)));
    term.onBinary((text) => send(Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff)));
    term.onResize(showSize);
    term.attachCustomKeyEventHandler(clipboardKeys);
    term.element.addEventListener("mouseup", () => setTimeout(copyOnSelect, 0));
    refitOnResize(term, fit);
    return term;
  }

  function refitOnResize(term, fit) {
    let pending = false;
    const refit = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        try { fit.fit(); } catch (e) { /* not laid out yet */ }
      });
    };
    window.addEventListener("resize", refit);
    if (window.ResizeObserver) new ResizeObserver(refit).observe($("terminal"));
    fit.fit();
    showSize({ cols: term.cols, rows: term.rows });
  }

  function showSize(size) {
    const el = $("size");
    el.textContent = size.cols + "×" + size.rows;
    el.dataset.stty = "stty rows " + size.rows + " cols " + size.cols;
    el.title = "A serial line carries no window size: to fit programs to this window, run `" +
      el.dataset.stty + "` in the VM";
  }

  // Copy and paste. Selecting copies; Ctrl+Shift+C and Ctrl+Insert copy, and so
  // does Ctrl+C while there is a selection (without one it is an interrupt).
  // Ctrl+Shift+V and Shift+Insert are left to the browser, whose paste event
  // xterm.js turns into input (bracketed if the program asked for it).

  function clipboardKeys(ev) {
    if (ev.type !== "keydown" || ev.altKey || ev.metaKey) return true;
    const key = ev.key.toLowerCase();
    if ((ev.ctrlKey && ev.shiftKey && key === "v") || (ev.shiftKey && !ev.ctrlKey && key === "insert")) {
      return false; // the browser pastes
    }
    const copyKey = (ev.ctrlKey && ev.shiftKey && key === "c") || (ev.ctrlKey && !ev.shiftKey && key === "insert");
    if (copyKey || (ev.ctrlKey && !ev.shiftKey && key === "c" && api.term.hasSelection())) {
      ev.preventDefault();
      copySelection();
      if (!copyKey) api.term.clearSelection();
      return false;
    }
    return true;
  }

  function copyOnSelect() {
    if (api.term.hasSelection()) copySelection();
  }

  function copySelection() {
    const text = api.term.getSelection();
    if (!text) return Promise.resolve(false);
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(
        () => { toast("copied"); return true; },
        () => copyByCommand(text));
    }
    return Promise.resolve(copyByCommand(text));
  }

  // Plain http on another host has no Clipboard API: copy through a hidden textarea.
  function copyByCommand(text) {
    const area = document.createElement("textarea");
    area.className = "clip";
    area.value = text;
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    api.term.focus();
    toast(ok ? "copied" : "could not copy: use the browser's Copy menu");
    return ok;
  }

  let toastTimer = null;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.textContent = ""; }, 1500);
  }

  // The websocket

  function connect(mode) {
    if (mode) setMode(mode);
    const old = api.socket;
    api.socket = null;
    if (old) old.close(1000);
    hideNotice();
    api.term.reset(); // the proxy replays the recent output to every new session
    api.mode = modeOf(pageUrl());
    api.term.options.disableStdin = api.mode === "read";
    showMode();
    setState("connecting");
    let ws;
    try {
      ws = new WebSocket(socketUrl(), ["binary"]);
    } catch (e) {
      closed(null, { code: 1006, reason: String(e) });
      return;
    }
    ws.binaryType = "arraybuffer";
    api.socket = ws;
    ws.onopen = () => {
      if (api.socket !== ws) return;
      setState("connected");
      api.term.focus();
    };
    ws.onmessage = (ev) => {
      if (api.socket !== ws) return;
      if (typeof ev.data === "string") api.term.write(ev.data);
      else api.term.write(new Uint8Array(ev.data));
    };
    ws.onclose = (ev) => closed(ws, ev);
  }

  function send(bytes) {
    const ws = api.socket;
    if (!ws || ws.readyState !== WebSocket.OPEN || api.mode === "read") return;
    for (let i = 0; i < bytes.length; i += CHUNK) ws.send(bytes.subarray(i, i + CHUNK));
  }

  function setMode(mode) {
    const url = pageUrl();
    if (mode === "read") url.searchParams.set("mode", "read");
    else url.searchParams.delete("mode");
    window.history.replaceState(null, "", url.toString());
  }

  function closed(ws, ev) {
    if (ws !== null && api.socket !== ws) return; // replaced by a newer connection
    api.socket = null;
    api.lastClose = { code: ev.code, reason: ev.reason || "" };
    setState("closed");
    showNotice(ev.code, ev.reason || "");
  }

  // What the person sees when the session closes

  function describe(code) {
    return CLOSES[code] || { title: "Disconnected (code " + code + ")", text: "The console session closed.", reconnect: true };
  }

  function showNotice(code, reason) {
    const what = describe(code);
    $("notice-title").textContent = what.title;
    $("notice-text").textContent = what.text;
    const reasonEl = $("notice-reason");
    reasonEl.hidden = !reason;
    reasonEl.textContent = reason ? "The proxy said: " + reason : "";
    $("notice-token").hidden = true;
    $("watch").hidden = !(what.watch && api.mode === "write");
    $("reconnect").hidden = what.reconnect !== true;
    $("notice").hidden = false;
    $("notice").dataset.code = String(code);
    focusAction();
    if (what.reconnect) checkToken(what.reconnect === "if-token");
  }

  // Reconnecting needs a token that is still valid: ask console-info.
  function checkToken(offerIfValid) {
    const code = $("notice").dataset.code;
    loadInfo().then((valid) => {
      if ($("notice").hidden || $("notice").dataset.code !== code) return;
      if (valid === true && offerIfValid) {
        $("reconnect").hidden = false;
        focusAction();
      } else if (valid === false && !offerIfValid) {
        $("reconnect").hidden = true;
        $("watch").hidden = true;
        const note = $("notice-token");
        note.textContent = "This console link has expired since, so reconnecting needs a new console link.";
        note.hidden = false;
      }
    });
  }

  function focusAction() {
    const button = !$("watch").hidden ? $("watch") : !$("reconnect").hidden ? $("reconnect") : null;
    if (button) button.focus();
  }

  function hideNotice() {
    $("notice").hidden = true;
    delete $("notice").dataset.code;
  }

  // The title bar

  function setState(state) {
    api.state = state;
    const el = $("state");
    el.dataset.state = state;
    el.textContent = BAR_STATES[state];
    $("switch-mode").hidden = state === "closed"; // then the notice offers what can be done
  }

  function showMode() {
    const badge = $("mode");
    const read = api.mode === "read";
    badge.hidden = false;
    badge.textContent = read ? "read-only" : "read-write";
    badge.className = "badge " + (read ? "read-only" : "read-write");
    badge.title = read
      ? "You are watching: what you type is not sent. The writer and other viewers are not affected."
      : "You are the writer of this serial port: what you type goes to the VM.";
    const button = $("switch-mode");
    button.textContent = read ? "Switch to writing" : "Switch to read-only";
    button.title = read
      ? "Reconnect as the writer (refused while someone else is writing)"
      : "Reconnect as a read-only viewer, freeing this serial port for another writer";
  }

  // true: the token is valid (and the title bar is filled in); false: refused; null: unknown.
  function loadInfo() {
    const url = "v3/console-info?token=" + encodeURIComponent(token());
    return fetch(url, { cache: "no-store", credentials: "omit" }).then((response) => {
      if (response.status === 401 || response.status === 400 || response.status === 404) return false;
      if (!response.ok) return null;
      return response.json().then((body) => {
        api.info = body.console;
        showInfo(body.console);
        return true;
      });
    }).catch(() => null);
  }

  function showInfo(info) {
    $("server").textContent = info.server_name;
    $("server").title = "server " + info.server_id;
    $("port").textContent = "serial port " + info.port;
    const until = new Date(info.expires);
    if (!isNaN(until)) {
      $("port").title = "this console link opens new sessions until " + until.toLocaleString();
    }
    document.title = info.server_name + " · serial port " + info.port + " — serial console";
  }

  function start() {
    if (!window.Terminal || !window.FitAddon) {
      document.body.textContent = "The serial console could not load its terminal (static/vendor is missing).";
      return;
    }
    api.term = makeTerminal();
    $("reconnect").addEventListener("click", () => connect());
    $("watch").addEventListener("click", () => connect("read"));
    $("switch-mode").addEventListener("click", () => connect(api.mode === "read" ? "write" : "read"));
    loadInfo().then((valid) => {
      if (valid === false) $("server").textContent = "console link not valid";
    });
    connect();
  }

  start();
})();
